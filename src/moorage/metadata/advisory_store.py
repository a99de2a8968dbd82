"""Advisory snapshots: feeds imported whole, in one transaction, each import
a new snapshot of the feeds before it with the imported sources replaced.

Every method blocks (call it from a worker thread). The two newest
snapshots are kept, so whoever re-assesses images can compare the one they
last used with the current one (``touched``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine, delete, insert, select, tuple_

from moorage.metadata.advisory_models import (
    AdvisoryFeedRow,
    AdvisoryPackageRow,
    AdvisoryRecordRow,
    AdvisorySnapshotFeedRow,
    AdvisorySnapshotRow,
)
from moorage.metadata.database import advisory_xact_lock, writer
from moorage.va.ecosystems import index_key
from moorage.va.model import Advisory
from moorage.va.osv import from_osv

KEEP_SNAPSHOTS = 2
BATCH = 500


class FeedSpool(Protocol):
    """One feed read and checked (``va.feeds.Spool``)."""

    name: str
    kind: str
    records: int
    newest_modified: str
    imported_at: datetime
    digest: str

    def lines(self) -> Iterator[dict[str, Any]]:
        """``{"path", "id", "modified", "digest", "keys", "record"}`` per record."""


@dataclass(frozen=True)
class SourceInfo:
    name: str
    kind: str  # "osv", "alpine-secdb", ...
    records: int
    newest_modified: str  # the newest record's modified time, RFC 3339
    imported_at: datetime
    digest: str


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    seq: int
    created_at: datetime
    sources: tuple[SourceInfo, ...]


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class StoreLookup:
    """Advisories of one snapshot by (ecosystem, name), read on demand and
    kept for the lookup's life (one assessment, or one re-assessment round)."""

    def __init__(self, engine: Engine, snapshot_id: str) -> None:
        self._engine = engine
        self.snapshot_id = snapshot_id
        self._cache: dict[tuple[str, str], tuple[Advisory, ...]] = {}

    def preload(self, keys: Iterable[tuple[str, str]]) -> None:
        """Read the advisories of many packages in a few queries."""
        wanted = sorted({index_key(e, n) for e, n in keys} - set(self._cache))
        for start in range(0, len(wanted), BATCH):
            chunk = wanted[start : start + BATCH]
            found: dict[tuple[str, str], list[Advisory]] = {k: [] for k in chunk}
            for eco, name, advisory in self._query(chunk):
                found[(eco, name)].append(advisory)
            for key, advisories in found.items():
                self._cache[key] = tuple(advisories)

    def _query(self, keys: Sequence[tuple[str, str]]) -> Iterator[tuple[str, str, Advisory]]:
        p, r, f, sf = (
            AdvisoryPackageRow,
            AdvisoryRecordRow,
            AdvisoryFeedRow,
            AdvisorySnapshotFeedRow,
        )
        query = (
            select(p.ecosystem, p.name, f.name, r.path, r.body)
            .join(sf, sf.feed_id == p.feed_id)
            .join(r, r.id == p.record_id)
            .join(f, f.id == p.feed_id)
            .where(sf.snapshot_id == self.snapshot_id)
            .where(tuple_(p.ecosystem, p.name).in_(keys))
            .order_by(f.name, r.path, r.advisory_id)
        )
        with self._engine.connect() as conn:
            for eco, name, feed, path, body in conn.execute(query):
                yield eco, name, from_osv(json.loads(body), f"{feed}:{path}")

    def for_package(self, ecosystem: str, name: str) -> Sequence[Advisory]:
        key = index_key(ecosystem, name)
        if key not in self._cache:
            self.preload([key])
        return self._cache[key]


class AdvisoryStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    # --- reading -----------------------------------------------------------

    def _snapshot(self, conn: Any, row: Any) -> SnapshotInfo:
        f, sf = AdvisoryFeedRow, AdvisorySnapshotFeedRow
        feeds = conn.execute(
            select(f.name, f.kind, f.records, f.newest_modified, f.imported_at, f.digest)
            .join(sf, sf.feed_id == f.id)
            .where(sf.snapshot_id == row.id)
            .order_by(f.name)
        ).all()
        sources = tuple(SourceInfo(n, k, c, m, _aware(at), d) for n, k, c, m, at, d in feeds)
        return SnapshotInfo(row.id, row.seq, _aware(row.created_at), sources)

    def current(self) -> SnapshotInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(AdvisorySnapshotRow).order_by(AdvisorySnapshotRow.seq.desc()).limit(1)
            ).first()
            return None if row is None else self._snapshot(conn, row)

    def snapshot(self, snapshot_id: str) -> SnapshotInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(AdvisorySnapshotRow).where(AdvisorySnapshotRow.id == snapshot_id)
            ).first()
            return None if row is None else self._snapshot(conn, row)

    def sources(self) -> tuple[SourceInfo, ...]:
        """The sources of the current snapshot, by name."""
        snapshot = self.current()
        return () if snapshot is None else snapshot.sources

    def lookup(self, snapshot_id: str) -> StoreLookup:
        return StoreLookup(self.engine, snapshot_id)

    def records(self, snapshot_id: str, source: str) -> Iterator[tuple[str, str]]:
        """(path, canonical OSV JSON) of one source of a snapshot, in import
        order, streamed in batches."""
        f, r, sf = AdvisoryFeedRow, AdvisoryRecordRow, AdvisorySnapshotFeedRow
        with self.engine.connect() as conn:
            feed_id = conn.scalar(
                select(f.id)
                .join(sf, sf.feed_id == f.id)
                .where(sf.snapshot_id == snapshot_id, f.name == source)
            )
        last = -1
        while feed_id is not None:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(r.id, r.path, r.body)
                    .where(r.feed_id == feed_id, r.id > last)
                    .order_by(r.id)
                    .limit(BATCH)
                ).all()
            if not rows:
                return
            for row_id, path, body in rows:
                yield path, body
                last = row_id

    def touched(self, old_id: str | None, new_id: str) -> set[tuple[str, str]]:
        """(ecosystem, name) pairs whose advisories differ between the two
        snapshots: only feeds that are in one and not the other are compared,
        record by record (by content digest)."""
        p, r, sf = AdvisoryPackageRow, AdvisoryRecordRow, AdvisorySnapshotFeedRow
        with self.engine.connect() as conn:

            def feeds(snapshot_id: str | None) -> set[int]:
                if snapshot_id is None:
                    return set()
                return set(conn.scalars(select(sf.feed_id).where(sf.snapshot_id == snapshot_id)))

            old, new = feeds(old_id), feeds(new_id)
            gone, came = sorted(old - new), sorted(new - old)

            def rows(feed_ids: list[int]) -> Any:
                return (
                    select(p.ecosystem, p.name, r.digest)
                    .join(r, r.id == p.record_id)
                    .where(p.feed_id.in_(feed_ids))
                )

            if not gone and not came:
                return set()
            before = {tuple(row) for row in conn.execute(rows(gone))}
            after = {tuple(row) for row in conn.execute(rows(came))}
        return {(e, n) for e, n, _ in before ^ after}

    # --- writing -----------------------------------------------------------

    def import_snapshot(self, spools: Sequence[FeedSpool]) -> SnapshotInfo:
        """A new snapshot: the current one's feeds, with those of the same
        names as ``spools`` replaced by them. One transaction; older
        snapshots beyond the newest ``KEEP_SNAPSHOTS`` and feeds no snapshot
        holds any more are deleted in it."""
        now = datetime.now(UTC)
        snapshot_id = str(uuid.uuid4())
        with self._writer.begin() as conn:
            advisory_xact_lock(conn, "advisory-snapshots")
            previous = conn.execute(
                select(AdvisorySnapshotRow).order_by(AdvisorySnapshotRow.seq.desc()).limit(1)
            ).first()
            seq = 1 if previous is None else previous.seq + 1
            kept: list[int] = []
            if previous is not None:
                names = {s.name for s in spools}
                f, sf = AdvisoryFeedRow, AdvisorySnapshotFeedRow
                kept = [
                    feed_id
                    for feed_id, name in conn.execute(
                        select(f.id, f.name)
                        .join(sf, sf.feed_id == f.id)
                        .where(sf.snapshot_id == previous.id)
                    )
                    if name not in names
                ]
            conn.execute(
                insert(AdvisorySnapshotRow).values(id=snapshot_id, seq=seq, created_at=now)
            )
            added = [self._insert_feed(conn, spool) for spool in spools]
            conn.execute(
                insert(AdvisorySnapshotFeedRow),
                [{"snapshot_id": snapshot_id, "feed_id": i} for i in kept + added],
            )
            self._prune(conn, seq)
            row = conn.execute(
                select(AdvisorySnapshotRow).where(AdvisorySnapshotRow.id == snapshot_id)
            ).one()
            return self._snapshot(conn, row)

    def _insert_feed(self, conn: Any, spool: FeedSpool) -> int:
        feed_id: int = conn.execute(
            insert(AdvisoryFeedRow)
            .values(
                name=spool.name,
                kind=spool.kind,
                records=spool.records,
                newest_modified=spool.newest_modified,
                imported_at=spool.imported_at,
                digest=spool.digest,
            )
            .returning(AdvisoryFeedRow.id)
        ).scalar_one()
        batch: list[dict[str, Any]] = []
        for line in spool.lines():
            batch.append(line)
            if len(batch) >= BATCH:
                self._insert_records(conn, feed_id, batch)
                batch = []
        if batch:
            self._insert_records(conn, feed_id, batch)
        return feed_id

    def _insert_records(self, conn: Any, feed_id: int, lines: list[dict[str, Any]]) -> None:
        r = AdvisoryRecordRow
        ids = (
            conn.execute(
                insert(r).returning(r.id, sort_by_parameter_order=True),
                [
                    {
                        "feed_id": feed_id,
                        "path": line["path"],
                        "advisory_id": line["id"],
                        "modified": line["modified"],
                        "digest": line["digest"],
                        "body": line["record"],
                    }
                    for line in lines
                ],
            )
            .scalars()
            .all()
        )
        packages = [
            {"record_id": record_id, "ecosystem": eco, "name": name, "feed_id": feed_id}
            for record_id, line in zip(ids, lines, strict=True)
            for eco, name in line["keys"]
        ]
        if packages:
            conn.execute(insert(AdvisoryPackageRow), packages)

    def _prune(self, conn: Any, newest_seq: int) -> None:
        s, sf, f = AdvisorySnapshotRow, AdvisorySnapshotFeedRow, AdvisoryFeedRow
        conn.execute(delete(s).where(s.seq <= newest_seq - KEEP_SNAPSHOTS))
        # Cascades would do the rest on PostgreSQL; SQLite only with the pragma,
        # so the dependent rows go explicitly.
        conn.execute(delete(sf).where(~sf.snapshot_id.in_(select(s.id))))
        orphans = select(f.id).where(~f.id.in_(select(sf.feed_id)))
        conn.execute(delete(AdvisoryPackageRow).where(AdvisoryPackageRow.feed_id.in_(orphans)))
        conn.execute(delete(AdvisoryRecordRow).where(AdvisoryRecordRow.feed_id.in_(orphans)))
        conn.execute(delete(f).where(f.id.in_(orphans)))
