"""Garbage collection while the registry serves, on any database and store.

A round has four passes, each deciding per item in a transaction of its own
that re-checks, under the item's row lock, what the scan found:

1. **Links** that no manifest of their repository references and that are
   older than the grace period are dropped (the layers of deleted images; a
   blob pushed but never named by a manifest). A manifest push that needs a
   link share-locks it (``MetadataStore.put_manifest``): the collector waits
   and then sees the reference.
2. **Blobs** that nothing links or references (no manifest of any
   repository: image layers and configs, index children are manifests
   themselves, signatures and other referrers are manifests with layers) and
   that nobody touched for the grace period are marked ``deleting``, their
   bytes deleted, then their rows. A writer pins a blob's row before it
   publishes bytes (``MetadataStore.pin_blob``), waits while the row is
   marked, and links only under the epoch it pinned: an upload, mount or
   manifest push racing with the collector either keeps the blob or is
   refused, and nothing a client was told exists loses its bytes.
3. **Bytes with no row** (published just before a crash) are claimed by a
   row marked ``deleting`` first, so a writer pinning them meanwhile waits.
4. **Upload sessions** untouched for ``upload_max_age`` end; staged bytes of
   no session go once older than the staging grace.

This is GitLab's online GC turned inside out: instead of review queues filled
by triggers, the scan is the queue and the row lock is the review.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from moorage.metadata import DatabaseThreads, MetadataStore
from moorage.oci.digest import Digest, parse_digest
from moorage.storage import BlobStore

log = logging.getLogger("moorage.gc")
T = TypeVar("T")

# One round at a time per installation (``moorage gc`` takes it too), and
# one scheduled round per interval however many replicas run the schedule.
LEASE = "garbage-collector"
SCHEDULE = "garbage-collector-schedule"
# How long a round's lease lasts if its holder dies without releasing it.
ROUND_LEASE = 3600.0
# Staged bytes younger than this may be a monolithic upload in flight.
STAGING_GRACE = timedelta(minutes=10)


@dataclass
class GcReport:
    dropped_links: int = 0
    deleted: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    stale_uploads: list[str] = field(default_factory=list)
    kept_in_use: int = 0  # candidates a writer pinned, linked or referenced meanwhile
    freed_bytes: int = 0
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        links = "would drop" if self.dry_run else "dropped"
        return (
            f"{links} {self.dropped_links} stale links; {verb} {len(self.deleted)} unlinked "
            f"blobs, {len(self.orphan_files)} unrecorded files and {len(self.stale_uploads)} "
            f"stale uploads, {self.freed_bytes} bytes"
        )


class GarbageCollector:
    def __init__(
        self,
        metadata: MetadataStore,
        store: BlobStore,
        db: DatabaseThreads,
        grace: timedelta,
        upload_max_age: timedelta = timedelta(days=7),
    ) -> None:
        self.metadata = metadata
        self.store = store
        self.db = db
        self.grace = grace
        self.upload_max_age = upload_max_age
        self.holder = uuid.uuid4().hex

    async def collect(self, dry_run: bool = False) -> GcReport:
        """One round of the four passes; safe while other processes serve."""
        report = GcReport(dry_run=dry_run)
        run = self.db.run
        meta = self.metadata
        cutoff = await run(meta.clock) - self.grace

        for link in await run(meta.gc_stale_links, cutoff):
            if dry_run or await run(meta.gc_drop_link, link, cutoff):
                report.dropped_links += 1

        for digest, size in await run(meta.gc_unreferenced_blobs, cutoff):
            if dry_run:
                report.deleted.append(digest)
                report.freed_bytes += size
                continue
            deleted = await self._shielded(self._mark_and_delete(digest, cutoff))
            if deleted is None:
                report.kept_in_use += 1
            elif deleted:
                report.deleted.append(digest)
                report.freed_bytes += size

        recorded = await run(meta.blob_digests)
        async for found, size in self.store.walk():
            if str(found) in recorded:
                continue
            if not dry_run and not await self._shielded(self._claim_and_delete(found, size)):
                continue
            report.orphan_files.append(str(found))
            report.freed_bytes += size

        now = datetime.now(UTC)
        sessions = await run(meta.list_uploads)
        for upload_id, created in sessions.items():
            if created.replace(tzinfo=created.tzinfo or UTC) < now - self.upload_max_age:
                report.stale_uploads.append(upload_id)
                if not dry_run:
                    await run(meta.delete_upload, upload_id)
                    await self.store.discard_upload(upload_id)
        live = set(sessions) - set(report.stale_uploads)
        swept = await self.store.sweep(live, now - max(self.grace, STAGING_GRACE), dry_run)
        report.freed_bytes += swept.freed_bytes
        return report

    @staticmethod
    async def _shielded(work: Coroutine[Any, Any, T]) -> T:
        """Run a mark-delete-forget to its end even if the round is cancelled
        (a server stopping): a mark left behind would make writers of that
        blob wait until a later round finishes it."""
        task = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            raise

    async def _mark_and_delete(self, digest: str, cutoff: datetime) -> bool | None:
        """None when the blob was in use after all; else whether it is gone."""
        epoch = await self.db.run(self.metadata.gc_mark_deleting, digest, cutoff)
        if epoch is None:
            return None
        return await self._delete(parse_digest(digest), epoch)

    async def _claim_and_delete(self, digest: Digest, size: int) -> bool:
        epoch = await self.db.run(self.metadata.gc_claim_orphan, str(digest), size)
        return epoch is not None and await self._delete(digest, epoch)

    async def _delete(self, digest: Digest, epoch: str) -> bool:
        """Delete the bytes of a blob this collector marked, then its row; on
        any failure give the mark back (best effort: a mark that stays is
        finished by a later round)."""
        try:
            await self.store.delete(digest)
        except Exception as exc:  # StorageError, or an OSError the store let through
            log.error("gc: could not delete %s: %s", digest, exc)
            try:
                await self.db.run(self.metadata.gc_unmark, str(digest), epoch)
            except Exception:
                log.exception("gc: could not give back the mark of %s", digest)
            return False
        await self.db.run(self.metadata.gc_forget, str(digest), epoch)
        return True

    async def run_scheduled(self, interval: float) -> None:
        """Every ``interval`` seconds, a round on whichever replica takes the
        schedule's lease first (held for the interval, so N replicas still make
        one round per interval) and then the round's (held while it runs)."""
        meta = self.metadata
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.db.run(meta.take_lease, SCHEDULE, self.holder, interval * 0.9):
                    continue
                if not await self.db.run(meta.take_lease, LEASE, self.holder, ROUND_LEASE):
                    continue  # a `moorage gc` by hand is running
                try:
                    report = await self.collect()
                finally:
                    await self.db.run(meta.release_lease, LEASE, self.holder)
                log.info("gc: %s", report.summary())
            except asyncio.CancelledError:
                raise
            except Exception:  # one failed round must not end the schedule
                log.exception("gc: the round failed; the next one runs in %.0f s", interval)
