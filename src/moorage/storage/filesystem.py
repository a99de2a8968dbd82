"""Filesystem driver: blobs under ``blobs/<alg>/<xx>/<hex>``, uploads under
``uploads/<id>``.

A blob becomes visible only by an atomic rename of a fully written, fsynced
and verified upload file, so a crash can leave stray uploads but never a
partial blob. Concurrent pushes of the same content race harmlessly: the
rename of identical bytes onto the same name keeps one copy."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import time
from collections.abc import AsyncIterable, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from moorage.oci.digest import HEX_LENGTHS, Digest, Hasher, new_hasher
from moorage.storage.base import DigestMismatch, OffsetMismatch, TruncatedBody, UploadMissing

T = TypeVar("T")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}\Z")
_WRITE_BUFFER = 1 << 20
_HASH_BLOCK = 4 << 20
_STAGING_ALGORITHM = "sha256"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_file(path: Path, algorithm: str) -> tuple[Hasher, int]:
    hasher = new_hasher(algorithm)
    size = 0
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            hasher.update(block)
            size += len(block)
    return hasher, size


def _hash_and_write(fd: int, hasher: Hasher, block: bytearray) -> None:
    hasher.update(block)
    os.write(fd, block)


async def _pipelined_write(
    fd: int,
    hasher: Hasher,
    chunks: AsyncIterable[bytes],
    expected_length: int | None,
    executor: Executor,
) -> int:
    """Hash and write each full buffer on a worker thread while the event loop
    receives the next one: hashlib and os.write release the GIL, so the two
    overlap on separate cores. One block is in flight at a time, in order."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    buffer = bytearray()
    written = 0
    try:
        async for chunk in chunks:
            buffer += chunk
            written += len(chunk)
            if expected_length is not None and written > expected_length:
                break
            if len(buffer) >= _WRITE_BUFFER:
                if pending is not None:
                    await pending
                block, buffer = buffer, bytearray()
                pending = loop.run_in_executor(executor, _hash_and_write, fd, hasher, block)
        if pending is not None:
            await pending
            pending = None
        if expected_length is not None and written != expected_length:
            raise TruncatedBody(f"body had {written} bytes where {expected_length} were announced")
        if buffer:
            _hash_and_write(fd, hasher, buffer)
        return written
    finally:
        if pending is not None:
            # Never leave a write racing with the caller's truncate and close.
            await asyncio.shield(pending)


class FilesystemBlobStore:
    def __init__(self, root: Path, io_threads: int = 4) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.uploads = root / "uploads"
        for algorithm in HEX_LENGTHS:
            (self.blobs / algorithm).mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        # Running hash of each live upload, valid while its offset equals the
        # file size. Lost on restart; rebuilt from the file on demand.
        self._hashers: dict[str, tuple[Hasher, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Hashing, writing and fsync have threads of their own: work queued on the
        # default pool (database calls, token issuance) never holds up an upload.
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="blob-io")

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # -- blobs -------------------------------------------------------------

    def _blob_path(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.hex[:2] / digest.hex

    def blob_size(self, digest: Digest) -> int | None:
        try:
            return self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def local_path(self, digest: Digest) -> str | None:
        return str(self._blob_path(digest))

    def read_small(self, digest: Digest, limit: int) -> bytes | None:
        try:
            with self._blob_path(digest).open("rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            return None
        return data if len(data) <= limit else None

    def delete_blob(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._blob_path(digest).unlink()

    def iter_blobs(self) -> Iterator[tuple[Digest, int]]:
        for algorithm in HEX_LENGTHS:
            for path in (self.blobs / algorithm).glob("*/*"):
                if len(path.name) == HEX_LENGTHS[algorithm] and path.parent.name == path.name[:2]:
                    yield Digest(algorithm, path.name), path.stat().st_size

    # -- uploads -----------------------------------------------------------

    def _upload_path(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.match(upload_id):
            raise UploadMissing(upload_id)
        return self.uploads / upload_id

    def _lock(self, upload_id: str) -> asyncio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = asyncio.Lock()
        return lock

    def create_upload(self, upload_id: str) -> None:
        path = self._upload_path(upload_id)
        path.touch(exist_ok=False)
        self._hashers[upload_id] = (new_hasher(_STAGING_ALGORITHM), 0)

    def upload_size(self, upload_id: str) -> int | None:
        try:
            return self._upload_path(upload_id).stat().st_size
        except (FileNotFoundError, UploadMissing):
            return None

    def upload_age(self, upload_id: str) -> float | None:
        """Seconds since the upload's bytes last changed."""
        try:
            return time.time() - self._upload_path(upload_id).stat().st_mtime
        except (FileNotFoundError, UploadMissing):
            return None

    async def _running_hash(self, upload_id: str, path: Path, size: int) -> Hasher:
        cached = self._hashers.get(upload_id)
        if cached is not None and cached[1] == size:
            return cached[0]
        hasher, hashed = await self._off_loop(_hash_file, path, _STAGING_ALGORITHM)
        if hashed != size:
            raise UploadMissing(upload_id)
        return hasher

    async def append(
        self,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        offset: int | None = None,
    ) -> int:
        path = self._upload_path(upload_id)
        async with self._lock(upload_id):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            except FileNotFoundError:
                raise UploadMissing(upload_id) from None
            hasher: Hasher | None = None
            try:
                # Other processes (workers, replicas on a shared directory) may
                # append to the same upload: the offset check and the append hold
                # the file's lock, as they hold the in-process lock above.
                await self._flock(fd)
                start = os.fstat(fd).st_size
                if offset is not None and offset != start:
                    raise OffsetMismatch(start)
                hasher = (await self._running_hash(upload_id, path, start)).copy()
                written = await _pipelined_write(fd, hasher, chunks, expected_length, self._io)
            except BaseException as exc:
                if hasher is not None and expected_length is None and not isinstance(exc, OSError):
                    # A streamed body cut short (client gone, server stopping) keeps
                    # the prefix that arrived: every byte of it is valid, and the
                    # client resumes from the offset the status reports.
                    self._hashers[upload_id] = (hasher, os.fstat(fd).st_size)
                else:
                    # A sized chunk is all or nothing: the upload stays as it was.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                raise
            finally:
                os.close(fd)
            self._hashers[upload_id] = (hasher, start + written)
            return start + written

    async def _flock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await self._off_loop(fcntl.flock, fd, fcntl.LOCK_EX)

    async def commit(self, upload_id: str, digest: Digest) -> int:
        path = self._upload_path(upload_id)
        async with self._lock(upload_id):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise UploadMissing(upload_id) from None
            try:
                await self._flock(fd)  # no append of another process under the hash
                size = os.fstat(fd).st_size
                if digest.algorithm == _STAGING_ALGORITHM:
                    actual = (await self._running_hash(upload_id, path, size)).hexdigest()
                else:
                    hashed = await self._off_loop(_hash_file, path, digest.algorithm)
                    actual = hashed[0].hexdigest()
                if actual != digest.hex:
                    raise DigestMismatch(f"content hashes to {digest.algorithm}:{actual}")
                if not os.path.exists(path):  # committed meanwhile by another process
                    raise UploadMissing(upload_id)
                await self._off_loop(self._publish, path, digest)
            finally:
                os.close(fd)
        self._forget(upload_id)
        return size

    def _publish(self, staged: Path, digest: Digest) -> None:
        target = self._blob_path(digest)
        fd = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if target.exists():
            staged.unlink()
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)
        _fsync_dir(target.parent)

    def discard_upload(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, UploadMissing):
            self._upload_path(upload_id).unlink()
        self._forget(upload_id)

    def _forget(self, upload_id: str) -> None:
        self._hashers.pop(upload_id, None)
        lock = self._locks.get(upload_id)
        if lock is not None and not lock.locked():
            del self._locks[upload_id]

    def iter_uploads(self) -> Iterator[str]:
        for path in self.uploads.iterdir():
            if _UPLOAD_ID.match(path.name):
                yield path.name
