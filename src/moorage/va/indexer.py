"""The Advisor's worker: every replica runs one, taking items from the
durable queue (``VaStore.take``, a lease per item) until the server stops.

An image is indexed layer by layer: a layer whose index (by digest and
``INDEXER_VERSION``) is stored already is not read again, so a base layer
shared by many images is read once. A layer is read as a stream from the
blob store and indexed in a worker thread: the thread pulls the store's
chunks from the event loop one at a time (bounded memory, the loop never
blocks). Then overlay, match against the current advisory snapshot, assess,
store the report; a status change is an event.

A new advisory snapshot queues re-assessments of only the reports holding a
package the snapshot touched (``AdvisoryStore.touched``), from the stored
layer indexes, never reading a layer again; a changed exemption queues its
namespace's reports the same way."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from moorage.metadata import DatabaseThreads, MetadataStore, RepoRef
from moorage.metadata.advisory_store import AdvisoryStore, StoreLookup
from moorage.metadata.va_store import INDEX, QueueItem, StoredReport, VaStore, is_image
from moorage.oci.digest import parse_digest
from moorage.regions import RegionMap, Target
from moorage.registry.artifacts import SbomService
from moorage.registry.errors import RegistryError
from moorage.storage import BlobStore
from moorage.va.assess import assess, rejudge
from moorage.va.ecosystems import ecosystem, index_key, package_name, supported_os
from moorage.va.layers import index_layer, layer_from_json, layer_to_json
from moorage.va.match import match
from moorage.va.model import INDEXER_VERSION, Exemption, ImageContents, LayerIndex, Report
from moorage.va.overlay import overlay
from moorage.va.scanners import ScannerReport, Scanners, ScanTarget, kept, merge

log = logging.getLogger("moorage.va")

CONFIG_LIMIT = 4 * 1024 * 1024
# How long a worker holds an item without renewing; renewed at a third.
LEASE_SECONDS = 60.0
# Attempts before an item ends failed (a layer that always breaks the worker).
MAX_ATTEMPTS = 5


@dataclass
class IndexerStats:
    layers_read: int = 0  # layers read from the blob store (not found in the index)
    layers_reused: int = 0
    images: int = 0
    reassessed: int = 0
    failures: int = 0


class _LoopStream(io.RawIOBase):
    """A blocking file over an async generator of chunks, for a worker
    thread: each read asks the event loop for the next chunk."""

    def __init__(self, chunks: AsyncGenerator[bytes, None], loop: asyncio.AbstractEventLoop):
        self._chunks = chunks
        self._loop = loop
        self._buffer = b""
        self._done = False

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            if self._done:
                return 0
            chunk = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
            if chunk is None:
                self._done = True
                return 0
            self._buffer = chunk
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def package_pairs(contents: ImageContents) -> set[tuple[str, str]]:
    """The (ecosystem, name) pairs advisories name the image's packages by,
    as the advisory store keys them (what ``AdvisoryStore.touched`` gives)."""
    pairs: set[tuple[str, str]] = set()
    for package in contents.packages:
        eco = ecosystem(package, contents.os)
        if eco is not None:
            pairs.add(index_key(eco, package_name(package)))
    return pairs


class Indexer:
    def __init__(
        self,
        metadata: MetadataStore,
        va: VaStore,
        store: BlobStore,
        db: DatabaseThreads,
        advisories: AdvisoryStore | None,
        *,
        lease_seconds: float = LEASE_SECONDS,
        max_attempts: int = MAX_ATTEMPTS,
        idle: float = 0.5,
        sboms: SbomService | None = None,
        scanners: Scanners | None = None,
        regions: RegionMap | None = None,
        owned: bool = True,
    ) -> None:
        self.metadata = metadata
        self.va = va
        self.store = store
        self.db = db
        self.advisories = advisories
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.idle = idle
        self.sboms = sboms  # every indexed image gets its SBOM referrers
        self.scanners = scanners if scanners is not None and scanners.urls else None
        self.regions = regions
        self.owned = owned  # namespaces have owning accounts (token auth); not in open mode
        self.holder = uuid.uuid4().hex
        self.stats = IndexerStats()
        self._inflight: dict[str, asyncio.Future[LayerIndex]] = {}
        self._wake = asyncio.Event()
        self._snapshot_checked = 0.0

    def wake(self) -> None:
        """Look at the queue now (called on this event loop)."""
        self._wake.set()

    # -- the loop ----------------------------------------------------------

    async def run(self) -> None:
        """Work until cancelled; one failed item never ends the loop."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() - self._snapshot_checked > 5 * self.idle:
                    self._snapshot_checked = loop.time()
                    await self.check_snapshot()
                if await self.work_once():
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("va: the indexer's loop failed; it goes on")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle)

    async def work_once(self) -> bool:
        """Take and do one item; False when the queue had none."""
        item = await self.db.run(self.va.take, self.holder, self.lease_seconds, self.max_attempts)
        if item is None:
            return False
        renewing = asyncio.create_task(self._renew(item))
        try:
            if item.kind == INDEX:
                reason = await self._index(item)
            else:
                reason = await self._reassess(item)
        except asyncio.CancelledError:
            raise  # the lease runs out and another worker takes the item
        except Exception as exc:
            self.stats.failures += 1
            log.warning(
                "va: %s of %s@%s failed: %s", item.kind, item.repository, item.image_digest, exc
            )
            await self.db.run(
                self.va.retry_later, item.id, self.holder, f"{type(exc).__name__}: {exc}"
            )
            return True
        finally:
            renewing.cancel()
        await self.db.run(self.va.finish, item.id, self.holder, reason)
        return True

    async def _renew(self, item: QueueItem) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            await self.db.run(self.va.renew, item.id, self.holder, self.lease_seconds)

    # -- indexing ----------------------------------------------------------

    async def _index(self, item: QueueItem) -> str | None:
        repo = RepoRef(item.region, item.repository)
        manifest = await self.db.run(
            self.metadata.get_manifest, repo, item.image_digest, by_digest=True
        )
        if manifest is None:
            return "the manifest is gone"
        doc = json.loads(manifest.content)
        if not is_image(doc):
            return "not a container image"
        layer_digests = [str(layer["digest"]) for layer in doc.get("layers") or ()]
        config = await self.store.read_small(
            parse_digest(str(doc["config"]["digest"])), CONFIG_LIMIT
        )
        image_config = _runtime_config(config)
        layers = [await self._layer(d) for d in layer_digests]
        contents = overlay(layers)
        account = await self.db.run(
            self.metadata.namespace_owner, item.region, item.repository.split("/", 1)[0]
        )
        adapters = await self._scan(item, manifest.media_type, account, contents)
        report, pairs = await self._assess(
            contents,
            image_config,
            item.region,
            item.repository,
            item.manifest_digest,
            item.image_digest,
            item.platform,
            adapters,
        )
        await self._attach(repo, item, contents, account)
        await self._store(
            item.region,
            item.repository,
            item.manifest_digest,
            report,
            layer_digests,
            image_config,
            pairs,
        )
        self.stats.images += 1
        return None

    async def _scan(
        self, item: QueueItem, media_type: str, account: str | None, contents: ImageContents
    ) -> list[ScannerReport]:
        """The configured adapters' reports on this platform manifest (each
        pulls it back with a token for this repository only)."""
        if self.scanners is None or self.regions is None or account is None:
            return []
        region = self.regions.get(item.region)
        target = ScanTarget(
            Target(region, legacy=False), item.repository, item.image_digest, media_type, account
        )
        return await self.scanners.scan(target, contents)

    async def _attach(
        self, repo: RepoRef, item: QueueItem, contents: ImageContents, account: str | None
    ) -> None:
        """The image's SBOMs as referrers (signed where the namespace has a
        key). An image deleted or a namespace removed since is no failure of
        indexing: its report is stored as for any other."""
        if self.sboms is None or (account is None and self.owned):
            return  # the namespace is gone: nothing may be written to it
        try:
            await self.sboms.attach_sbom(
                repo, item.image_digest, contents, account, platform=item.platform
            )
        except RegistryError as exc:
            log.info("va: no SBOM for %s@%s: %s", item.repository, item.image_digest, exc)

    async def _layer(self, digest: str) -> LayerIndex:
        """A layer's index: stored, being read by this process already, or read now."""
        stored = await self.db.run(self.va.layer, digest, INDEXER_VERSION)
        if stored is not None:
            self.stats.layers_reused += 1
            return layer_from_json(stored)
        running = self._inflight.get(digest)
        if running is not None:
            self.stats.layers_reused += 1
            return await asyncio.shield(running)
        future: asyncio.Future[LayerIndex] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            index = await self._read_layer(digest)
            await self.db.run(
                self.va.put_layer,
                digest,
                INDEXER_VERSION,
                index.state.value,
                layer_to_json(index),
            )
            future.set_result(index)
            return index
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a waiter may not exist
            raise
        finally:
            del self._inflight[digest]

    async def _read_layer(self, digest: str) -> LayerIndex:
        loop = asyncio.get_running_loop()
        chunks = self.store.read(parse_digest(digest))
        stream = io.BufferedReader(_LoopStream(chunks, loop), 1024 * 1024)
        self.stats.layers_read += 1
        try:
            index: LayerIndex = await loop.run_in_executor(None, index_layer, stream, digest)
        finally:
            await chunks.aclose()
        return index

    async def _assess(
        self,
        contents: ImageContents,
        image_config: dict[str, Any],
        region: str,
        repository: str,
        manifest_digest: str,
        image_digest: str,
        platform: str,
        adapters: Sequence[ScannerReport] = (),
        lookup: StoreLookup | None = None,
    ) -> tuple[Report, set[tuple[str, str]]]:
        """Match and assess off the event loop (both are CPU work); the
        adapters' findings joined in, and the status decided over all."""
        exemptions = await self._exemptions(region, repository)
        tags = await self.db.run(self.va.tags_of, region, repository, manifest_digest)

        def work() -> tuple[Report, set[tuple[str, str]]]:
            found = lookup if lookup is not None else self._lookup()
            matches = match(contents, found) if found is not None else []
            snapshot = found.snapshot_id if found is not None else None
            report = assess(
                contents,
                matches,
                exemptions,
                image_config,
                digest=image_digest,
                platform=platform,
                repository=repository,
                tags=tags,
                manifest_digest=manifest_digest,
                snapshot=snapshot or "",
                supported=contents.os is None or supported_os(contents.os),
            )
            if adapters:
                report = rejudge(
                    merge(report, adapters),
                    contents,
                    exemptions,
                    repository=repository,
                    tags=tags,
                    manifest_digest=manifest_digest,
                    supported=contents.os is None or supported_os(contents.os),
                )
            if snapshot is None:
                report = _without_data(report)
            return report, package_pairs(contents)

        return await self.db.run(work)

    def _lookup(self) -> StoreLookup | None:
        """The current snapshot's advisories (blocking: call in a thread)."""
        snapshot = self.advisories.current() if self.advisories is not None else None
        if snapshot is None or self.advisories is None:
            return None
        return self.advisories.lookup(snapshot.id)

    async def _exemptions(self, region: str, repository: str) -> list[Exemption]:
        account = await self.db.run(
            self.metadata.namespace_owner, region, repository.split("/", 1)[0]
        )
        if account is None:
            return []
        return await self.db.run(self.va.exemptions, account, region)

    async def _store(
        self,
        region: str,
        repository: str,
        manifest_digest: str,
        report: Report,
        layers: Sequence[str],
        image_config: dict[str, Any],
        pairs: set[tuple[str, str]],
    ) -> None:
        old = await self.db.run(
            self.va.put_report,
            region,
            repository,
            manifest_digest,
            report,
            layers,
            image_config,
            pairs,
        )
        if old is not None:
            log.info(
                "va: %s@%s %s: %s -> %s",
                repository,
                manifest_digest,
                report.platform or "-",
                old,
                report.status.value,
            )

    # -- re-assessment -----------------------------------------------------

    async def check_snapshot(self) -> None:
        """Queue the re-assessment a new advisory snapshot asks for (once per
        pair of snapshots, whichever replica sees it first)."""
        if self.advisories is None:
            return
        current = await self.db.run(self.advisories.current)
        if current is None:
            return
        for old in await self.db.run(self.va.snapshots_other_than, current.id):
            await self.db.run(
                self.va.enqueue_reassess,
                f"snapshot:{old}:{current.id}",
                {"snapshot": {"old": old, "new": current.id}},
            )
        self.wake()

    async def _reassess(self, item: QueueItem) -> str | None:
        scope = item.payload
        if "snapshot" in scope:
            old, new = scope["snapshot"]["old"], scope["snapshot"]["new"]
            assert self.advisories is not None
            pairs = await self.db.run(self.advisories.touched, old or None, new)
            ids = await self.db.run(self.va.reports_touching, pairs, old)
        else:
            ids = await self.db.run(self.va.reports_in, scope["region"], scope.get("namespace"))
            old = new = None
        cache: dict[str, LayerIndex] = {}
        # One snapshot for the whole job, its advisories read once per package.
        lookup = await self.db.run(self._lookup)
        for start in range(0, len(ids), 200):
            for stored in await self.db.run(self.va.reports_by_id, ids[start : start + 200]):
                await self._reassess_one(stored, cache, lookup)
        if old is not None and new is not None:
            await self.db.run(self.va.move_snapshot, old, new)
        return f"re-assessed {len(ids)} report(s)"

    async def _reassess_one(
        self, stored: StoredReport, cache: dict[str, LayerIndex], lookup: StoreLookup | None
    ) -> None:
        layers: list[LayerIndex] = []
        for digest in stored.layers:
            index = cache.get(digest)
            if index is None:
                doc = await self.db.run(self.va.layer, digest, INDEXER_VERSION)
                if doc is None:  # indexed by an older indexer: index the image again
                    await self.db.run(self.va.requeue_index, stored)
                    return
                index = layer_from_json(doc)
                if len(cache) < 4096:
                    cache[digest] = index
            layers.append(index)
        contents = overlay(layers)
        report, pairs = await self._assess(
            contents,
            stored.image_config,
            stored.region,
            stored.repository,
            stored.manifest_digest,
            stored.report.digest,
            stored.platform,
            kept(stored.report),
            lookup,
        )
        await self._store(
            stored.region,
            stored.repository,
            stored.manifest_digest,
            report,
            stored.layers,
            stored.image_config,
            pairs,
        )
        self.stats.reassessed += 1


def _runtime_config(config: bytes | None) -> dict[str, Any]:
    """The image config's ``config`` object (User, Env, ...), or {}."""
    if not config:
        return {}
    try:
        doc = json.loads(config)
    except ValueError:
        return {}
    runtime = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(runtime, dict):
        return {}
    return {k: runtime[k] for k in ("User", "ExposedPorts", "Entrypoint", "Cmd") if k in runtime}


def _without_data(report: Report) -> Report:
    """No advisory snapshot imported: no verdict is 'no issues'."""
    from dataclasses import replace

    from moorage.va.model import Status

    if report.status is Status.OK:
        return replace(report, status=Status.WARN, reason="no advisory data imported yet")
    return replace(report, reason=report.reason or "no advisory data imported yet")
