"""Every read and write of registry metadata goes through :class:`MetadataStore`.

It speaks SQLAlchemy Core over the ORM tables, so the same code runs on the
embedded SQLite default and on PostgreSQL. Each public method is one
transaction."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from moorage.metadata.changes import ChangeFeed, LocalFeed, namespace_topic, repository_topic
from moorage.metadata.database import upsert, writer
from moorage.metadata.iam_models import Namespace
from moorage.metadata.models import (
    Blob,
    Lease,
    Manifest,
    ManifestReference,
    Repository,
    RepositoryBlob,
    Signer,
    SimpleSignature,
    Tag,
    Upload,
)
from moorage.trust import cosign, notation

BLOB_REFERENCE = "blob"
# Referrers that are signatures of their subject: cosign's, sigstore bundles, notation.
SIGNATURE_ARTIFACT_TYPES = (
    cosign.SIGNATURE_ARTIFACT,
    cosign.BUNDLE,
    cosign.INTOTO,
    notation.ARTIFACT_TYPE,
)


class SignatureExists(ValueError):
    """A signature or signer name already used where it must be unique."""


@dataclass(frozen=True)
class StoredSignature:
    name: str
    content: bytes
    created: datetime


@dataclass(frozen=True)
class SignerRecord:
    id: str
    region: str
    namespace: str
    name: str
    kind: str  # "cosign" or "gpg"
    public_key: str
    key_ids: tuple[str, ...]
    created_at: datetime


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@dataclass(frozen=True)
class UploadSession:
    repo: RepoRef
    owner: str | None  # who started it
    offset: int  # bytes received so far
    version: int  # moved on by every save of its progress


class UploadMoved(LookupError):
    """The upload session a commit was to end moved on (another chunk saved)
    or ended since the commit read it: the commit lost, and changed nothing."""


class NamespaceChanged(LookupError):
    """The namespace a write was authorised for no longer belongs to that account
    (removed, perhaps claimed by another) by the time the write commits."""


@dataclass(frozen=True)
class TagWas:
    """A precondition on a tag write: the tag still names ``digest`` (None: no
    manifest at all) when the write commits, as it did when it was checked."""

    digest: str | None


class TagMoved(LookupError):
    """A tag write's precondition failed: the tag changed since it was checked."""


class BlobsUnlinked(LookupError):
    """A manifest names blobs its repository does not link (any more: garbage
    collection may have dropped a link after the service's first check)."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(", ".join(missing))
        self.missing = missing


# A blob row marked ``deleting`` longer than this belongs to a collector that
# died between marking and forgetting it: the next round finishes the job.
DELETING_ABANDONED = timedelta(minutes=5)


@dataclass(frozen=True)
class LinkRef:
    """One repository's link to a blob, as garbage collection finds it."""

    repository_id: int
    region: str
    repository: str
    digest: str


MANIFEST_REFERENCE = "manifest"


def _now() -> datetime:
    return datetime.now(UTC)


def _clock(conn: Connection) -> Any:
    """The time garbage collection compares, as a value to write: the
    database's own clock on PostgreSQL (replicas' clocks may disagree; the
    grace period must not), this machine's on SQLite (one machine anyway)."""
    return func.now() if conn.dialect.name == "postgresql" else _now()


def _clock_now(conn: Connection) -> datetime:
    """The same clock, read."""
    value = conn.scalar(select(func.now())) if conn.dialect.name == "postgresql" else None
    return _aware(value) if isinstance(value, datetime) else _now()


class RepoRef(NamedTuple):
    """A repository: its region and its name within that region."""

    region: str
    name: str

    def __str__(self) -> str:
        return self.name


def _p(repo: RepoRef, **extra: object) -> dict[str, object]:
    return {"region": repo.region, "repo": repo.name, **extra}


@dataclass(frozen=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes
    subject_digest: str | None


@dataclass(frozen=True)
class NewManifest:
    digest: str
    media_type: str
    artifact_type: str | None
    subject_digest: str | None
    annotations: dict[str, str]
    content: bytes
    blob_digests: Sequence[str]
    child_digests: Sequence[str]


@dataclass(frozen=True)
class ImageRow:
    repository: str
    namespace: str
    tag: str
    digest: str
    media_type: str
    created: datetime
    size: int


@dataclass(frozen=True)
class Referrer:
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None


# Called with the open transaction, the repository and a manifest new to it.
ManifestHook = Callable[[Connection, RepoRef, NewManifest], None]


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'metadata.db'}"


_repo_id = (
    select(Repository.id)
    .where(Repository.region == bindparam("region"), Repository.name == bindparam("repo"))
    .scalar_subquery()
)

_MANIFEST_BY_TAG = (
    select(Manifest.digest, Manifest.media_type, Manifest.content, Manifest.subject_digest)
    .join(Tag, Tag.manifest_id == Manifest.id)
    .where(Tag.repository_id == _repo_id, Tag.name == bindparam("ref"))
)
_MANIFEST_BY_DIGEST = select(
    Manifest.digest, Manifest.media_type, Manifest.content, Manifest.subject_digest
).where(Manifest.repository_id == _repo_id, Manifest.digest == bindparam("ref"))
_LINKED_BLOB_SIZE = (
    select(Blob.size)
    .join(RepositoryBlob, RepositoryBlob.digest == Blob.digest)
    .where(RepositoryBlob.repository_id == _repo_id, Blob.digest == bindparam("digest"))
)


class MetadataStore:
    """Every method is one transaction, and blocks: call it from a worker
    thread, never on the event loop. A write that takes ``account`` commits
    only if the repository's namespace still belongs to that account, checked
    inside the same transaction (on PostgreSQL under a share lock on the
    namespace row, which a removal must wait for; on SQLite under the write
    lock every write transaction takes first); None skips the check (open
    access, where namespaces are not required).

    Rows that two writers (threads, processes, replicas) may create at once
    are created with ``INSERT ... ON CONFLICT``, never by a look-up followed by
    an insert. A write that changes what caches hold (a tag, a manifest, a
    namespace) announces it on ``changes`` inside its transaction.

    ``manifest_hooks`` run inside the transaction that stores a manifest new
    to its repository, so what they write (the Advisor's queue) commits with
    the manifest or not at all."""

    def __init__(self, engine: Engine, changes: ChangeFeed | None = None) -> None:
        self.engine = engine
        self.changes: ChangeFeed = changes or LocalFeed()
        self._writer = writer(engine)
        self.manifest_hooks: list[ManifestHook] = []

    @contextmanager
    def _write(self) -> Iterator[tuple[Connection, list[str]]]:
        """A write transaction, and the list of change topics it announces."""
        topics: list[str] = []
        with self._writer.begin() as conn:
            yield conn, topics
            if topics:
                self.changes.announce(conn, topics)
        if topics:
            self.changes.delivered(topics)

    @staticmethod
    def _check_account(conn: Connection, repo: RepoRef, account: str | None) -> None:
        if account is None:
            return
        owner = conn.scalar(
            select(Namespace.account_id)
            .where(Namespace.region == repo.region, Namespace.name == repo.name.split("/", 1)[0])
            .with_for_update(read=True)
        )
        if owner != account:
            raise NamespaceChanged(repo.name.split("/", 1)[0])

    def namespace_owner(self, region: str, namespace: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.scalar(
                select(Namespace.account_id).where(
                    Namespace.region == region, Namespace.name == namespace
                )
            )

    # -- repositories ------------------------------------------------------

    @staticmethod
    def _ensure_repository(conn: Connection, repo: RepoRef) -> int:
        repo_id = MetadataStore._repository_id(conn, repo)
        if repo_id is not None:
            return repo_id
        namespace = repo.name.split("/", 1)[0]
        conn.execute(
            upsert(conn, Repository)
            .values(region=repo.region, name=repo.name, namespace=namespace, created_at=_now())
            .on_conflict_do_nothing(index_elements=["region", "name"])
        )
        repo_id = MetadataStore._repository_id(conn, repo)
        if repo_id is None:  # pragma: no cover - inserted or found just above
            raise RuntimeError(f"repository {repo.name} vanished while being created")
        return repo_id

    @staticmethod
    def _repository_id(conn: Connection, repo: RepoRef) -> int | None:
        value = conn.scalar(
            select(Repository.id).where(
                Repository.region == repo.region, Repository.name == repo.name
            )
        )
        return None if value is None else int(value)

    def list_repositories(
        self,
        region: str,
        limit: int | None,
        last: str | None,
        namespaces: list[str] | None = None,
    ) -> list[str]:
        """Repositories of a region holding at least one manifest, in lexical order,
        optionally only those in the given namespaces."""
        stmt = (
            select(Repository.name)
            .where(
                Repository.region == region,
                select(Manifest.id).where(Manifest.repository_id == Repository.id).exists(),
            )
            .order_by(Repository.name)
        )
        if namespaces is not None:
            stmt = stmt.where(Repository.namespace.in_(namespaces))
        if last:
            stmt = stmt.where(Repository.name > last)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return list(conn.scalars(stmt))

    # -- blobs -------------------------------------------------------------

    def linked_blob_size(self, repo: RepoRef, digest: str) -> int | None:
        with self.engine.connect() as conn:
            value = conn.scalar(_LINKED_BLOB_SIZE, _p(repo, digest=digest))
        return None if value is None else int(value)

    def pin_blob(self, digest: str, size: int | None = None) -> str | None:
        """Claim a blob's row before publishing its bytes: created ``pending``
        when new, touched now either way, so no collector deletes the bytes for
        the grace period. Returns the row's epoch for :meth:`record_blob`, or
        None while a collector is deleting the blob (pin again shortly: the row
        goes once the bytes are gone; a mark its collector abandoned is
        finished by the next round, never taken over by a writer, which could
        not know whether the delete is still on its way)."""
        with self._write() as (conn, _):
            now = _clock(conn)
            row = self._locked_blob(conn, digest)
            if row is None:
                epoch = uuid.uuid4().hex
                created = conn.execute(
                    upsert(conn, Blob)
                    .values(
                        digest=digest,
                        size=size or 0,
                        created_at=now,
                        state="pending",
                        touched_at=now,
                        epoch=epoch,
                    )
                    .on_conflict_do_nothing(index_elements=["digest"])
                    .returning(Blob.digest)
                ).first()
                if created is not None:
                    return epoch
                # Another writer created it a moment ago (and committed: the
                # insert waited for it): go on with its row.
                row = self._locked_blob(conn, digest)
                if row is None:  # pragma: no cover - created, then collected at once
                    return None
            if row[0] == "deleting":
                return None
            epoch = row[1] or uuid.uuid4().hex
            conn.execute(
                update(Blob).where(Blob.digest == digest).values(touched_at=now, epoch=epoch)
            )
            return str(epoch)

    @staticmethod
    def _locked_blob(conn: Connection, digest: str) -> Any:
        return conn.execute(
            select(Blob.state, Blob.epoch, Blob.touched_at)
            .where(Blob.digest == digest)
            .with_for_update()
        ).first()

    def record_blob(
        self,
        repo: RepoRef,
        digest: str,
        size: int,
        *,
        epoch: str,
        account: str | None = None,
        ending_upload: str | None = None,
        ending_version: int | None = None,
    ) -> bool:
        """Link a blob whose bytes were published under the pin ``epoch``
        into ``repo``, idempotently, and end the upload session
        ``ending_upload`` in the same transaction. False, changing nothing,
        when the pin was lost: a collector deleted (or is deleting) the blob
        since, so the bytes published may be gone. With ``ending_version``,
        the session ends only if it is still at that version; else
        UploadMoved, changing nothing: a chunk saved meanwhile won."""
        with self._write() as (conn, _):
            self._check_account(conn, repo, account)
            row = conn.execute(
                select(Blob.state, Blob.epoch).where(Blob.digest == digest).with_for_update()
            ).first()
            if row is None or row[0] == "deleting" or row[1] != epoch:
                return False
            conn.execute(
                update(Blob)
                .where(Blob.digest == digest)
                .values(state="live", size=size, touched_at=_clock(conn))
            )
            self._link(conn, self._ensure_repository(conn, repo), digest)
            if ending_upload is not None:
                ending = delete(Upload).where(Upload.id == ending_upload)
                if ending_version is not None:
                    ending = ending.where(Upload.version == ending_version)
                if conn.execute(ending).rowcount == 0 and ending_version is not None:
                    raise UploadMoved(ending_upload)
            return True

    @staticmethod
    def _link(conn: Connection, repo_id: int, digest: str) -> None:
        """Link, or renew the link's time: a blob pushed again gets a new grace period."""
        now = _clock(conn)
        conn.execute(
            upsert(conn, RepositoryBlob)
            .values(repository_id=repo_id, digest=digest, created_at=now)
            .on_conflict_do_update(
                index_elements=["repository_id", "digest"], set_={"created_at": now}
            )
        )

    def mount_blob(
        self, repo: RepoRef, digest: str, source_repo: RepoRef, account: str | None = None
    ) -> int | None:
        """Link a blob that ``source_repo`` holds into ``repo``; its size, or None."""
        with self._write() as (conn, _):
            self._check_account(conn, repo, account)
            size = conn.scalar(_LINKED_BLOB_SIZE, _p(source_repo, digest=digest))
            if size is None:
                return None
            # Under the blob row's share lock: a collector marking it deleting
            # waits for this link, or has marked it and the mount is refused.
            state = conn.scalar(
                select(Blob.state).where(Blob.digest == digest).with_for_update(read=True)
            )
            if state != "live":
                return None
            self._link(conn, self._ensure_repository(conn, repo), digest)
            return int(size)

    def unlink_blob(self, repo: RepoRef, digest: str, account: str | None = None) -> bool:
        with self._write() as (conn, topics):
            topics.append(repository_topic(repo.region, repo.name))
            self._check_account(conn, repo, account)
            repo_id = self._repository_id(conn, repo)
            if repo_id is None:
                return False
            result = conn.execute(
                delete(RepositoryBlob).where(
                    RepositoryBlob.repository_id == repo_id, RepositoryBlob.digest == digest
                )
            )
            return bool(result.rowcount)

    def _missing(
        self, repo: RepoRef, digests: Iterable[str], column: Any, repo_column: Any
    ) -> list[str]:
        """Which of ``digests`` have no row in ``column``'s table for ``repo``."""
        wanted = set(digests)
        if not wanted:
            return []
        stmt = select(column).where(repo_column == _repo_id, column.in_(wanted))
        with self.engine.connect() as conn:
            found = set(conn.scalars(stmt, _p(repo)))
        return sorted(wanted - found)

    def missing_blobs(self, repo: RepoRef, digests: Iterable[str]) -> list[str]:
        return self._missing(repo, digests, RepositoryBlob.digest, RepositoryBlob.repository_id)

    def blob_sizes(self, digests: Iterable[str]) -> dict[str, int]:
        wanted = list(set(digests))
        with self.engine.connect() as conn:
            rows = conn.execute(select(Blob.digest, Blob.size).where(Blob.digest.in_(wanted)))
            return {d: int(s) for d, s in rows}

    # -- uploads -----------------------------------------------------------

    def create_upload(
        self, upload_id: str, repo: RepoRef, owner: str | None, account: str | None = None
    ) -> None:
        with self._write() as (conn, _):
            self._check_account(conn, repo, account)
            conn.execute(
                insert(Upload).values(
                    id=upload_id,
                    region=repo.region,
                    repository=repo.name,
                    owner=owner,
                    created_at=_now(),
                )
            )

    def upload_session(self, upload_id: str) -> UploadSession | None:
        """The repository an upload belongs to, who started it, its offset and version."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    Upload.region, Upload.repository, Upload.owner, Upload.offset, Upload.version
                ).where(Upload.id == upload_id)
            ).first()
        if row is None:
            return None
        return UploadSession(RepoRef(row[0], row[1]), row[2], row[3], row[4])

    def upload_progress(self, upload_id: str) -> tuple[int, int, str | None] | None:
        """An upload's offset, version and storage state."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(Upload.offset, Upload.version, Upload.state).where(Upload.id == upload_id)
            ).first()
        return None if row is None else (int(row[0]), int(row[1]), row[2])

    def save_upload_progress(
        self, upload_id: str, version: int, offset: int, state: str | None
    ) -> bool:
        """One conditional UPDATE: only the writer that read ``version`` last
        gets to move it on, whichever process it runs in."""
        with self._write() as (conn, _):
            result = conn.execute(
                update(Upload)
                .where(Upload.id == upload_id, Upload.version == version)
                .values(offset=offset, state=state, version=version + 1)
            )
            return bool(result.rowcount)

    def reserve_upload_parts(self, upload_id: str, count: int) -> int | None:
        """``count`` part numbers nobody else gets: the increment and the read
        of its result are one transaction, under the row's write lock."""
        with self._write() as (conn, _):
            result = conn.execute(
                update(Upload)
                .where(Upload.id == upload_id)
                .values(next_part=Upload.next_part + count)
            )
            if not result.rowcount:
                return None
            end = conn.scalar(select(Upload.next_part).where(Upload.id == upload_id))
            return None if end is None else int(end) - count

    def delete_upload(self, upload_id: str) -> None:
        with self._write() as (conn, _):
            conn.execute(delete(Upload).where(Upload.id == upload_id))

    def list_uploads(self) -> dict[str, datetime]:
        with self.engine.connect() as conn:
            return {i: c for i, c in conn.execute(select(Upload.id, Upload.created_at))}

    # -- manifests and tags ------------------------------------------------

    def get_manifest(
        self, repo: RepoRef, reference: str, *, by_digest: bool
    ) -> StoredManifest | None:
        stmt = _MANIFEST_BY_DIGEST if by_digest else _MANIFEST_BY_TAG
        with self.engine.connect() as conn:
            row = conn.execute(stmt, _p(repo, ref=reference)).first()
        if row is None:
            return None
        return StoredManifest(row[0], row[1], bytes(row[2]), row[3])

    def missing_manifests(self, repo: RepoRef, digests: Iterable[str]) -> list[str]:
        return self._missing(repo, digests, Manifest.digest, Manifest.repository_id)

    @staticmethod
    def _manifest_id(conn: Connection, repo_id: int, digest: str) -> int | None:
        value = conn.scalar(
            select(Manifest.id).where(Manifest.repository_id == repo_id, Manifest.digest == digest)
        )
        return None if value is None else int(value)

    @staticmethod
    def _insert_manifest(conn: Connection, repo_id: int, manifest: NewManifest) -> int | None:
        """The new manifest's id, or None when the repository holds it already
        (perhaps stored a moment ago by another writer)."""
        manifest_id = conn.scalar(
            upsert(conn, Manifest)
            .values(
                repository_id=repo_id,
                digest=manifest.digest,
                media_type=manifest.media_type,
                artifact_type=manifest.artifact_type,
                subject_digest=manifest.subject_digest,
                annotations=json.dumps(manifest.annotations) if manifest.annotations else None,
                size=len(manifest.content),
                content=manifest.content,
                created_at=_now(),
            )
            .on_conflict_do_nothing(index_elements=["repository_id", "digest"])
            .returning(Manifest.id)
        )
        if manifest_id is None:
            return None
        refs = [
            {"manifest_id": manifest_id, "digest": d, "kind": BLOB_REFERENCE}
            for d in dict.fromkeys(manifest.blob_digests)
        ] + [
            {"manifest_id": manifest_id, "digest": d, "kind": MANIFEST_REFERENCE}
            for d in dict.fromkeys(manifest.child_digests)
        ]
        if refs:
            conn.execute(insert(ManifestReference), refs)
        return int(manifest_id)

    def put_manifest(
        self,
        repo: RepoRef,
        manifest: NewManifest,
        tag: str | None,
        account: str | None = None,
        tag_was: TagWas | None = None,
    ) -> None:
        """Store a manifest (once per repository) and point ``tag`` at it,
        atomically; with ``tag_was``, only if the tag still names what it did
        (else TagMoved, and nothing changes)."""
        with self._write() as (conn, topics):
            self._check_account(conn, repo, account)
            repo_id = self._ensure_repository(conn, repo)
            if tag is not None and tag_was is not None:
                now = conn.scalar(
                    select(Manifest.digest)
                    .join(Tag, Tag.manifest_id == Manifest.id)
                    .where(Tag.repository_id == repo_id, Tag.name == tag)
                    .with_for_update()
                )
                if now != tag_was.digest:
                    raise TagMoved(tag)
            manifest_id = self._manifest_id(conn, repo_id, manifest.digest)
            if manifest_id is None:
                self._require_links(conn, repo_id, manifest.blob_digests)
                manifest_id = self._insert_manifest(conn, repo_id, manifest)
                if manifest_id is not None:
                    for hook in self.manifest_hooks:
                        hook(conn, repo, manifest)
            if manifest_id is None:  # another writer stored it between the two statements
                manifest_id = self._manifest_id(conn, repo_id, manifest.digest)
            if manifest_id is None:  # pragma: no cover - stored, then deleted meanwhile
                raise RuntimeError(f"manifest {manifest.digest} vanished while being stored")
            if tag is not None and tag_was is not None and tag_was.digest is None:
                # No row to lock yet: of two writers creating the tag, one inserts it.
                created = conn.scalar(
                    upsert(conn, Tag)
                    .values(
                        repository_id=repo_id, name=tag, manifest_id=manifest_id, updated_at=_now()
                    )
                    .on_conflict_do_nothing(index_elements=["repository_id", "name"])
                    .returning(Tag.name)
                )  # (rowcount says -1 here on PostgreSQL: RETURNING tells)
                if created is None:
                    raise TagMoved(tag)
            elif tag is not None:
                self._set_tag(conn, repo_id, tag, manifest_id)
            topics.append(repository_topic(repo.region, repo.name))

    @staticmethod
    def _require_links(conn: Connection, repo_id: int, digests: Sequence[str]) -> None:
        """The links a new manifest needs, share-locked until it commits: a
        collector dropping one waits, then finds the manifest's reference."""
        wanted = set(digests)
        if not wanted:
            return
        linked = set(
            conn.scalars(
                select(RepositoryBlob.digest)
                .where(RepositoryBlob.repository_id == repo_id, RepositoryBlob.digest.in_(wanted))
                .with_for_update(read=True)
            )
        )
        if wanted - linked:
            raise BlobsUnlinked(sorted(wanted - linked))

    @staticmethod
    def _set_tag(conn: Connection, repo_id: int, tag: str, manifest_id: int) -> None:
        now = _now()
        conn.execute(
            upsert(conn, Tag)
            .values(repository_id=repo_id, name=tag, manifest_id=manifest_id, updated_at=now)
            .on_conflict_do_update(
                index_elements=["repository_id", "name"],
                set_={"manifest_id": manifest_id, "updated_at": now},
            )
        )

    def delete_manifest(self, repo: RepoRef, digest: str, account: str | None = None) -> bool:
        """Delete a manifest and every tag naming it."""
        with self._write() as (conn, topics):
            topics.append(repository_topic(repo.region, repo.name))
            self._check_account(conn, repo, account)
            repo_id = self._repository_id(conn, repo)
            if repo_id is None:
                return False
            manifest_id = self._manifest_id(conn, repo_id, digest)
            if manifest_id is None:
                return False
            # Its signatures go with it: signature referrers naming it as their
            # subject, the manifests of cosign's sha256-<hex>.sig/.att/.sbom tags, and
            # simple signatures stored through the extension.
            prefix = digest.replace(":", "-", 1) + "."
            attached = select(Tag.manifest_id).where(
                Tag.repository_id == repo_id,
                Tag.name.in_([prefix + suffix for suffix in ("sig", "att", "sbom")]),
            )
            # Only referrers that are signatures: other artifacts that refer to it
            # outlive it, as the distribution spec's conformance suite expects.
            referrers = select(Manifest.id).where(
                Manifest.repository_id == repo_id,
                Manifest.subject_digest == digest,
                Manifest.artifact_type.in_(SIGNATURE_ARTIFACT_TYPES),
            )
            doomed = [
                manifest_id,
                *conn.scalars(attached),
                *conn.scalars(referrers),
            ]
            # The links these manifests kept in use start their grace period
            # now, not when they were made: a client that saw a blob here a
            # moment ago (and skips uploading it) still finds it linked.
            conn.execute(
                update(RepositoryBlob)
                .where(
                    RepositoryBlob.repository_id == repo_id,
                    RepositoryBlob.digest.in_(
                        select(ManifestReference.digest).where(
                            ManifestReference.manifest_id.in_(doomed)
                        )
                    ),
                )
                .values(created_at=_clock(conn))
            )
            conn.execute(delete(Tag).where(Tag.manifest_id.in_(doomed)))
            conn.execute(delete(ManifestReference).where(ManifestReference.manifest_id.in_(doomed)))
            conn.execute(delete(Manifest).where(Manifest.id.in_(doomed)))
            conn.execute(
                delete(SimpleSignature).where(
                    SimpleSignature.repository_id == repo_id,
                    SimpleSignature.manifest_digest == digest,
                )
            )
            return True

    # -- signatures ----------------------------------------------------------

    def add_simple_signature(
        self, repo: RepoRef, digest: str, name: str, content: bytes, account: str | None = None
    ) -> bool:
        """Store a simple signature of a manifest the repository holds; False when it
        holds no such manifest. A name used before raises SignatureExists."""
        with self._write() as (conn, _):
            self._check_account(conn, repo, account)
            repo_id = self._repository_id(conn, repo)
            if repo_id is None or self._manifest_id(conn, repo_id, digest) is None:
                return False
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(SimpleSignature).values(
                            repository_id=repo_id,
                            manifest_digest=digest,
                            name=name,
                            content=content,
                            created_at=_now(),
                        )
                    )
            except IntegrityError:
                raise SignatureExists(name) from None
            return True

    def simple_signatures(self, repo: RepoRef, digest: str) -> list[StoredSignature] | None:
        """A manifest's simple signatures, oldest first; None when the repository
        holds no such manifest."""
        with self.engine.connect() as conn:
            repo_id = self._repository_id(conn, repo)
            if repo_id is None or self._manifest_id(conn, repo_id, digest) is None:
                return None
            rows = conn.execute(
                select(SimpleSignature.name, SimpleSignature.content, SimpleSignature.created_at)
                .where(
                    SimpleSignature.repository_id == repo_id,
                    SimpleSignature.manifest_digest == digest,
                )
                .order_by(SimpleSignature.id)
            ).all()
        return [StoredSignature(n, bytes(c), _aware(at)) for n, c, at in rows]

    def delete_simple_signature(
        self, repo: RepoRef, digest: str, name: str, account: str | None = None
    ) -> bool:
        with self._write() as (conn, _):
            self._check_account(conn, repo, account)
            repo_id = self._repository_id(conn, repo)
            if repo_id is None:
                return False
            result = conn.execute(
                delete(SimpleSignature).where(
                    SimpleSignature.repository_id == repo_id,
                    SimpleSignature.manifest_digest == digest,
                    SimpleSignature.name == name,
                )
            )
            return bool(result.rowcount)

    def add_signer(self, record: SignerRecord, account: str) -> None:
        """Add a signer to a namespace the account owns; a name used before raises
        SignatureExists."""
        with self._write() as (conn, _):
            self._check_account(conn, RepoRef(record.region, record.namespace), account)
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(Signer).values(
                            id=record.id,
                            region=record.region,
                            namespace=record.namespace,
                            name=record.name,
                            kind=record.kind,
                            public_key=record.public_key,
                            key_ids=",".join(record.key_ids),
                            created_at=record.created_at,
                        )
                    )
            except IntegrityError:
                raise SignatureExists(record.name) from None

    def signers(self, region: str, namespace: str) -> list[SignerRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Signer)
                .where(Signer.region == region, Signer.namespace == namespace)
                .order_by(Signer.name)
            ).all()
        return [
            SignerRecord(
                r.id,
                r.region,
                r.namespace,
                r.name,
                r.kind,
                r.public_key,
                tuple(k for k in r.key_ids.split(",") if k),
                _aware(r.created_at),
            )
            for r in rows
        ]

    def delete_signer(self, region: str, namespace: str, name: str, account: str) -> bool:
        with self._write() as (conn, _):
            self._check_account(conn, RepoRef(region, namespace), account)
            result = conn.execute(
                delete(Signer).where(
                    Signer.region == region, Signer.namespace == namespace, Signer.name == name
                )
            )
            return bool(result.rowcount)

    def delete_tag(self, repo: RepoRef, tag: str, account: str | None = None) -> bool:
        with self._write() as (conn, topics):
            topics.append(repository_topic(repo.region, repo.name))
            self._check_account(conn, repo, account)
            result = conn.execute(
                delete(Tag).where(Tag.repository_id == _repo_id, Tag.name == tag), _p(repo)
            )
            return bool(result.rowcount)

    def list_tags(self, repo: RepoRef, limit: int | None, last: str | None) -> list[str] | None:
        """Tags in lexical order; None when the repository does not exist."""
        with self.engine.connect() as conn:
            repo_id = self._repository_id(conn, repo)
            if repo_id is None:
                return None
            stmt = select(Tag.name).where(Tag.repository_id == repo_id).order_by(Tag.name)
            if last:
                stmt = stmt.where(Tag.name > last)
            if limit is not None:
                stmt = stmt.limit(limit)
            return list(conn.scalars(stmt))

    def referrers(self, repo: RepoRef, subject: str, artifact_type: str | None) -> list[Referrer]:
        stmt = (
            select(
                Manifest.digest,
                Manifest.media_type,
                Manifest.size,
                Manifest.artifact_type,
                Manifest.annotations,
            )
            .where(and_(Manifest.repository_id == _repo_id, Manifest.subject_digest == subject))
            .order_by(Manifest.created_at, Manifest.id)
        )
        if artifact_type is not None:
            stmt = stmt.where(Manifest.artifact_type == artifact_type)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt, _p(repo)).all()
        return [
            Referrer(d, m, int(s), a, json.loads(ann) if ann else None) for d, m, s, a, ann in rows
        ]

    def images(self, region: str, namespaces: list[str]) -> list[ImageRow]:
        """Tagged images of the given namespaces of a region, for ``cr images``."""
        if not namespaces:
            return []
        size = (
            select(func.coalesce(func.sum(Blob.size), 0))
            .join(ManifestReference, ManifestReference.digest == Blob.digest)
            .where(ManifestReference.manifest_id == Manifest.id)
            .scalar_subquery()
        )
        stmt = (
            select(
                Repository.name,
                Repository.namespace,
                Tag.name,
                Manifest.digest,
                Manifest.media_type,
                Manifest.created_at,
                size,
            )
            .join(Tag, Tag.repository_id == Repository.id)
            .join(Manifest, Manifest.id == Tag.manifest_id)
            .where(Repository.region == region, Repository.namespace.in_(namespaces))
            .order_by(Repository.name, Tag.name)
        )
        with self.engine.connect() as conn:
            # PostgreSQL sums BIGINT as NUMERIC: back to an int, as SQLite gives it.
            return [
                ImageRow(repo, namespace, tag, digest, media_type, created, int(size))
                for repo, namespace, tag, digest, media_type, created, size in conn.execute(stmt)
            ]

    def remove_namespace(self, account_id: str, region: str, namespace: str) -> list[str] | None:
        """Remove a namespace an account owns and everything it held, in one
        transaction: the namespace itself, its repositories, manifests, tags,
        blob links and upload sessions. Returns the ids of the upload sessions it
        ended (their staged bytes are the blob store's to discard), or None when
        the account owns no such namespace. The blobs go at the next gc."""
        with self._write() as (conn, topics):
            topics.append(namespace_topic(region, namespace))
            removed = conn.execute(
                delete(Namespace).where(
                    Namespace.account_id == account_id,
                    Namespace.region == region,
                    Namespace.name == namespace,
                )
            )
            if not removed.rowcount:
                return None
            in_namespace = or_(
                Upload.repository.startswith(namespace + "/", autoescape=True),
                Upload.repository == namespace,
            )
            uploads = list(
                conn.scalars(select(Upload.id).where(Upload.region == region, in_namespace))
            )
            conn.execute(delete(Upload).where(Upload.id.in_(uploads)))
            ids = select(Repository.id).where(
                Repository.region == region, Repository.namespace == namespace
            )
            manifest_ids = select(Manifest.id).where(Manifest.repository_id.in_(ids))
            conn.execute(delete(Tag).where(Tag.repository_id.in_(ids)))
            conn.execute(
                delete(ManifestReference).where(ManifestReference.manifest_id.in_(manifest_ids))
            )
            conn.execute(delete(Manifest).where(Manifest.repository_id.in_(ids)))
            conn.execute(delete(RepositoryBlob).where(RepositoryBlob.repository_id.in_(ids)))
            conn.execute(delete(SimpleSignature).where(SimpleSignature.repository_id.in_(ids)))
            conn.execute(
                delete(Repository).where(
                    Repository.region == region, Repository.namespace == namespace
                )
            )
            conn.execute(
                delete(Signer).where(Signer.region == region, Signer.namespace == namespace)
            )
            return uploads

    # -- garbage collection ----------------------------------------------------
    #
    # The collector and the writers agree through row locks (on SQLite, the
    # write lock every write transaction takes): each method below is one
    # transaction that re-checks, under the lock, what its caller found.

    def gc_stale_links(self, older_than: datetime) -> list[LinkRef]:
        """Links older than ``older_than`` that no manifest of their repository
        references. A set difference, not a correlated probe per link: a base
        layer in every image would make that cost its reference count per link."""
        stale = (
            select(RepositoryBlob.repository_id, RepositoryBlob.digest)
            .where(RepositoryBlob.created_at < older_than)
            .except_(
                select(Manifest.repository_id, ManifestReference.digest).join(
                    Manifest, Manifest.id == ManifestReference.manifest_id
                )
            )
            .subquery()
        )
        stmt = select(
            stale.c.repository_id, Repository.region, Repository.name, stale.c.digest
        ).join(Repository, Repository.id == stale.c.repository_id)
        with self.engine.connect() as conn:
            return [LinkRef(int(i), r, n, d) for i, r, n, d in conn.execute(stmt)]

    def gc_drop_link(self, link: LinkRef, older_than: datetime) -> bool:
        """Drop a stale link unless it was renewed or a manifest came to reference it."""
        with self._write() as (conn, topics):
            linked_at = conn.scalar(
                select(RepositoryBlob.created_at)
                .where(
                    RepositoryBlob.repository_id == link.repository_id,
                    RepositoryBlob.digest == link.digest,
                )
                .with_for_update()
            )
            if linked_at is None or _aware(linked_at) >= older_than:
                return False
            referenced = conn.scalar(
                select(func.count())
                .select_from(ManifestReference)
                .join(Manifest, Manifest.id == ManifestReference.manifest_id)
                .where(
                    Manifest.repository_id == link.repository_id,
                    ManifestReference.digest == link.digest,
                )
            )
            if referenced:
                return False
            conn.execute(
                delete(RepositoryBlob).where(
                    RepositoryBlob.repository_id == link.repository_id,
                    RepositoryBlob.digest == link.digest,
                )
            )
            topics.append(repository_topic(link.region, link.repository))
            return True

    def clock(self) -> datetime:
        """Now, by the clock garbage collection compares (see ``_clock``)."""
        with self.engine.connect() as conn:
            return _clock_now(conn)

    def gc_unreferenced_blobs(self, older_than: datetime) -> list[tuple[str, int]]:
        """Blobs nothing links or references and nobody touched since
        ``older_than``, with their sizes; and rows a dead collector left
        marked ``deleting`` (for longer than ``DELETING_ABANDONED``)."""
        linked = select(RepositoryBlob.digest).where(RepositoryBlob.digest == Blob.digest)
        referenced = select(ManifestReference.digest).where(ManifestReference.digest == Blob.digest)
        untouched = or_(Blob.touched_at.is_(None), Blob.touched_at < older_than)
        with self.engine.connect() as conn:
            now = _clock_now(conn)
        abandoned = and_(Blob.state == "deleting", Blob.touched_at < now - DELETING_ABANDONED)
        stmt = select(Blob.digest, Blob.size).where(
            ~linked.exists(),
            ~referenced.exists(),
            or_(and_(Blob.state != "deleting", untouched), abandoned),
        )
        with self.engine.connect() as conn:
            return [(d, int(s)) for d, s in conn.execute(stmt)]

    def gc_mark_deleting(self, digest: str, older_than: datetime) -> str | None:
        """Mark a blob ``deleting`` if it still qualifies; the mark's epoch, or
        None when a writer pinned, linked or referenced it meanwhile. From
        the mark until :meth:`gc_forget`, writers of the blob wait."""
        with self._write() as (conn, _):
            now = _clock_now(conn)
            row = conn.execute(
                select(Blob.state, Blob.touched_at).where(Blob.digest == digest).with_for_update()
            ).first()
            if row is None:
                return None
            state, touched = row[0], (None if row[1] is None else _aware(row[1]))
            if state == "deleting":
                if touched is not None and touched > now - DELETING_ABANDONED:
                    return None
            elif touched is not None and touched >= older_than:
                return None
            in_use = conn.scalar(
                select(func.count())
                .select_from(RepositoryBlob)
                .where(RepositoryBlob.digest == digest)
            ) or conn.scalar(
                select(func.count())
                .select_from(ManifestReference)
                .where(ManifestReference.digest == digest)
            )
            if in_use:
                return None
            epoch = uuid.uuid4().hex
            conn.execute(
                update(Blob)
                .where(Blob.digest == digest)
                .values(state="deleting", touched_at=now, epoch=epoch)
            )
            return epoch

    def gc_claim_orphan(self, digest: str, size: int) -> str | None:
        """Claim bytes that have no row (published just before a crash) by
        creating one marked ``deleting``; None when a row exists (a writer
        pinned it before publishing)."""
        epoch = uuid.uuid4().hex
        with self._write() as (conn, _):
            now = _clock(conn)
            created = conn.execute(
                upsert(conn, Blob)
                .values(
                    digest=digest,
                    size=size,
                    created_at=now,
                    state="deleting",
                    touched_at=now,
                    epoch=epoch,
                )
                .on_conflict_do_nothing(index_elements=["digest"])
                .returning(Blob.digest)
            ).first()
            return epoch if created is not None else None

    def gc_forget(self, digest: str, epoch: str) -> None:
        """Drop the row of a blob whose bytes this mark deleted."""
        with self._write() as (conn, _):
            conn.execute(
                delete(Blob).where(
                    Blob.digest == digest, Blob.state == "deleting", Blob.epoch == epoch
                )
            )

    def gc_unmark(self, digest: str, epoch: str) -> None:
        """Give a marked blob back (its bytes were not deleted after all)."""
        with self._write() as (conn, _):
            conn.execute(
                update(Blob)
                .where(Blob.digest == digest, Blob.state == "deleting", Blob.epoch == epoch)
                .values(state="live", touched_at=_clock(conn))
            )

    def blob_digests(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.scalars(select(Blob.digest)))

    def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Hold the lease ``name`` for ``seconds`` from now, if it is free,
        expired or already this holder's; whether the holder has it now."""
        with self._write() as (conn, _):
            now = _clock_now(conn)
            until = now + timedelta(seconds=seconds)
            conn.execute(
                upsert(conn, Lease)
                .values(name=name, holder=holder, expires_at=until)
                .on_conflict_do_update(
                    index_elements=["name"],
                    set_={"holder": holder, "expires_at": until},
                    where=or_(Lease.expires_at < now, Lease.holder == holder),
                )
            )
            return conn.scalar(select(Lease.holder).where(Lease.name == name)) == holder

    def release_lease(self, name: str, holder: str) -> None:
        with self._write() as (conn, _):
            conn.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))
