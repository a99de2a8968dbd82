"""S3 driver: blobs at ``<prefix>blobs/<alg>/<xx>/<hex>``, uploads staged
under ``<prefix>uploads/<id>/``.

An upload streams into one S3 multipart upload (``uploads/<id>/data``),
hashed as it goes. Parts must be at least 5 MiB (but the last), so the bytes
of an append that do not fill a part wait in a small staging object
(``uploads/<id>/tail-<random>``) that the next append reads back and
continues. Which parts (number, ETag, size), which tail and which offset
make up the upload is the ledger's JSON state, saved by one conditional
update at the end of each append: of two appends at one offset the second
to save loses and drops what it wrote. Part numbers come from the ledger, so
a loser's parts never overwrite a winner's; a part nobody lists is discarded
when the upload completes.

A commit verifies the digest first when this process hashed every byte (its
running hash is valid for the ledger's version); otherwise it completes the
multipart upload and hashes the object by reading it back. Only a verified
object is copied to the blob's key, so no partial or unverified blob is ever
visible. A monolithic upload, whose digest comes first, goes straight to the
blob's key as its own multipart upload and is completed only once verified."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from moorage.oci.digest import HEX_LENGTHS, Digest, DigestError, Hasher, new_hasher
from moorage.storage.base import (
    BeforePublish,
    BlobMissing,
    BlobSource,
    ByteStream,
    Committed,
    DigestMismatch,
    OffsetMismatch,
    Redirect,
    StorageError,
    StoreHealth,
    SweepReport,
    TruncatedBody,
    UploadLedger,
    UploadMissing,
    UploadRecord,
    UploadTooLarge,
)
from moorage.storage.common import (
    STAGING_ALGORITHM,
    UPLOAD_ID,
    Settler,
    UploadMemory,
    body_of,
    check_upload_id,
    is_cut,
    unwrap,
)
from moorage.storage.s3bucket import S3Bucket, S3Error

log = logging.getLogger("moorage.storage.s3")

MIN_PART = 5 * 1024 * 1024  # S3's smallest part but the last
MAX_PARTS = 10_000  # S3's most parts in one upload
MAX_COPY = 5 * 1024 * 1024 * 1024  # S3's largest single CopyObject
_READ_BLOCK = 1 << 20
# How long a failed S3 request keeps /health at 503 unless one succeeds.
HEALTH_WINDOW = 30.0
_HASH_BLOCK = 4 << 20


@dataclass
class _State:
    """What the ledger keeps of one upload: the multipart upload and its parts
    (number, ETag, size) in order, the tail object holding the bytes after
    them, and whether a commit already completed the parts into one object."""

    mpu: str | None = None
    parts: list[tuple[int, str, int]] = field(default_factory=list)
    tail: str | None = None
    tail_size: int = 0
    assembled: bool = False

    @classmethod
    def parse(cls, text: str | None) -> _State:
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(
            raw.get("mpu"),
            [(int(n), str(e), int(s)) for n, e, s in raw.get("parts", [])],
            raw.get("tail"),
            int(raw.get("tail_size", 0)),
            bool(raw.get("assembled", False)),
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "mpu": self.mpu,
                "parts": self.parts,
                "tail": self.tail,
                "tail_size": self.tail_size,
                "assembled": self.assembled,
            },
            separators=(",", ":"),
        )


class _Numbers:
    """Part numbers this append may use, reserved from the ledger: as many as
    a sized body needs, else 1, 2, 4, ... up to 64 at a time, so an append
    that loses or ends early wastes few of an upload's 10,000."""

    def __init__(self, ledger: UploadLedger, upload_id: str) -> None:
        self.ledger, self.upload_id = ledger, upload_id
        self.free: list[int] = []
        self.batch = 1

    async def take(self, needed: int | None) -> int:
        if not self.free:
            count = needed if needed is not None else self.batch
            self.batch = min(self.batch * 2, 64)
            first = await self.ledger.reserve(self.upload_id, count)
            if first is None:
                raise UploadMissing(self.upload_id)
            if first + count - 1 > MAX_PARTS:
                raise UploadTooLarge(
                    f"the upload needs more than {MAX_PARTS} parts; raise storage.s3 part_size"
                )
            self.free = list(range(first, first + count))
        return self.free.pop(0)


class _PartWriter:
    """Streams bytes into parts of one multipart upload: while one part is
    hashed and sent, the next fills. ``skip`` leading bytes of the buffer
    (a tail read back) are already hashed."""

    def __init__(
        self,
        store: S3BlobStore,
        key: str,
        mpu: str | None,
        numbers: _Numbers | None,
        hasher: Hasher | None,
        buffer: bytes = b"",
    ) -> None:
        self.store = store
        self.key = key
        self.mpu = mpu
        self.created_mpu = False
        self.numbers = numbers
        self.hasher = hasher
        self.buffer = bytearray(buffer)
        self.skip = len(buffer)
        self.parts: list[tuple[int, str, int]] = []
        self.received = 0
        self.parts_needed: int | None = None  # known for a sized body
        self._next_private = 1
        self._inflight: asyncio.Task[None] | None = None

    async def _number(self) -> int:
        if self.numbers is None:  # a private upload: nobody else uses its numbers
            number = self._next_private
            if number > MAX_PARTS:
                raise UploadTooLarge(f"the blob needs more than {MAX_PARTS} parts")
            self._next_private += 1
            return number
        needed, self.parts_needed = self.parts_needed, None  # a hint for the first reservation
        return await self.numbers.take(needed)

    async def _ship(self, mpu: str, number: int, part: bytes, hash_from: int) -> None:
        upload = self.store.bucket.upload_part(self.key, mpu, number, part)
        if self.hasher is not None and hash_from < len(part):
            hashing = self.store.hash_in_thread(self.hasher, memoryview(part)[hash_from:])
            etag, _ = await asyncio.gather(upload, hashing)
        else:
            etag = await upload
        self.parts.append((number, etag, len(part)))

    async def wait(self) -> None:
        """Until the part in flight is stored (raising what it raised). The
        part is not cancelled with the request: a cut stream keeps it."""
        task = self._inflight
        if task is None:
            return
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._inflight = None

    async def send(self, size: int) -> None:
        """Cut ``size`` bytes off the buffer into the next part and start
        sending it once the part before it is stored. The bytes leave the
        buffer only when their part is on its way, so a cancellation in
        between loses nothing."""
        number = await self._number()
        await self.wait()
        if self.mpu is None:
            self.mpu = await self.store.bucket.create_multipart_upload(self.key)
            self.created_mpu = True
        part = bytes(self.buffer[:size])
        del self.buffer[:size]
        hash_from, self.skip = self.skip, max(0, self.skip - size)
        self._inflight = asyncio.ensure_future(self._ship(self.mpu, number, part, hash_from))

    async def consume(self, chunks: AsyncIterable[bytes], expected: int | None) -> None:
        part_size = self.store.part_size
        if expected is not None:
            self.parts_needed = (len(self.buffer) + expected) // part_size + 1
        async for chunk in body_of(chunks):
            self.received += len(chunk)
            if expected is not None and self.received > expected:
                break
            self.buffer += chunk
            while len(self.buffer) >= part_size:
                await self.send(part_size)
        await self.wait()
        if expected is not None and self.received != expected:
            raise TruncatedBody(f"body had {self.received} bytes where {expected} were announced")

    async def hash_rest(self) -> None:
        """Bring the running hash up to the end of the buffer."""
        if self.hasher is not None and self.skip < len(self.buffer):
            await self.store.hash_in_thread(
                self.hasher, memoryview(bytes(self.buffer))[self.skip :]
            )
            self.skip = len(self.buffer)

    async def abort(self) -> None:
        """Undo what this writer created that nobody will reference."""
        with contextlib.suppress(Exception):
            await self.wait()
        if self.created_mpu and self.mpu is not None:
            with contextlib.suppress(StorageError):
                await self.store.bucket.abort_multipart_upload(self.key, self.mpu)


class S3BlobStore:
    def __init__(
        self,
        bucket: S3Bucket,
        ledger: UploadLedger,
        prefix: str = "",
        part_size: int = 10 * 1024 * 1024,
        redirect: bool = False,
        redirect_expiry: int = 1200,
        copy_limit: int = MAX_COPY,
        hash_threads: int = 2,
    ) -> None:
        if part_size < MIN_PART:
            raise ValueError("part_size must be at least 5 MiB")
        self.bucket = bucket
        self.ledger = ledger
        self.prefix = prefix
        self.part_size = part_size
        self.redirect = redirect
        self.redirect_expiry = redirect_expiry
        # Objects larger than this are copied part by part (UploadPartCopy).
        self.copy_limit = copy_limit
        # Running hash of each upload this process appended to, with the ledger
        # version it is valid at.
        self._uploads = UploadMemory()
        self._settler = Settler()
        self._hash_pool = ThreadPoolExecutor(hash_threads, thread_name_prefix="s3-hash")

    async def hash_in_thread(self, hasher: Hasher, data: memoryview) -> None:
        await asyncio.get_running_loop().run_in_executor(self._hash_pool, hasher.update, data)

    # -- keys --------------------------------------------------------------

    def _blob_key(self, digest: Digest) -> str:
        return f"{self.prefix}blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    def _staging(self, upload_id: str) -> str:
        return f"{self.prefix}uploads/{check_upload_id(upload_id)}/"

    def _data_key(self, upload_id: str) -> str:
        return self._staging(upload_id) + "data"

    def _tail_key(self, upload_id: str) -> str:
        return self._staging(upload_id) + f"tail-{_token()}"

    # -- blobs -------------------------------------------------------------

    async def stat(self, digest: Digest) -> int | None:
        info = await self.bucket.head_object(self._blob_key(digest))
        return None if info is None else info.size

    async def open(self, digest: Digest, redirect: bool = True) -> BlobSource | None:
        key = self._blob_key(digest)
        info = await self.bucket.head_object(key)
        if info is None:
            return None
        if self.redirect and redirect:
            return Redirect(self.bucket.presign_get(key, self.redirect_expiry), info.size)

        def read(offset: int, length: int) -> AsyncGenerator[bytes, None]:
            return self.read(digest, offset, length)

        return ByteStream(info.size, read)

    async def read(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        end = None if length is None else offset + length - 1
        if length == 0:
            return
        try:
            blocks = self.bucket.get_object(self._blob_key(digest), offset, end, _READ_BLOCK)
            async with contextlib.aclosing(blocks):
                async for block in blocks:
                    yield block
        except S3Error as exc:
            if exc.status == 404:
                raise BlobMissing(str(digest)) from None
            raise

    async def read_small(self, digest: Digest, limit: int) -> bytes | None:
        key = self._blob_key(digest)
        info = await self.bucket.head_object(key)
        if info is None or info.size > limit:
            return None
        if info.size == 0:
            return b""
        try:
            return await self.bucket.get_bytes(key)
        except S3Error as exc:
            if exc.status == 404:
                return None
            raise

    async def put(
        self,
        digest: Digest,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        before_publish: BeforePublish | None = None,
    ) -> int:
        key = self._blob_key(digest)
        hasher = new_hasher(digest.algorithm)
        if await self.bucket.head_object(key) is not None:
            # Already stored: check the bytes are that blob, keep the copy there is.
            received = await self._hash_body(hasher, chunks, expected_length)
            _check_digest(hasher, digest)
            if before_publish is not None:
                await before_publish()
                # The copy seen before the body was read may have been
                # collected since; the body is gone, so the client sends it again.
                if await self.bucket.head_object(key) is None:
                    raise StorageError("the stored copy went away during the upload: upload again")
            return received
        writer = _PartWriter(self, key, None, None, hasher)
        completed = False
        try:
            try:
                await writer.consume(chunks, expected_length)
            except BaseException as exc:
                raise unwrap(exc) from None
            await writer.hash_rest()
            _check_digest(hasher, digest)
            if before_publish is not None:
                await before_publish()
            if writer.mpu is None:
                await self.bucket.put_object(key, bytes(writer.buffer))
            else:
                if writer.buffer or not writer.parts:
                    await writer.send(len(writer.buffer))
                    await writer.wait()
                await self.bucket.complete_multipart_upload(
                    key, writer.mpu, [(n, e) for n, e, _ in writer.parts]
                )
            completed = True
            return writer.received
        finally:
            if not completed:
                await self._settler.settle(writer.abort())

    async def _hash_body(
        self, hasher: Hasher, chunks: AsyncIterable[bytes], expected: int | None
    ) -> int:
        received = 0
        block = bytearray()
        try:
            async for chunk in body_of(chunks):
                received += len(chunk)
                if expected is not None and received > expected:
                    break
                block += chunk
                if len(block) >= _HASH_BLOCK:
                    await self.hash_in_thread(hasher, memoryview(block))
                    block = bytearray()
        except BaseException as exc:
            raise unwrap(exc) from None
        if expected is not None and received != expected:
            raise TruncatedBody(f"body had {received} bytes where {expected} were announced")
        await self.hash_in_thread(hasher, memoryview(block))
        return received

    async def delete(self, digest: Digest) -> None:
        await self.bucket.delete_object(self._blob_key(digest))

    async def walk(self) -> AsyncIterator[tuple[Digest, int]]:
        root = f"{self.prefix}blobs/"
        async for item in self.bucket.list_objects(root):
            parts = item.key[len(root) :].split("/")
            if len(parts) != 3:
                continue
            algorithm, shard, hex_ = parts
            if HEX_LENGTHS.get(algorithm) != len(hex_) or shard != hex_[:2]:
                continue
            try:
                yield Digest(algorithm, hex_), item.size
            except DigestError:
                continue

    # -- uploads -----------------------------------------------------------

    def _lock(self, upload_id: str) -> asyncio.Lock:
        return self._uploads.lock(upload_id)

    async def _load(self, upload_id: str) -> tuple[UploadRecord, _State]:
        check_upload_id(upload_id)
        record = await self.ledger.load(upload_id)
        if record is None:
            raise UploadMissing(upload_id)
        return record, _State.parse(record.state)

    def _cached_hasher(self, upload_id: str, record: UploadRecord) -> Hasher | None:
        cached = self._uploads.hasher(upload_id, record.version)
        return None if cached is None else cached.copy()

    async def create_upload(self, upload_id: str) -> None:
        # Nothing to stage before the first byte; the ledger row starts empty.
        check_upload_id(upload_id)
        self._uploads.start(upload_id)

    async def _writer_at(
        self, upload_id: str, record: UploadRecord, state: _State, offset: int | None
    ) -> _PartWriter:
        """A writer continuing the upload where it stands, refusing (before any
        byte is read) an upload being committed or a chunk not at its offset."""
        if state.assembled:
            raise UploadMissing(f"{upload_id} is being committed")
        if offset is not None and offset != record.offset:
            raise OffsetMismatch(record.offset)
        return _PartWriter(
            self,
            self._data_key(upload_id),
            state.mpu,
            _Numbers(self.ledger, upload_id),
            self._cached_hasher(upload_id, record),
            await self._read_tail(upload_id, state, record),
        )

    async def _read_tail(self, upload_id: str, state: _State, record: UploadRecord) -> bytes:
        if state.tail is None:
            return b""
        try:
            return await self.bucket.get_bytes(state.tail)
        except S3Error as exc:
            if exc.status != 404:
                raise
        # The tail went with a newer append that won: this one is behind.
        current = await self.ledger.load(upload_id)
        if current is None:
            raise UploadMissing(upload_id)
        if current.version != record.version:
            raise OffsetMismatch(current.offset)
        raise StorageError(f"the staged tail of upload {upload_id} is missing")

    async def append(
        self,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        offset: int | None = None,
    ) -> int:
        async with self._lock(upload_id):
            record, state = await self._load(upload_id)
            writer = await self._writer_at(upload_id, record, state, offset)
            try:
                await writer.consume(chunks, expected_length)
            except BaseException as exc:
                if is_cut(exc) and expected_length is None and writer.received:
                    # A streamed body cut short keeps the prefix that arrived.
                    await self._settler.settle(self._save(upload_id, record, state, writer))
                else:
                    await self._settler.settle(writer.abort())
                if exc is not unwrap(exc):
                    raise unwrap(exc) from None
                raise
            # The body is in: saving runs to its end even if the request is
            # cancelled meanwhile, under this lock.
            return int(
                await self._settler.settle(self._save(upload_id, record, state, writer), True)
            )

    async def _save(
        self, upload_id: str, record: UploadRecord, state: _State, writer: _PartWriter
    ) -> int:
        """Stage what is left in the writer's buffer (a part when it can be
        one, else a new tail object) and save the new state; the loser of a
        race undoes its writes and learns the offset the winner reached."""
        new_tail: str | None = None
        try:
            await writer.wait()
            await writer.hash_rest()
            rest = bytes(writer.buffer)
            if len(rest) >= MIN_PART:
                await writer.send(len(rest))
                await writer.wait()
            elif rest:
                new_tail = self._tail_key(upload_id)
                await self.bucket.put_object(new_tail, rest)
                # An abandoned tail is an object under uploads/<id>/: discard and
                # sweep remove it with the rest.
        except BaseException:
            await writer.abort()
            if new_tail:
                with contextlib.suppress(StorageError):
                    await self.bucket.delete_object(new_tail)
            raise
        end = record.offset + writer.received
        saved_state = _State(
            writer.mpu,
            state.parts + writer.parts,
            new_tail,
            len(rest) if new_tail else 0,
        )
        if not await self.ledger.save(upload_id, record.version, end, saved_state.dump()):
            await writer.abort()
            if new_tail:
                with contextlib.suppress(StorageError):
                    await self.bucket.delete_object(new_tail)
            current = await self.ledger.load(upload_id)
            if current is None:
                raise UploadMissing(upload_id)
            raise OffsetMismatch(current.offset)
        self._uploads.saved(upload_id, writer.hasher, record.version + 1)
        if state.tail:
            with contextlib.suppress(StorageError):
                await self.bucket.delete_object(state.tail)
        return end

    async def commit(
        self,
        upload_id: str,
        digest: Digest,
        before_publish: BeforePublish | None = None,
        chunks: AsyncIterable[bytes] | None = None,
        expected_length: int | None = None,
        offset: int | None = None,
    ) -> Committed:
        """A last chunk is checked before it is saved when this process holds
        the running hash; otherwise it is saved, and a refused commit sets the
        upload back to the offset it had (see :meth:`_rewind`)."""
        async with self._lock(upload_id):
            record, state = await self._load(upload_id)
            keep = record.offset
            if chunks is not None:
                record, state = await self._last_chunk(
                    upload_id, record, state, digest, chunks, expected_length, offset
                )
            try:
                return await self._commit(upload_id, record, state, digest, before_publish)
            except DigestMismatch:
                await self._settler.settle(self._rewind(upload_id, keep))
                raise

    async def _last_chunk(
        self,
        upload_id: str,
        record: UploadRecord,
        state: _State,
        digest: Digest,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        offset: int | None,
    ) -> tuple[UploadRecord, _State]:
        """Stage a PUT's body as an append that saves only once the whole
        upload is known to match (when it can be known here), and whole or
        not at all: a cut body keeps nothing."""
        writer = await self._writer_at(upload_id, record, state, offset)
        try:
            await writer.consume(chunks, expected_length)
            if writer.hasher is not None and digest.algorithm == STAGING_ALGORITHM:
                await writer.hash_rest()
                _check_digest(writer.hasher.copy(), digest)
        except BaseException as exc:
            await self._settler.settle(writer.abort())
            if exc is not unwrap(exc):
                raise unwrap(exc) from None
            raise
        await self._settler.settle(self._save(upload_id, record, state, writer), True)
        return await self._load(upload_id)

    async def _commit(
        self,
        upload_id: str,
        record: UploadRecord,
        state: _State,
        digest: Digest,
        before_publish: BeforePublish | None,
    ) -> Committed:
        hasher = None
        if digest.algorithm == STAGING_ALGORITHM:
            hasher = self._cached_hasher(upload_id, record)
        if hasher is not None:
            # Every byte went through this process: check before assembling.
            _check_digest(hasher, digest)
        target = self._blob_key(digest)
        if not state.parts and not state.assembled:
            # Less than one part in all: the tail alone is the blob.
            data = await self._read_tail(upload_id, state, record)
            if hasher is None:
                hasher = new_hasher(digest.algorithm)
                await self.hash_in_thread(hasher, memoryview(data))
                _check_digest(hasher, digest)
            if before_publish is not None:
                await before_publish()
            if await self.bucket.head_object(target) is None:
                await self.bucket.put_object(target, data)
            self._forget(upload_id)
            return Committed(len(data), record.version)
        data_key = self._data_key(upload_id)
        version = record.version
        if not state.assembled:
            await self._assemble(upload_id, record, state, data_key)
            version += 1
        if hasher is None:
            await self._hash_object(data_key, digest)
        if before_publish is not None:
            await before_publish()
        existing = await self.bucket.head_object(target)
        if existing is None:
            await self._copy(data_key, target, record.offset)
        self._forget(upload_id)
        return Committed(record.offset, version)

    async def _rewind(self, upload_id: str, keep: int) -> None:
        """After a refused commit: make the upload take appends again at
        ``keep`` bytes, the offset it had before the request. Its bytes are
        in a tail, or (assembled to be hashed) in the data object; a new
        multipart upload is made of copies of the first ``keep`` bytes, cut
        at the part size, and the rest becomes a new tail. Costs a server-side
        copy, paid only by a refused commit this process could not check
        before assembling."""
        record, state = await self._load(upload_id)
        if not state.assembled and record.offset == keep:
            return  # refused before anything was saved or assembled
        if state.assembled:
            source = self._data_key(upload_id)
        elif state.tail is not None:
            source = state.tail
        else:  # pragma: no cover - an upload of parts is assembled before it is hashed
            raise StorageError(f"upload {upload_id} cannot be set back to offset {keep}")
        whole = keep // self.part_size * self.part_size if state.assembled else 0
        key = self._data_key(upload_id)
        mpu: str | None = None
        parts: list[tuple[int, str, int]] = []
        tail: str | None = None
        try:
            if whole:
                mpu = await self.bucket.create_multipart_upload(key)
                numbers = _Numbers(self.ledger, upload_id)
                count = whole // self.part_size
                for start in range(0, whole, self.part_size):
                    number = await numbers.take(count)
                    end = start + self.part_size - 1
                    etag = await self.bucket.upload_part_copy(key, mpu, number, source, start, end)
                    parts.append((number, etag, self.part_size))
            if keep > whole:
                tail = self._tail_key(upload_id)
                await self.bucket.put_object(
                    tail, await self.bucket.get_bytes(source, whole, keep - 1)
                )
            rewound = _State(mpu, parts, tail, keep - whole if tail else 0)
            if not await self.ledger.save(upload_id, record.version, keep, rewound.dump()):
                raise UploadMissing(f"{upload_id} changed while it was being set back")
        except BaseException as exc:
            log.warning("upload %s could not be set back to offset %d: %s", upload_id, keep, exc)
            if mpu is not None:
                with contextlib.suppress(StorageError):
                    await self.bucket.abort_multipart_upload(key, mpu)
            if tail is not None:
                with contextlib.suppress(StorageError):
                    await self.bucket.delete_object(tail)
            raise
        self._uploads.saved(upload_id, None, record.version + 1)
        if state.tail:
            with contextlib.suppress(StorageError):
                await self.bucket.delete_object(state.tail)

    async def _assemble(
        self, upload_id: str, record: UploadRecord, state: _State, data_key: str
    ) -> None:
        """Complete the parts, the tail as the last of them, into one object
        under uploads/, and note it in the ledger so a retried commit (on any
        replica) goes on from there."""
        assert state.mpu is not None
        parts = [(n, e) for n, e, _ in state.parts]
        if state.tail:
            data = await self._read_tail(upload_id, state, record)
            number = await _Numbers(self.ledger, upload_id).take(1)
            parts.append((number, await self.bucket.upload_part(data_key, state.mpu, number, data)))
        await self.bucket.complete_multipart_upload(data_key, state.mpu, parts)
        assembled = _State(assembled=True)
        if not await self.ledger.save(upload_id, record.version, record.offset, assembled.dump()):
            raise UploadMissing(f"{upload_id} changed while it was being committed")

    async def _hash_object(self, key: str, digest: Digest) -> None:
        """Read an object back and check it hashes to ``digest``."""
        hasher = new_hasher(digest.algorithm)
        pending: asyncio.Future[None] | None = None
        block = bytearray()
        chunks = self.bucket.get_object(key, piece=_READ_BLOCK)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                block += chunk
                if len(block) >= _HASH_BLOCK:
                    if pending is not None:
                        await pending
                    pending = asyncio.ensure_future(self.hash_in_thread(hasher, memoryview(block)))
                    block = bytearray()
        if pending is not None:
            await pending
        await self.hash_in_thread(hasher, memoryview(block))
        _check_digest(hasher, digest)

    async def _copy(self, source: str, target: str, size: int) -> None:
        """A server-side copy; part by part above the single-copy limit."""
        if size <= self.copy_limit:
            await self.bucket.copy_object(source, target)
            return
        mpu = await self.bucket.create_multipart_upload(target)
        try:
            parts = []
            step = max(self.copy_limit, MIN_PART)
            for number, start in enumerate(range(0, size, step), 1):
                end = min(start + step, size) - 1
                etag = await self.bucket.upload_part_copy(target, mpu, number, source, start, end)
                parts.append((number, etag))
            await self.bucket.complete_multipart_upload(target, mpu, parts)
        except BaseException:
            with contextlib.suppress(StorageError):
                await self.bucket.abort_multipart_upload(target, mpu)
            raise

    async def discard_upload(self, upload_id: str) -> None:
        """Everything under the upload's staging prefix: its multipart uploads
        (the winner's and any loser's) and its objects. Found by listing, so it
        works after the ledger row is gone."""
        try:
            staging = self._staging(upload_id)
        except UploadMissing:
            return
        async for mpu in self.bucket.list_multipart_uploads(staging):
            await self.bucket.abort_multipart_upload(mpu.key, mpu.upload_id)
        async for item in self.bucket.list_objects(staging):
            await self.bucket.delete_object(item.key)
        self._forget(upload_id)

    def _forget(self, upload_id: str) -> None:
        self._uploads.forget(upload_id)

    async def sweep(
        self, live: Collection[str], older_than: datetime, dry_run: bool = False
    ) -> SweepReport:
        report = SweepReport()
        root = f"{self.prefix}uploads/"
        async for item in self.bucket.list_objects(root):
            upload_id = item.key[len(root) :].split("/", 1)[0]
            if UPLOAD_ID.match(upload_id) and upload_id in live:
                continue
            if item.modified is None or item.modified >= older_than:
                continue
            if not dry_run:
                await self.bucket.delete_object(item.key)
            report.removed.append(item.key)
            report.freed_bytes += item.size
        # Multipart uploads no session will complete: staging ones, and
        # monolithic uploads straight to a blob's key that never finished.
        for prefix in (root, f"{self.prefix}blobs/"):
            async for mpu in self.bucket.list_multipart_uploads(prefix):
                upload_id = mpu.key[len(root) :].split("/", 1)[0] if prefix == root else ""
                if upload_id in live:
                    continue
                if mpu.initiated is None or mpu.initiated >= older_than:
                    continue
                if not dry_run:
                    await self.bucket.abort_multipart_upload(mpu.key, mpu.upload_id)
                report.removed.append(f"{mpu.key} (multipart upload)")
        return report

    # -- the store itself --------------------------------------------------

    def health(self) -> StoreHealth:
        error = self.bucket.recent_error(HEALTH_WINDOW)
        return StoreHealth(
            error is None,
            {
                "storage": "ok" if error is None else f"error: {error}",
                "storage_driver": "s3",
            },
        )

    async def check(self) -> None:
        try:
            await self.bucket.head_bucket()
        except S3Error as exc:
            raise StorageError(
                f"S3 bucket {self.bucket.name!r} at {self.bucket.endpoint}: {exc}"
            ) from None

    async def close(self) -> None:
        await self._settler.drain()
        await self.bucket.close()
        self._hash_pool.shutdown(wait=False)


def _check_digest(hasher: Hasher, digest: Digest) -> None:
    actual = hasher.hexdigest()
    if actual != digest.hex:
        raise DigestMismatch(f"content hashes to {digest.algorithm}:{actual}")


def _token() -> str:
    return uuid.uuid4().hex
