"""The Vulnerability Advisor's index in the metadata database: its queue,
layer indexes, reports, exemptions and status changes.

The queue is written by :meth:`VaStore.enqueue_manifest`, a
``MetadataStore`` manifest hook: a queue row commits with the manifest it
names or not at all, so no pushed image goes unindexed after a crash. Any
replica takes work with :meth:`take`, which leases one item (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL; SQLite's write lock serialises takers anyway).
Every method is one transaction and blocks: call it from a worker thread."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from moorage.metadata.database import upsert, writer
from moorage.metadata.models import Manifest, Repository, Tag
from moorage.metadata.store import NewManifest, RepoRef
from moorage.metadata.va_models import (
    VaEvent,
    VaExemption,
    VaLayer,
    VaQueueItem,
    VaReport,
    VaReportPackage,
)
from moorage.oci.manifest import INDEX_TYPES
from moorage.va.assess import report_from_json, report_to_json, worst
from moorage.va.model import Exemption, Report, Status

INDEX = "index"
REASSESS = "reassess"
QUEUED, LEASED, DONE, FAILED = "queued", "leased", "done", "failed"

# Configs and layers of container images; anything else (a cosign signature,
# an SBOM, an attestation, a Helm chart) is an artifact, not indexed.
IMAGE_CONFIGS = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
LAYER_PREFIXES = (
    "application/vnd.oci.image.layer.",
    "application/vnd.docker.image.rootfs.",
)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def is_image(content: bytes | dict[str, Any]) -> bool:
    """A container image manifest (not an artifact manifest that happens to
    share the format): an image config, tar layers, no subject."""
    try:
        doc = json.loads(content) if isinstance(content, bytes) else content
    except ValueError:
        return False
    if not isinstance(doc, dict) or doc.get("subject") or doc.get("artifactType"):
        return False
    config = doc.get("config")
    layers = doc.get("layers")
    if not isinstance(config, dict) or config.get("mediaType") not in IMAGE_CONFIGS:
        return False
    if not isinstance(layers, list):
        return False
    return all(
        isinstance(layer, dict) and str(layer.get("mediaType", "")).startswith(LAYER_PREFIXES)
        for layer in layers
    )


def platform_of(descriptor: dict[str, Any]) -> str | None:
    """ "os/arch[/variant]" of an index entry; None for entries that are not
    a runnable platform (buildx attestations say unknown/unknown)."""
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return ""
    os_, arch = str(platform.get("os", "")), str(platform.get("architecture", ""))
    if os_ == "unknown" or arch == "unknown":
        return None
    annotations = descriptor.get("annotations") or {}
    if isinstance(annotations, dict) and "vnd.docker.reference.type" in annotations:
        return None
    variant = platform.get("variant")
    return "/".join(p for p in (os_, arch, str(variant) if variant else "") if p)


@dataclass(frozen=True)
class QueueItem:
    id: int
    kind: str
    region: str
    repository: str
    manifest_digest: str
    image_digest: str
    platform: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class StoredReport:
    """A report with what re-assessing it needs."""

    id: int
    region: str
    repository: str
    manifest_digest: str
    platform: str
    report: Report
    layers: tuple[str, ...]
    image_config: dict[str, Any]


@dataclass(frozen=True)
class VaEventRecord:
    region: str
    repository: str
    manifest_digest: str
    platform: str
    old_status: str
    new_status: str
    at: datetime


class VaStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    # -- the queue ---------------------------------------------------------

    @staticmethod
    def _enqueue(
        conn: Connection,
        key: str,
        kind: str,
        region: str,
        repository: str,
        manifest_digest: str,
        image_digest: str,
        platform: str,
        payload: dict[str, Any] | None = None,
    ) -> None:
        """Queue work once per ``key``; work of that key already done or
        failed is queued again (an image pushed anew, a scope to re-assess)."""
        now = _now()
        conn.execute(
            upsert(conn, VaQueueItem)
            .values(
                key=key,
                kind=kind,
                region=region,
                repository=repository,
                manifest_digest=manifest_digest,
                image_digest=image_digest,
                platform=platform,
                payload=json.dumps(payload) if payload else None,
                state=QUEUED,
                attempts=0,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_update(
                index_elements=["key"],
                set_={"state": QUEUED, "attempts": 0, "reason": None, "updated_at": now},
                where=VaQueueItem.state.in_((DONE, FAILED)),
            )
        )

    def enqueue_manifest(self, conn: Connection, repo: RepoRef, manifest: NewManifest) -> None:
        """The manifest hook: queue an image, or each platform of an index,
        inside the transaction storing the manifest. Artifacts are skipped.
        Reports of the same digest from before the repository last lost it
        go (they may carry another owner's exemptions, if the namespace was
        removed and made again)."""
        stale = select(VaReport.id).where(
            VaReport.region == repo.region,
            VaReport.repository == repo.name,
            VaReport.manifest_digest == manifest.digest,
        )
        conn.execute(delete(VaReportPackage).where(VaReportPackage.report_id.in_(stale)))
        conn.execute(
            delete(VaReport).where(
                VaReport.region == repo.region,
                VaReport.repository == repo.name,
                VaReport.manifest_digest == manifest.digest,
            )
        )
        if manifest.media_type in INDEX_TYPES:
            try:
                doc = json.loads(manifest.content)
            except ValueError:
                return
            for entry in doc.get("manifests") or ():
                if not isinstance(entry, dict) or entry.get("mediaType") in INDEX_TYPES:
                    continue
                platform = platform_of(entry)
                child = entry.get("digest")
                if platform is None or not isinstance(child, str):
                    continue
                self._enqueue(
                    conn,
                    _index_key(repo, manifest.digest, platform),
                    INDEX,
                    repo.region,
                    repo.name,
                    manifest.digest,
                    child,
                    platform,
                )
        elif manifest.subject_digest is None and is_image(manifest.content):
            self._enqueue(
                conn,
                _index_key(repo, manifest.digest, ""),
                INDEX,
                repo.region,
                repo.name,
                manifest.digest,
                manifest.digest,
                "",
            )

    def enqueue_reassess(self, key: str, scope: dict[str, Any]) -> None:
        """Queue a re-assessment: ``scope`` is ``{"snapshot": {"old", "new"}}``
        (reports holding packages the new snapshot touched) or ``{"region",
        "namespace"}`` (an exemption changed there)."""
        with self._writer.begin() as conn:
            self._enqueue(conn, f"{REASSESS}:{key}", REASSESS, "", "", "", "", "", scope)

    def take(self, holder: str, lease_seconds: float, max_attempts: int) -> QueueItem | None:
        """Lease the oldest item that is queued or whose lease expired (its
        worker died). An item past ``max_attempts`` ends ``failed`` instead."""
        while True:
            with self._writer.begin() as conn:
                now = _now()
                item_row = conn.execute(
                    select(VaQueueItem.__table__)
                    .where(
                        or_(
                            VaQueueItem.state == QUEUED,
                            and_(VaQueueItem.state == LEASED, VaQueueItem.lease_until < now),
                        )
                    )
                    .order_by(VaQueueItem.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if item_row is None:
                    return None
                if item_row.attempts >= max_attempts:
                    reason = item_row.reason or "its worker stopped before finishing"
                    conn.execute(
                        update(VaQueueItem)
                        .where(VaQueueItem.id == item_row.id)
                        .values(
                            state=FAILED,
                            holder=None,
                            lease_until=None,
                            updated_at=now,
                            reason=f"gave up after {item_row.attempts} attempts: {reason}"[:4000],
                        )
                    )
                    continue
                conn.execute(
                    update(VaQueueItem)
                    .where(VaQueueItem.id == item_row.id)
                    .values(
                        state=LEASED,
                        holder=holder,
                        attempts=item_row.attempts + 1,
                        lease_until=now + timedelta(seconds=lease_seconds),
                        updated_at=now,
                    )
                )
                return QueueItem(
                    int(item_row.id),
                    item_row.kind,
                    item_row.region,
                    item_row.repository,
                    item_row.manifest_digest,
                    item_row.image_digest,
                    item_row.platform,
                    json.loads(item_row.payload) if item_row.payload else {},
                    int(item_row.attempts) + 1,
                )

    def renew(self, item_id: int, holder: str, lease_seconds: float) -> bool:
        with self._writer.begin() as conn:
            done = conn.execute(
                update(VaQueueItem)
                .where(
                    VaQueueItem.id == item_id,
                    VaQueueItem.holder == holder,
                    VaQueueItem.state == LEASED,
                )
                .values(lease_until=_now() + timedelta(seconds=lease_seconds))
            )
            return bool(done.rowcount)

    def finish(self, item_id: int, holder: str, reason: str | None = None) -> None:
        self._settle(item_id, holder, DONE, reason)

    def retry_later(self, item_id: int, holder: str, reason: str) -> None:
        """Give the item back with why it failed; ``take`` gives up on it
        once its attempts run out."""
        self._settle(item_id, holder, QUEUED, reason)

    def _settle(self, item_id: int, holder: str, state: str, reason: str | None) -> None:
        with self._writer.begin() as conn:
            conn.execute(
                update(VaQueueItem)
                .where(VaQueueItem.id == item_id, VaQueueItem.holder == holder)
                .values(
                    state=state,
                    holder=None,
                    lease_until=None,
                    reason=reason[:4000] if reason else None,
                    updated_at=_now(),
                )
            )

    def queue(self) -> list[tuple[str, str, str, str, int, str | None]]:
        """(key, kind, state, platform, attempts, reason) of every item, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    VaQueueItem.key,
                    VaQueueItem.kind,
                    VaQueueItem.state,
                    VaQueueItem.platform,
                    VaQueueItem.attempts,
                    VaQueueItem.reason,
                ).order_by(VaQueueItem.id)
            ).all()
        return [(k, kind, s, p, int(a), r) for k, kind, s, p, a, r in rows]

    # -- layer indexes -----------------------------------------------------

    def layer(self, digest: str, version: int) -> dict[str, Any] | None:
        """The JSON of a layer index (``layers.layer_to_json``), or None."""
        with self.engine.connect() as conn:
            content = conn.scalar(
                select(VaLayer.content).where(
                    VaLayer.digest == digest, VaLayer.indexer_version == version
                )
            )
        return None if content is None else dict(json.loads(content))

    def put_layer(self, digest: str, version: int, state: str, doc: dict[str, Any]) -> None:
        """Store a layer index; of two replicas indexing one layer, the first keeps it."""
        with self._writer.begin() as conn:
            conn.execute(
                upsert(conn, VaLayer)
                .values(
                    digest=digest,
                    indexer_version=version,
                    state=state,
                    content=json.dumps(doc, separators=(",", ":")),
                    indexed_at=_now(),
                )
                .on_conflict_do_nothing(index_elements=["digest", "indexer_version"])
            )

    # -- reports -----------------------------------------------------------

    def put_report(
        self,
        region: str,
        repository: str,
        manifest_digest: str,
        report: Report,
        layers: Sequence[str],
        image_config: dict[str, Any],
        packages: Iterable[tuple[str, str]],
    ) -> str | None:
        """Store a report with its packages; the old status when it changed
        (an event is written then), else None."""
        now = _now()
        with self._writer.begin() as conn:
            old = conn.execute(
                select(VaReport.id, VaReport.status)
                .where(
                    VaReport.region == region,
                    VaReport.repository == repository,
                    VaReport.manifest_digest == manifest_digest,
                    VaReport.platform == report.platform,
                )
                .with_for_update()
            ).first()
            values = {
                "image_digest": report.digest,
                "status": report.status.value,
                "snapshot": report.snapshot,
                "layers": json.dumps(list(layers)),
                "image_config": json.dumps(image_config),
                "report": json.dumps(report_to_json(report), separators=(",", ":")),
                "updated_at": now,
            }
            if old is None:
                report_id = conn.scalar(
                    insert(VaReport)
                    .values(
                        region=region,
                        repository=repository,
                        namespace=repository.split("/", 1)[0],
                        manifest_digest=manifest_digest,
                        platform=report.platform,
                        **values,
                    )
                    .returning(VaReport.id)
                )
                previous = Status.PENDING.value
            else:
                report_id, previous = old
                conn.execute(update(VaReport).where(VaReport.id == report_id).values(**values))
            pairs = sorted(set(packages))
            conn.execute(delete(VaReportPackage).where(VaReportPackage.report_id == report_id))
            if pairs:
                conn.execute(
                    insert(VaReportPackage),
                    [{"report_id": report_id, "ecosystem": e, "name": n} for e, n in pairs],
                )
            if previous == report.status.value:
                return None
            conn.execute(
                insert(VaEvent).values(
                    region=region,
                    repository=repository,
                    manifest_digest=manifest_digest,
                    platform=report.platform,
                    old_status=previous,
                    new_status=report.status.value,
                    at=now,
                )
            )
            return str(previous)

    def report(self, region: str, repository: str, digest: str) -> list[Report]:
        """One report per platform of a pushed manifest; [] when unknown."""
        return [s.report for s in self._reports(region, repository, digest)]

    def stored_reports(self, region: str, repository: str, digest: str) -> list[StoredReport]:
        return self._reports(region, repository, digest)

    def _reports(
        self, region: str, repository: str | None, digest: str | None, ids: Sequence[int] = ()
    ) -> list[StoredReport]:
        stmt = select(VaReport.__table__).order_by(VaReport.platform)
        if ids:
            stmt = stmt.where(VaReport.id.in_(ids))
        else:
            stmt = stmt.where(VaReport.region == region)
            if repository is not None:
                stmt = stmt.where(VaReport.repository == repository)
            if digest is not None:
                stmt = stmt.where(VaReport.manifest_digest == digest)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
            return [
                StoredReport(
                    int(r.id),
                    r.region,
                    r.repository,
                    r.manifest_digest,
                    r.platform,
                    report_from_json(json.loads(r.report)),
                    tuple(json.loads(r.layers)),
                    dict(json.loads(r.image_config)),
                )
                for r in rows
            ]

    def statuses(
        self, region: str, digests: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """The overall status of each (repository, manifest digest) that has
        reports: the worst of its platforms."""
        if not digests:
            return {}
        repos = sorted({r for r, _ in digests})
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(VaReport.repository, VaReport.manifest_digest, VaReport.status).where(
                    VaReport.region == region, VaReport.repository.in_(repos)
                )
            ).all()
        found: dict[tuple[str, str], list[Status]] = {}
        for repository, digest, status in rows:
            found.setdefault((repository, digest), []).append(Status(status))
        wanted = set(digests)
        return {k: worst(v).value for k, v in found.items() if k in wanted}

    def reports_touching(self, pairs: Iterable[tuple[str, str]], snapshot: str) -> list[int]:
        """Ids of reports assessed against ``snapshot`` that hold any of the
        (ecosystem, name) pairs."""
        wanted = sorted(set(pairs))
        found: set[int] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 400):
                chunk = wanted[start : start + 400]
                condition = or_(
                    *(
                        and_(VaReportPackage.ecosystem == e, VaReportPackage.name == n)
                        for e, n in chunk
                    )
                )
                found.update(
                    int(i)
                    for i in conn.scalars(
                        select(VaReportPackage.report_id)
                        .join(VaReport, VaReport.id == VaReportPackage.report_id)
                        .where(condition, VaReport.snapshot == snapshot)
                    )
                )
        return sorted(found)

    def snapshots_other_than(self, snapshot: str) -> list[str]:
        """The snapshots reports were last assessed against, besides ``snapshot``."""
        with self.engine.connect() as conn:
            return list(
                conn.scalars(
                    select(VaReport.snapshot).where(VaReport.snapshot != snapshot).distinct()
                )
            )

    def move_snapshot(self, old: str, new: str) -> None:
        """Reports of ``old`` that the new snapshot did not touch hold for it too."""
        with self._writer.begin() as conn:
            conn.execute(update(VaReport).where(VaReport.snapshot == old).values(snapshot=new))

    def requeue_index(self, stored: StoredReport) -> None:
        """Index a reported image again (its layers' index is of an older indexer)."""
        with self._writer.begin() as conn:
            repo = RepoRef(stored.region, stored.repository)
            self._enqueue(
                conn,
                _index_key(repo, stored.manifest_digest, stored.platform),
                INDEX,
                stored.region,
                stored.repository,
                stored.manifest_digest,
                stored.report.digest,
                stored.platform,
            )

    def tags_of(self, region: str, repository: str, digest: str) -> list[str]:
        """The tags naming a manifest (exemptions may be scoped to a tag)."""
        with self.engine.connect() as conn:
            return sorted(
                conn.scalars(
                    select(Tag.name)
                    .join(Manifest, Manifest.id == Tag.manifest_id)
                    .join(Repository, Repository.id == Manifest.repository_id)
                    .where(
                        Repository.region == region,
                        Repository.name == repository,
                        Manifest.digest == digest,
                    )
                )
            )

    def queue_state(
        self, region: str, repository: str, manifest_digest: str
    ) -> list[tuple[str, str, str, str | None, datetime]]:
        """(platform, image digest, state, reason, queued at) of a manifest's
        indexing work."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    VaQueueItem.platform,
                    VaQueueItem.image_digest,
                    VaQueueItem.state,
                    VaQueueItem.reason,
                    VaQueueItem.created_at,
                )
                .where(
                    VaQueueItem.kind == INDEX,
                    VaQueueItem.region == region,
                    VaQueueItem.repository == repository,
                    VaQueueItem.manifest_digest == manifest_digest,
                )
                .order_by(VaQueueItem.platform)
            ).all()
        return [(p, d, st, r, _aware(at)) for p, d, st, r, at in rows]

    def reports_in(self, region: str, namespace: str | None) -> list[int]:
        """Ids of reports of a namespace (every namespace of the region: None)."""
        stmt = select(VaReport.id).where(VaReport.region == region)
        if namespace is not None:
            stmt = stmt.where(VaReport.namespace == namespace)
        with self.engine.connect() as conn:
            return [int(i) for i in conn.scalars(stmt)]

    def reports_by_id(self, ids: Sequence[int]) -> list[StoredReport]:
        return self._reports("", None, None, ids) if ids else []

    def snapshot_seen(self, snapshot: str) -> int:
        """How many reports were assessed against ``snapshot``."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).where(VaReport.snapshot == snapshot)) or 0)

    def events(self, region: str | None = None) -> list[VaEventRecord]:
        stmt = select(VaEvent.__table__).order_by(VaEvent.id)
        if region is not None:
            stmt = stmt.where(VaEvent.region == region)
        with self.engine.connect() as conn:
            return [
                VaEventRecord(
                    e.region,
                    e.repository,
                    e.manifest_digest,
                    e.platform,
                    e.old_status,
                    e.new_status,
                    _aware(e.at),
                )
                for e in conn.execute(stmt)
            ]

    # -- exemptions --------------------------------------------------------

    def add_exemption(self, exemption: Exemption) -> Exemption:
        record = Exemption(
            id=exemption.id or uuid.uuid4().hex,
            account=exemption.account,
            region=exemption.region,
            scope=exemption.scope,
            issue_type=exemption.issue_type,
            issue_id=exemption.issue_id,
            reason=exemption.reason,
            expires=exemption.expires,
            created_by=exemption.created_by,
        )
        with self._writer.begin() as conn:
            conn.execute(
                insert(VaExemption).values(
                    id=record.id,
                    account=record.account,
                    region=record.region,
                    scope=record.scope,
                    issue_type=record.issue_type,
                    issue_id=record.issue_id,
                    reason=record.reason,
                    expires=record.expires,
                    created_by=record.created_by,
                    created_at=_now(),
                )
            )
        return record

    def exemptions(self, account: str, region: str) -> list[Exemption]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(VaExemption.__table__)
                .where(VaExemption.account == account, VaExemption.region == region)
                .order_by(VaExemption.scope, VaExemption.issue_id, VaExemption.id)
            ).all()
        return [
            Exemption(
                id=r.id,
                account=r.account,
                region=r.region,
                scope=r.scope,
                issue_type=r.issue_type,
                issue_id=r.issue_id,
                reason=r.reason,
                expires=r.expires,
                created_by=r.created_by,
            )
            for r in rows
        ]

    def remove_exemption(self, account: str, region: str, exemption_id: str) -> Exemption | None:
        """The exemption removed, or None when the account has none by that id."""
        found = [e for e in self.exemptions(account, region) if e.id == exemption_id]
        if not found:
            return None
        with self._writer.begin() as conn:
            conn.execute(
                delete(VaExemption).where(
                    VaExemption.id == exemption_id,
                    VaExemption.account == account,
                    VaExemption.region == region,
                )
            )
        return found[0]


def _index_key(repo: RepoRef, digest: str, platform: str) -> str:
    return f"{INDEX}:{repo.region}:{repo.name}:{digest}:{platform}"
