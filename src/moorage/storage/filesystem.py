"""Filesystem driver: blobs under ``blobs/<alg>/<xx>/<hex>``, uploads under
``uploads/<id>``.

A blob becomes visible only by an atomic rename of a fully written, fsynced
and verified upload file, so a crash can leave stray uploads but never a
partial blob. Concurrent pushes of the same content race harmlessly: the
rename of identical bytes onto the same name keeps one copy.

An upload's offset is the ledger's, not the file's size: the file may hold
bytes past it (an append that crashed or lost), which the next append cuts
off. Appends and commits of one upload take an exclusive ``flock`` on its
file, so processes sharing the directory never interleave their bytes, and
read the offset from the ledger under it; the ledger's conditional save
then decides what counts."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Collection
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from moorage.oci.digest import HEX_LENGTHS, Digest, Hasher, new_hasher
from moorage.storage.base import (
    BeforePublish,
    BlobMissing,
    BlobSource,
    Committed,
    DigestMismatch,
    LocalFile,
    OffsetMismatch,
    StoreHealth,
    SweepReport,
    TruncatedBody,
    UploadLedger,
    UploadMissing,
    UploadRecord,
)
from moorage.storage.common import (
    STAGING_ALGORITHM,
    UPLOAD_ID,
    BodyFailed,
    Settler,
    UploadMemory,
    body_of,
    check_upload_id,
    is_cut,
    unwrap,
)

T = TypeVar("T")
_WRITE_BUFFER = 1 << 20
_HASH_BLOCK = 4 << 20
_READ_BLOCK = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_prefix(path: Path, algorithm: str, length: int) -> Hasher:
    """The hash of a file's first ``length`` bytes; UploadMissing when it is shorter."""
    hasher = new_hasher(algorithm)
    left = length
    with path.open("rb") as f:
        while left and (block := f.read(min(_HASH_BLOCK, left))):
            hasher.update(block)
            left -= len(block)
    if left:
        raise UploadMissing(f"{path.name} holds fewer bytes than its offset")
    return hasher


def _open_binary(path: Path) -> BinaryIO:
    return path.open("rb")


def _hash_and_write(fd: int, hasher: Hasher, block: bytearray) -> None:
    hasher.update(block)
    view = memoryview(block)
    while view:
        view = view[os.write(fd, view) :]


@dataclass
class _Progress:
    """Bytes hashed and on disk so far: what a cut stream keeps. ``torn``: a
    block failed on its way to disk, so the running hash is no longer the
    hash of the stored bytes."""

    stored: int = 0
    torn: bool = False


async def _pipelined_write(
    fd: int,
    hasher: Hasher,
    chunks: AsyncIterable[bytes],
    expected_length: int | None,
    executor: Executor,
    progress: _Progress,
) -> int:
    """Hash and write each full buffer on a worker thread while the event loop
    receives the next one: hashlib and os.write release the GIL, so the two
    overlap on separate cores. One block is in flight at a time, in order, and
    a cancellation never leaves it running behind the caller's back. Errors of
    the body come out as BodyFailed, errors of the disk as themselves."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    pending_size = 0
    buffer = bytearray()
    received = 0

    async def settle() -> None:
        nonlocal pending
        if pending is None:
            return
        block, pending = pending, None
        await asyncio.shield(block)
        progress.stored += pending_size

    try:
        async for chunk in body_of(chunks):
            buffer += chunk
            received += len(chunk)
            if expected_length is not None and received > expected_length:
                break
            if len(buffer) >= _WRITE_BUFFER:
                await settle()
                block, buffer = buffer, bytearray()
                pending_size = len(block)
                pending = loop.run_in_executor(executor, _hash_and_write, fd, hasher, block)
        await settle()
        if expected_length is not None and received != expected_length:
            raise TruncatedBody(f"body had {received} bytes where {expected_length} were announced")
        if buffer:
            pending_size = len(buffer)
            pending = loop.run_in_executor(executor, _hash_and_write, fd, hasher, buffer)
            await settle()
        return received
    finally:
        if pending is not None:
            # Never leave a write racing with the caller's truncate and close.
            inflight = pending
            while not inflight.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(inflight)
            if inflight.cancelled() or inflight.exception() is not None:
                progress.torn = True
            else:
                progress.stored += pending_size


class FilesystemBlobStore:
    def __init__(self, root: Path, ledger: UploadLedger, io_threads: int = 4) -> None:
        self.root = root
        self.ledger = ledger
        self.blobs = root / "blobs"
        self.uploads = root / "uploads"
        for algorithm in HEX_LENGTHS:
            (self.blobs / algorithm).mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        # Running hash of each upload this process appended to, with the ledger
        # version it is valid at. Lost on restart; rebuilt from the file on demand.
        # Appends of one upload in this process queue here rather than on the flock.
        self._uploads = UploadMemory()
        self._settler = Settler()
        # Hashing, writing and fsync have threads of their own: work queued on the
        # default pool (database calls, token issuance) never holds up an upload.
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="blob-io")

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # -- blobs -------------------------------------------------------------

    def _blob_path(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.hex[:2] / digest.hex

    async def stat(self, digest: Digest) -> int | None:
        try:
            return self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    async def open(self, digest: Digest, redirect: bool = True) -> BlobSource | None:
        # One stat on the loop, as before the store was async: the hot path of
        # blob GET stays a stat plus aiohttp's sendfile.
        path = self._blob_path(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return LocalFile(str(path), size)

    async def read(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        try:
            f = await self._off_loop(_open_binary, self._blob_path(digest))
        except FileNotFoundError:
            raise BlobMissing(str(digest)) from None
        try:
            await self._off_loop(f.seek, offset)
            left = length
            while left is None or left > 0:
                size = _READ_BLOCK if left is None else min(_READ_BLOCK, left)
                block = await self._off_loop(f.read, size)
                if not block:
                    return
                if left is not None:
                    left -= len(block)
                yield block
        finally:
            f.close()

    async def read_small(self, digest: Digest, limit: int) -> bytes | None:
        def read() -> bytes | None:
            try:
                with self._blob_path(digest).open("rb") as f:
                    data = f.read(limit + 1)
            except FileNotFoundError:
                return None
            return data if len(data) <= limit else None

        return await self._off_loop(read)

    async def put(
        self,
        digest: Digest,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        before_publish: BeforePublish | None = None,
    ) -> int:
        """Written to a private file in uploads/ (no session names it, so a
        crash leaves it to :meth:`sweep`), hashed with the digest's own
        algorithm, then published like a commit."""
        staged = self.uploads / uuid.uuid4().hex
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        published = False
        try:
            hasher = new_hasher(digest.algorithm)
            try:
                size = await _pipelined_write(
                    fd, hasher, chunks, expected_length, self._io, _Progress()
                )
            except BodyFailed as exc:
                raise unwrap(exc) from None
            if hasher.hexdigest() != digest.hex:
                raise DigestMismatch(f"content hashes to {digest.algorithm}:{hasher.hexdigest()}")
            if before_publish is not None:
                await before_publish()
            await self._off_loop(self._publish, fd, staged, digest)
            published = True
            return size
        finally:
            os.close(fd)
            if not published:
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()

    async def delete(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._blob_path(digest).unlink()

    async def walk(self) -> AsyncIterator[tuple[Digest, int]]:
        def listing() -> list[tuple[Digest, int]]:
            found = []
            for algorithm in HEX_LENGTHS:
                for path in (self.blobs / algorithm).glob("*/*"):
                    name = path.name
                    if len(name) == HEX_LENGTHS[algorithm] and path.parent.name == name[:2]:
                        with contextlib.suppress(FileNotFoundError):
                            found.append((Digest(algorithm, name), path.stat().st_size))
            return found

        for item in await self._off_loop(listing):
            yield item

    # -- uploads -----------------------------------------------------------

    def _upload_path(self, upload_id: str) -> Path:
        return self.uploads / check_upload_id(upload_id)

    def _lock(self, upload_id: str) -> asyncio.Lock:
        return self._uploads.lock(upload_id)

    async def _open_locked(self, upload_id: str) -> tuple[int, Path, UploadRecord]:
        """The upload's file, open and under an exclusive flock, and its record
        as read under that lock. UploadMissing when either is gone, or when the
        file was committed or discarded while this process waited."""
        path = self._upload_path(upload_id)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise UploadMissing(upload_id) from None
        try:
            delay = 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    # Another process is appending to this upload right now.
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.2)
            try:
                same = os.fstat(fd).st_ino == path.stat().st_ino
            except FileNotFoundError:
                same = False
            if not same:
                raise UploadMissing(upload_id)
            record = await self.ledger.load(upload_id)
            if record is None:
                raise UploadMissing(upload_id)
            return fd, path, record
        except BaseException:
            os.close(fd)
            raise

    async def create_upload(self, upload_id: str) -> None:
        path = self._upload_path(upload_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        self._uploads.start(upload_id)

    async def _running_hash(self, upload_id: str, path: Path, record: UploadRecord) -> Hasher:
        cached = self._uploads.hasher(upload_id, record.version)
        if cached is not None:
            return cached
        return await self._off_loop(_hash_prefix, path, STAGING_ALGORITHM, record.offset)

    async def append(
        self,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        offset: int | None = None,
    ) -> int:
        async with self._lock(upload_id):
            fd, path, record = await self._open_locked(upload_id)
            try:
                start = record.offset
                if offset is not None and offset != start:
                    raise OffsetMismatch(start)
                if os.fstat(fd).st_size < start:
                    raise UploadMissing(f"{upload_id} holds fewer bytes than its offset")
                hasher = (await self._running_hash(upload_id, path, record)).copy()
                # Bytes past the offset are an append that crashed or lost: cut them.
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
                progress = _Progress()
                try:
                    written = await _pipelined_write(
                        fd, hasher, chunks, expected_length, self._io, progress
                    )
                except BaseException as exc:
                    if is_cut(exc) and expected_length is None and progress.stored:
                        # A streamed body cut short (client gone, server stopping) keeps
                        # the prefix that arrived: every byte of it is valid, and the
                        # client resumes from the offset the status reports.
                        kept = None if progress.torn else hasher
                        await self._settler.settle(
                            self._keep(upload_id, record, start + progress.stored, kept)
                        )
                    else:
                        # A sized chunk is all or nothing: the upload stays as it was.
                        with contextlib.suppress(OSError):
                            os.ftruncate(fd, start)
                    if exc is not unwrap(exc):
                        raise unwrap(exc) from None
                    raise
                if not await self._keep(upload_id, record, start + written, hasher):
                    os.ftruncate(fd, start)
                    current = await self.ledger.load(upload_id)
                    if current is None:
                        raise UploadMissing(upload_id)
                    raise OffsetMismatch(current.offset)
                return start + written
            finally:
                os.close(fd)

    async def _keep(
        self, upload_id: str, record: UploadRecord, end: int, hasher: Hasher | None
    ) -> bool:
        saved = await self.ledger.save(upload_id, record.version, end, None)
        if saved:
            self._uploads.saved(upload_id, hasher, record.version + 1)
        return saved

    async def commit(
        self,
        upload_id: str,
        digest: Digest,
        before_publish: BeforePublish | None = None,
        chunks: AsyncIterable[bytes] | None = None,
        expected_length: int | None = None,
        offset: int | None = None,
    ) -> Committed:
        """A last chunk is written past the offset and checked with the rest
        before anything is saved: refused, it is cut off again and the ledger
        never saw it (published, the caller deletes the row)."""
        async with self._lock(upload_id):
            fd, path, record = await self._open_locked(upload_id)
            try:
                start = size = record.offset
                if offset is not None and offset != start:
                    raise OffsetMismatch(start)
                on_disk = os.fstat(fd).st_size
                if on_disk < start:
                    raise UploadMissing(f"{upload_id} holds fewer bytes than its offset")
                if on_disk > start:
                    os.ftruncate(fd, start)
                running = None
                if digest.algorithm == STAGING_ALGORITHM:
                    running = (await self._running_hash(upload_id, path, record)).copy()
                try:
                    if chunks is not None:
                        os.lseek(fd, start, os.SEEK_SET)
                        # Another algorithm's digest is checked by reading the file back.
                        hasher = running or new_hasher(STAGING_ALGORITHM)
                        try:
                            size += await _pipelined_write(
                                fd, hasher, chunks, expected_length, self._io, _Progress()
                            )
                        except BodyFailed as exc:
                            raise unwrap(exc) from None
                    if running is not None:
                        actual = running.hexdigest()
                    else:
                        actual = (
                            await self._off_loop(_hash_prefix, path, digest.algorithm, size)
                        ).hexdigest()
                    if actual != digest.hex:
                        raise DigestMismatch(f"content hashes to {digest.algorithm}:{actual}")
                    if before_publish is not None:
                        await before_publish()
                except BaseException:
                    if chunks is not None:  # cut the refused chunk off again
                        with contextlib.suppress(OSError):
                            os.ftruncate(fd, start)
                    raise
                # Renamed while the flock is held: a process waiting for it then
                # finds the path gone and answers UploadMissing.
                await self._off_loop(self._publish, fd, path, digest)
            finally:
                os.close(fd)
        self._forget(upload_id)
        return Committed(size, record.version)

    def _publish(self, fd: int, staged: Path, digest: Digest) -> None:
        """Always rename, even over a copy already there: a look-up saying it
        is there may be stale (NFS caches attributes; the copy may be going
        away under a collector), while rename replaces atomically."""
        target = self._blob_path(digest)
        os.fsync(fd)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)
        _fsync_dir(target.parent)

    async def discard_upload(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, UploadMissing):
            self._upload_path(upload_id).unlink()
        self._forget(upload_id)

    def _forget(self, upload_id: str) -> None:
        self._uploads.forget(upload_id)

    async def sweep(
        self, live: Collection[str], older_than: datetime, dry_run: bool = False
    ) -> SweepReport:
        cutoff = older_than.timestamp()

        def run() -> SweepReport:
            report = SweepReport()
            for path in self.uploads.iterdir():
                if not UPLOAD_ID.match(path.name) or path.name in live:
                    continue
                try:
                    info = path.stat()
                    if info.st_mtime >= cutoff:
                        continue
                    if not dry_run:
                        path.unlink()
                except FileNotFoundError:
                    continue
                report.removed.append(path.name)
                report.freed_bytes += info.st_size
            return report

        report = await self._off_loop(run)
        if not dry_run:
            for upload_id in report.removed:
                self._forget(upload_id)
        return report

    # -- the store itself --------------------------------------------------

    def health(self) -> StoreHealth:
        writable = os.access(self.root, os.W_OK)
        return StoreHealth(
            writable,
            {
                "storage": "ok" if writable else "error: not writable",
                "storage_driver": "filesystem",
                "storage_free_bytes": shutil.disk_usage(self.root).free,
            },
        )

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        await self._settler.drain()
        self._io.shutdown(wait=False)
