"""Garbage collection: deletes the bytes of blobs that no repository links.

Blob and manifest deletes only unlink; the bytes go here. Run it while the
registry is stopped (as with Distribution's garbage-collect): a push of the
same content racing with a delete could otherwise lose the bytes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from moorage.config import ConfigError, Settings
from moorage.datadir import restrict_umask
from moorage.metadata import MetadataStore
from moorage.oci.digest import parse_digest
from moorage.server import open_registry
from moorage.storage import BlobStore, StorageError


@dataclass
class GcReport:
    deleted: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    stale_uploads: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{verb} {len(self.deleted)} unlinked blobs, {len(self.orphan_files)} "
            f"unrecorded files and {len(self.stale_uploads)} stale uploads, "
            f"{self.freed_bytes} bytes"
        )


def collect_garbage(
    settings: Settings, grace_seconds: int, dry_run: bool, upload_max_age: int = 7 * 86400
) -> GcReport:
    restrict_umask()
    return asyncio.run(_collect(settings, grace_seconds, dry_run, upload_max_age))


async def _collect(
    settings: Settings, grace_seconds: int, dry_run: bool, upload_max_age: int
) -> GcReport:
    parts = open_registry(settings)
    store = parts.blobs.store
    try:
        await store.check()
    except StorageError as exc:
        await store.close()
        raise ConfigError(f"storage: {exc}") from None
    try:
        return await _sweep_all(parts.metadata, store, grace_seconds, dry_run, upload_max_age)
    finally:
        await store.close()


async def _sweep_all(
    metadata: MetadataStore,
    store: BlobStore,
    grace_seconds: int,
    dry_run: bool,
    upload_max_age: int,
) -> GcReport:
    cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds)
    report = GcReport(dry_run=dry_run)
    for value in metadata.unreferenced_blobs(cutoff):
        digest = parse_digest(value)
        size = await store.stat(digest) or 0
        if dry_run or metadata.forget_blob(value):
            if not dry_run:
                await store.delete(digest)
            report.deleted.append(value)
            report.freed_bytes += size
    recorded = metadata.all_blobs()
    async for digest, size in store.walk():
        # Bytes published just before a crash, whose row was never written.
        if str(digest) not in recorded:
            report.orphan_files.append(str(digest))
            report.freed_bytes += size
            if not dry_run:
                await store.delete(digest)
    # Upload sessions abandoned by their clients (Distribution purges after a week too).
    upload_cutoff = datetime.now(UTC) - timedelta(seconds=upload_max_age)
    sessions = metadata.list_uploads()
    for upload_id, created in sessions.items():
        if created.replace(tzinfo=created.tzinfo or UTC) < upload_cutoff:
            report.stale_uploads.append(upload_id)
            if not dry_run:
                metadata.delete_upload(upload_id)
                await store.discard_upload(upload_id)
    # Staged bytes of no session (the registry is stopped: none is in flight).
    live = set(sessions) - set(report.stale_uploads)
    swept = await store.sweep(live, datetime.now(UTC), dry_run)
    report.freed_bytes += swept.freed_bytes
    return report
