"""``moorage gc``: one round of the garbage collector, by hand.

It runs beside serving replicas safely (see ``registry/collector.py``) and
takes the collector's lease, so it never overlaps the scheduled collector."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from moorage.config import ConfigError, Settings
from moorage.datadir import restrict_umask
from moorage.registry.collector import LEASE, ROUND_LEASE, GarbageCollector, GcReport
from moorage.server import open_registry
from moorage.storage import StorageError


class CollectorBusy(ConfigError):
    """Another process holds the collector's lease."""


def collect_garbage(
    settings: Settings, grace_seconds: float, dry_run: bool, upload_max_age: int = 7 * 86400
) -> GcReport:
    restrict_umask()
    return asyncio.run(_collect(settings, grace_seconds, dry_run, upload_max_age))


async def _collect(
    settings: Settings, grace_seconds: float, dry_run: bool, upload_max_age: int
) -> GcReport:
    parts = open_registry(settings)
    store = parts.blobs.store
    try:
        try:
            await store.check()
        except StorageError as exc:
            raise ConfigError(f"storage: {exc}") from None
        collector = GarbageCollector(
            parts.metadata,
            store,
            parts.db,
            timedelta(seconds=grace_seconds),
            timedelta(seconds=upload_max_age),
        )
        meta = parts.metadata
        if not await parts.db.run(meta.take_lease, LEASE, collector.holder, ROUND_LEASE):
            raise CollectorBusy("another collector is running (the scheduled one, or another gc)")
        try:
            return await collector.collect(dry_run)
        finally:
            await parts.db.run(meta.release_lease, LEASE, collector.holder)
    finally:
        await store.close()
        parts.db.shutdown()
        parts.metadata.engine.dispose()
