"""Blob reads, uploads and cross-repository mounts.

Bytes go to the blob store; the link that makes a blob visible in a
repository is written to metadata only after the store has verified and
published the content. An upload's offset lives in its metadata row, which
the store advances through :class:`MetadataLedger`."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from moorage.metadata import (
    DatabaseThreads,
    MetadataStore,
    NamespaceChanged,
    RepoRef,
    UploadMoved,
    UploadSession,
)
from moorage.metadata.cache import SharedCache, repository_group
from moorage.oci.digest import Digest, DigestError, parse_digest
from moorage.registry.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    NamespaceGone,
    RangeInvalid,
    SizeInvalid,
    StorageUnavailable,
    Unsupported,
)
from moorage.storage import (
    BlobSource,
    BlobStore,
    Committed,
    DigestMismatch,
    OffsetMismatch,
    StorageError,
    TruncatedBody,
    UploadMissing,
    UploadRecord,
    UploadTooLarge,
)

log = logging.getLogger("moorage.registry")

# How long a blob link is trusted from memory at most (see SharedCache).
LINK_TTL = 60.0
# How long a writer waits for a collector that is deleting the same blob.
PIN_WAIT = 60.0
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?\Z")


def require_digest(value: str | None) -> Digest:
    if not value:
        raise DigestInvalid("a digest is required")
    try:
        return parse_digest(value)
    except DigestError as exc:
        if exc.unsupported:
            raise Unsupported(str(exc)) from exc
        raise DigestInvalid(str(exc)) from exc


@contextmanager
def namespace_checked() -> Iterator[None]:
    """A write whose namespace changed hands under it is refused, not misplaced."""
    try:
        yield
    except NamespaceChanged:
        raise NamespaceGone() from None


def range_header(size: int) -> str:
    """The Range reply header: the inclusive span received so far (``0-0`` when empty)."""
    return f"0-{max(size - 1, 0)}"


@dataclass(frozen=True)
class BlobHandle:
    digest: Digest
    size: int
    source: BlobSource


@dataclass(frozen=True)
class UploadState:
    upload_id: str
    size: int


# How old staged bytes without a session must be before start-up removes
# them: younger ones may be a monolithic upload in flight on another replica.
STAGING_GRACE = timedelta(hours=1)


class MetadataLedger:
    """The blob store's view of the ``uploads`` rows (storage's UploadLedger),
    over the metadata store, whose calls block: each runs on a database thread."""

    def __init__(self, metadata: MetadataStore, db: DatabaseThreads) -> None:
        self.metadata = metadata
        self.db = db

    async def load(self, upload_id: str) -> UploadRecord | None:
        row = await self.db.run(self.metadata.upload_progress, upload_id)
        return None if row is None else UploadRecord(*row)

    async def save(self, upload_id: str, version: int, offset: int, state: str | None) -> bool:
        return await self.db.run(
            self.metadata.save_upload_progress, upload_id, version, offset, state
        )

    async def reserve(self, upload_id: str, count: int) -> int | None:
        return await self.db.run(self.metadata.reserve_upload_parts, upload_id, count)


@asynccontextmanager
async def _backend() -> AsyncIterator[None]:
    """The store's own failures are the registry's 503, not a crash."""
    try:
        yield
    except StorageError as exc:
        log.error("blob store: %s", exc)
        raise StorageUnavailable(f"the blob store failed: {exc}") from exc


class BlobService:
    """The methods the HTTP layer calls are coroutines: the metadata they read
    and write (blocking database calls) runs on the database threads, the
    bytes in the blob store's own coroutines."""

    def __init__(
        self, store: BlobStore, metadata: MetadataStore, db: DatabaseThreads | None = None
    ) -> None:
        self.store = store
        self.metadata = metadata
        self.db = db or DatabaseThreads()
        changes = metadata.changes
        # Which blobs each repository links, and their sizes: a link changes only
        # by an unlink or a namespace's removal, which drop it in every process.
        self._links: SharedCache[tuple[str, str], str, int] = SharedCache(
            lambda: changes.healthy, LINK_TTL, 100_000, repository_group
        )
        changes.subscribe(self._links.changed)

    # -- reads and deletes -------------------------------------------------

    def _linked_size_now(self, repo: RepoRef, digest: str) -> int | None:
        stamp = self._links.stamp()
        size = self.metadata.linked_blob_size(repo, digest)
        if size is not None:
            self._links.offer((repo.region, repo.name), digest, size, stamp)
        return size

    async def _linked_size(self, repo: RepoRef, digest: str) -> int | None:
        size = self._links.get((repo.region, repo.name), digest)
        if size is None:
            size = await self.db.run(self._linked_size_now, repo, digest)
        return size

    async def get(self, repo: RepoRef, digest_value: str, redirect: bool = True) -> BlobHandle:
        """A blob linked in ``repo`` and how to serve it; ``redirect`` false
        asks the store for the bytes rather than a redirect (HEAD)."""
        digest = require_digest(digest_value)
        size = await self._linked_size(repo, str(digest))
        source = None
        if size is not None:
            async with _backend():
                source = await self.store.open(digest, redirect)
        if source is None:
            raise BlobUnknown("blob unknown to registry", detail={"digest": str(digest)})
        return BlobHandle(digest, size or 0, source)

    async def read_small(self, repo: RepoRef, digest_value: str, limit: int) -> bytes | None:
        """A small blob linked in ``repo`` (a signature payload), or None."""
        try:
            digest = parse_digest(digest_value)
        except DigestError:
            return None
        if await self._linked_size(repo, str(digest)) is None:
            return None
        async with _backend():
            return await self.store.read_small(digest, limit)

    async def delete(self, repo: RepoRef, digest_value: str, account: str | None = None) -> Digest:
        """Unlink a blob from one repository; the bytes go when garbage collection runs.
        ``account`` (here and below) is the account the caller was authorised as the
        namespace's owner: the write commits only if it still is."""
        digest = require_digest(digest_value)
        with namespace_checked():
            unlinked = await self.db.run(self.metadata.unlink_blob, repo, str(digest), account)
        if not unlinked:
            raise BlobUnknown("blob unknown to registry", detail={"digest": str(digest)})
        return digest

    # -- uploads -----------------------------------------------------------

    async def start_upload(
        self, repo: RepoRef, owner: str | None = None, account: str | None = None
    ) -> UploadState:
        upload_id = uuid.uuid4().hex
        async with _backend():
            await self.store.create_upload(upload_id)
        try:
            with namespace_checked():
                await self.db.run(self.metadata.create_upload, upload_id, repo, owner, account)
        except BaseException:
            await self.store.discard_upload(upload_id)
            raise
        return UploadState(upload_id, 0)

    async def mount(
        self,
        repo: RepoRef,
        digest_value: str,
        source_repo: RepoRef | None,
        account: str | None = None,
    ) -> Digest | None:
        """Link a blob from ``source_repo``; None means "upload it instead"."""
        try:
            digest = parse_digest(digest_value)
        except DigestError:
            return None
        if not source_repo or source_repo == repo:
            return None
        async with _backend():
            if await self.store.stat(digest) is None:
                return None
        with namespace_checked():
            mounted = await self.db.run(
                self.metadata.mount_blob, repo, str(digest), source_repo, account
            )
        if mounted is None:
            return None
        return digest

    async def upload_whole(
        self,
        repo: RepoRef,
        digest_value: str,
        body: AsyncIterable[bytes],
        length: int | None,
        account: str | None = None,
    ) -> Digest:
        """A monolithic ``POST ?digest=``: stage, verify and publish in one request."""
        digest = require_digest(digest_value)
        pin = _Pin(self, digest)
        size = await self._put(digest, body, length, pin)
        await self._record(repo, digest, size, pin.epoch(), account)
        return digest

    async def session_owner(self, repo: RepoRef, upload_id: str) -> str | None:
        """Who started an upload session of ``repo``, for authorization bound to it."""
        session = await self.db.run(self.metadata.upload_session, upload_id)
        return session.owner if session is not None and session.repo == repo else None

    async def _session(self, repo: RepoRef, upload_id: str) -> UploadSession:
        """The session's row: the same offset on every replica."""
        session = await self.db.run(self.metadata.upload_session, upload_id)
        if session is None or session.repo != repo:
            raise BlobUploadUnknown("blob upload unknown to registry")
        return session

    async def status(self, repo: RepoRef, upload_id: str) -> UploadState:
        return UploadState(upload_id, (await self._session(repo, upload_id)).offset)

    def _check_range(
        self, size: int, content_range: str | None, length: int | None
    ) -> tuple[int | None, int | None]:
        """Validate Content-Range against the session; returns the chunk length it
        implies and the offset it claims (None without a Content-Range)."""
        if not content_range:
            return length, None
        match = _CONTENT_RANGE.match(content_range.strip())
        if not match:
            raise RangeInvalid(
                f"malformed Content-Range {content_range[:60]!r}",
                headers={"Range": range_header(size)},
            )
        start, end = int(match.group(1)), int(match.group(2))
        if start != size or end < start:
            raise RangeInvalid(
                f"chunk {start}-{end} does not continue the upload at offset {size}",
                headers={"Range": range_header(size)},
            )
        chunk = end - start + 1
        if length is not None and length != chunk:
            raise SizeInvalid(f"Content-Length {length} does not match Content-Range {start}-{end}")
        return chunk, start

    async def append(
        self,
        repo: RepoRef,
        upload_id: str,
        body: AsyncIterable[bytes],
        content_range: str | None,
        length: int | None,
    ) -> UploadState:
        size = (await self._session(repo, upload_id)).offset
        expected, offset = self._check_range(size, content_range, length)
        return UploadState(upload_id, await self._append(upload_id, body, expected, offset))

    async def finish(
        self,
        repo: RepoRef,
        upload_id: str,
        digest_value: str | None,
        body: AsyncIterable[bytes] | None,
        content_range: str | None,
        length: int | None,
        account: str | None = None,
    ) -> Digest:
        """The closing PUT, with or without a last chunk. A refused one (416,
        a wrong digest or length, a blob too large) leaves the session as it
        was, its offset and bytes, so the client can resume from its Range.
        The session ends only at the version whose bytes were committed: if
        a chunk landed meanwhile (a PATCH racing this PUT) that chunk won, and
        this PUT is refused like any loser of a race."""
        session = await self._session(repo, upload_id)
        size = session.offset
        digest = require_digest(digest_value)
        pin = _Pin(self, digest)
        if body is not None and size == 0:
            # Nothing staged yet and the digest known before the bytes: the
            # store writes the blob straight to its place (S3: no copy).
            expected, _ = self._check_range(size, content_range, length)
            committed = Committed(await self._put(digest, body, expected, pin), session.version)
        elif body is not None:
            expected, offset = self._check_range(size, content_range, length)
            committed = await self._commit(upload_id, digest, pin, body, expected, offset)
        else:
            committed = await self._commit(upload_id, digest, pin)
        try:
            await self._record(
                repo,
                digest,
                committed.size,
                pin.epoch(),
                account,
                ending_upload=upload_id,
                ending_version=committed.version,
            )
        except UploadMoved:
            # The blob stays unlinked (garbage collection takes it); the session is the winner's.
            now = (await self._session(repo, upload_id)).offset
            raise RangeInvalid(
                f"the upload moved on to offset {now} while it was being committed",
                headers={"Range": range_header(now)},
            ) from None
        except BaseException:
            await self._end_session(upload_id)
            raise
        async with _backend():
            await self.store.discard_upload(upload_id)
        return digest

    async def _pin(self, digest: Digest) -> str:
        """Pin the blob's row (see ``MetadataStore.pin_blob``), waiting while
        a collector deletes it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PIN_WAIT
        while (epoch := await self.db.run(self.metadata.pin_blob, str(digest))) is None:
            if loop.time() > deadline:
                raise StorageUnavailable("the blob is being garbage collected: try again")
            await asyncio.sleep(0.05)  # the collector's delete is one request to the store
        return epoch

    async def _record(
        self,
        repo: RepoRef,
        digest: Digest,
        size: int,
        epoch: str,
        account: str | None,
        ending_upload: str | None = None,
        ending_version: int | None = None,
    ) -> None:
        """Link the published blob into ``repo``. If a collector deleted it
        since the pin (the upload outlasted the grace period), the bytes count
        only if they are there under a fresh pin; else the client uploads again."""
        for attempt in range(2):
            with namespace_checked():
                if await self.db.run(
                    self.metadata.record_blob,
                    repo,
                    str(digest),
                    size,
                    epoch=epoch,
                    account=account,
                    ending_upload=ending_upload,
                    ending_version=ending_version,
                ):
                    return
            if attempt:
                break
            epoch = await self._pin(digest)
            async with _backend():
                if await self.store.stat(digest) != size:
                    break
        raise StorageUnavailable(
            "the blob was garbage collected while it was being uploaded: upload it again"
        )

    async def cancel(self, repo: RepoRef, upload_id: str) -> None:
        await self._session(repo, upload_id)
        await self._end_session(upload_id)

    async def _end_session(self, upload_id: str) -> None:
        await self.db.run(self.metadata.delete_upload, upload_id)
        async with _backend():
            await self.store.discard_upload(upload_id)

    async def _append(
        self,
        upload_id: str,
        body: AsyncIterable[bytes],
        expected: int | None,
        offset: int | None = None,
    ) -> int:
        async with _refusals(None):
            return await self.store.append(upload_id, body, expected, offset)

    async def _put(
        self, digest: Digest, body: AsyncIterable[bytes], expected: int | None, pin: _Pin
    ) -> int:
        async with _refusals(digest):
            return await self.store.put(digest, body, expected, pin)

    async def _commit(
        self,
        upload_id: str,
        digest: Digest,
        pin: _Pin,
        body: AsyncIterable[bytes] | None = None,
        expected: int | None = None,
        offset: int | None = None,
    ) -> Committed:
        async with _refusals(digest):
            return await self.store.commit(upload_id, digest, pin, body, expected, offset)

    # -- crash recovery ----------------------------------------------------

    async def reconcile(self, grace: timedelta = STAGING_GRACE) -> dict[str, int]:
        """Remove staged bytes no session names, once older than ``grace`` (a
        crash's leftovers; younger ones may be another replica's request in
        flight). Sessions themselves stay: their offsets are in the database,
        so every one of them is resumable on any replica."""
        sessions = await self.db.run(self.metadata.list_uploads)
        async with _backend():
            swept = await self.store.sweep(set(sessions), datetime.now(UTC) - grace)
        return {"sessions": len(sessions), "deleted_staging": len(swept.removed)}


@asynccontextmanager
async def _refusals(digest: Digest | None) -> AsyncIterator[None]:
    """The store's refusals of one request as the spec's errors. The store
    promises each leaves the upload as it was, so none ends the session."""
    try:
        async with _backend():
            yield
    except UploadMissing as exc:
        raise BlobUploadUnknown("blob upload unknown to registry") from exc
    except OffsetMismatch as exc:
        # Another chunk for the same range got there first, or this one is out of order.
        raise RangeInvalid(
            f"the chunk does not continue the upload at offset {exc.size}",
            headers={"Range": range_header(exc.size)},
        ) from exc
    except TruncatedBody as exc:
        raise SizeInvalid(str(exc)) from exc
    except UploadTooLarge as exc:
        raise BlobUploadInvalid(str(exc)) from exc
    except DigestMismatch as exc:
        raise DigestInvalid(
            "provided digest did not match uploaded content",
            detail={"digest": str(digest), "reason": str(exc)},
        ) from exc


class _Pin:
    """What the store awaits between verifying a blob and publishing it: the
    pin against garbage collection, taken only for bytes that are the blob
    (a refused upload changes nothing) and as late as it can be, so the grace
    period covers the publish and the link, not the whole upload."""

    def __init__(self, service: BlobService, digest: Digest) -> None:
        self.service = service
        self.digest = digest
        self._epoch: str | None = None

    async def __call__(self) -> None:
        self._epoch = await self.service._pin(self.digest)

    def epoch(self) -> str:
        if self._epoch is None:  # pragma: no cover - a store that skipped the hook
            raise RuntimeError("the blob store published without pinning")
        return self._epoch
