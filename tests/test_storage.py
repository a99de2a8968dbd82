"""One conformance suite for every blob store driver (storage/base.py's
contracts), run on the filesystem driver and on the S3 driver against a real
SeaweedFS. Every test builds stores over one real metadata database (SQLite)
and one backend; a second store instance is a second replica."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from moorage.metadata import (
    DatabaseThreads,
    MetadataStore,
    RepoRef,
    create_metadata_engine,
    sqlite_url,
    upgrade,
)
from moorage.metadata.models import Upload
from moorage.oci.digest import Digest, parse_digest
from moorage.registry.blobs import MetadataLedger
from moorage.storage import (
    BlobStore,
    ByteStream,
    DigestMismatch,
    FilesystemBlobStore,
    LocalFile,
    OffsetMismatch,
    Redirect,
    TruncatedBody,
    UploadMissing,
)
from moorage.storage.s3 import MIN_PART, S3BlobStore
from tests.seaweed import SeaweedFS, shared_seaweed

MIB = 1 << 20
PART = MIN_PART  # the smallest part S3 allows, so multipart paths run on small blobs
ROOT = Path(__file__).resolve().parents[1]


def sha256(data: bytes) -> Digest:
    return parse_digest("sha256:" + hashlib.sha256(data).hexdigest())


async def body(data: bytes, piece: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]
        await asyncio.sleep(0)


class BodyCut(Exception):
    """What a request body raises when its client goes away."""


async def cut_body(data: bytes, after: int) -> AsyncIterator[bytes]:
    async for chunk in body(data[:after]):
        yield chunk
    raise BodyCut()


@dataclass
class Backend:
    """One backend (a directory, or a bucket) and one database; ``store()``
    makes another replica over them. The ledger's database calls run on
    threads of their own, as in the server (their pool ends with the backend)."""

    driver: str
    tmp: Path
    metadata: MetadataStore
    seaweed: SeaweedFS | None = None
    bucket: str | None = None
    db: DatabaseThreads = field(default_factory=lambda: DatabaseThreads(2))

    def store(self, **options: Any) -> BlobStore:
        ledger = MetadataLedger(self.metadata, self.db)
        if self.driver == "filesystem":
            return FilesystemBlobStore(self.tmp / "blobs", ledger)
        assert self.seaweed is not None and self.bucket is not None
        return S3BlobStore(self.seaweed.client(self.bucket), ledger, part_size=PART, **options)

    def session(self, upload_id: str) -> None:
        self.metadata.create_upload(upload_id, RepoRef("global", "test/repo"), None)

    def offset(self, upload_id: str) -> int | None:
        row = self.metadata.upload_progress(upload_id)
        return None if row is None else row[0]

    def version(self, upload_id: str) -> int | None:
        row = self.metadata.upload_progress(upload_id)
        return None if row is None else row[1]

    def staged(self) -> set[str]:
        """Keys or files of staged upload bytes, whatever the driver."""
        if self.driver == "filesystem":
            return {p.name for p in (self.tmp / "blobs" / "uploads").iterdir()}
        assert self.seaweed is not None and self.bucket is not None
        return set(self.seaweed.keys(self.bucket, "uploads/")) | set(
            self.seaweed.multipart_keys(self.bucket)
        )

    def env(self) -> dict[str, str]:
        """For a child process that opens the same backend."""
        values = {
            "DRIVER": self.driver,
            "TMP": str(self.tmp),
            "DB": sqlite_url(self.tmp),
        }
        if self.seaweed is not None and self.bucket is not None:
            values.update(ENDPOINT=self.seaweed.endpoint, BUCKET=self.bucket)
        return values


def make_backend(driver: str, tmp_path: Path) -> Backend:
    engine = create_metadata_engine(sqlite_url(tmp_path))
    upgrade(engine)
    if driver == "s3":
        seaweed = shared_seaweed()
        return Backend(driver, tmp_path, MetadataStore(engine), seaweed, seaweed.new_bucket())
    return Backend(driver, tmp_path, MetadataStore(engine))


@pytest.fixture(params=["filesystem", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, tmp_path)


def run(backend: Backend, scenario: Callable[..., Awaitable[None]], replicas: int = 1) -> None:
    """Run ``scenario(*stores)`` with ``replicas`` store instances over the
    backend, in one event loop, closing them after."""

    async def main() -> None:
        stores = [backend.store() for _ in range(replicas)]
        try:
            await scenario(*stores)
        finally:
            for store in stores:
                await store.close()

    asyncio.run(main())


async def read_all(
    store: BlobStore, digest: Digest, offset: int = 0, length: int | None = None
) -> bytes:
    return b"".join([chunk async for chunk in store.read(digest, offset, length)])


async def walked(store: BlobStore) -> dict[str, int]:
    return {str(d): size async for d, size in store.walk()}


def new_id() -> str:
    return os.urandom(16).hex()


# -- committed blobs ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1000, PART + 3 * MIB, 2 * PART + 1])
def test_put_then_read_whole_ranges_and_small(backend: Backend, size: int) -> None:
    data = os.urandom(size)
    digest = sha256(data)

    async def scenario(store: BlobStore) -> None:
        assert await store.stat(digest) is None and await store.open(digest) is None
        assert await store.put(digest, body(data), len(data)) == size
        assert await store.stat(digest) == size
        assert await read_all(store, digest) == data
        if size:
            middle = size // 2
            assert (
                await read_all(store, digest, middle, min(10, size - middle))
                == data[middle : middle + 10]
            )
            assert await read_all(store, digest, size - 1, 1) == data[-1:]
        small = await store.read_small(digest, max(size, 1))
        assert small == data
        if size:
            assert await store.read_small(digest, size - 1) is None
        assert await walked(store) == {str(digest): size}
        source = await store.open(digest)
        assert source is not None and source.size == size
        if backend.driver == "filesystem":
            assert isinstance(source, LocalFile) and Path(source.path).read_bytes() == data
        else:
            assert isinstance(source, ByteStream)
            assert b"".join([c async for c in source.read(0, size)]) == data
        await store.delete(digest)
        assert await store.stat(digest) is None and await walked(store) == {}
        await store.delete(digest)  # deleting what is gone succeeds

    run(backend, scenario)


def test_put_with_a_wrong_digest_or_length_keeps_nothing(backend: Backend) -> None:
    data = os.urandom(PART + MIB)
    wrong = sha256(b"other bytes")

    async def scenario(store: BlobStore) -> None:
        with pytest.raises(DigestMismatch):
            await store.put(wrong, body(data), len(data))
        with pytest.raises(TruncatedBody):
            await store.put(sha256(data), body(data[:-1]), len(data))
        with pytest.raises(TruncatedBody):
            await store.put(sha256(data[:-1]), body(data), len(data) - 1)
        assert await store.stat(wrong) is None and await store.stat(sha256(data)) is None
        assert await walked(store) == {}
        # The same content twice keeps one copy.
        digest = sha256(data)
        await store.put(digest, body(data), None)
        await store.put(digest, body(data), len(data))
        assert await walked(store) == {str(digest): len(data)}

    run(backend, scenario)
    assert backend.staged() == set()


def test_concurrent_puts_of_one_blob_keep_one_copy(backend: Backend) -> None:
    data = os.urandom(PART + 2 * MIB)
    digest = sha256(data)

    async def scenario(one: BlobStore, two: BlobStore) -> None:
        sizes = await asyncio.gather(
            *(s.put(digest, body(data), len(data)) for s in (one, two, one, two))
        )
        assert sizes == [len(data)] * 4
        assert await walked(one) == {str(digest): len(data)}
        assert await read_all(two, digest) == data

    run(backend, scenario, replicas=2)


# -- uploads -----------------------------------------------------------------------


async def append(
    store: BlobStore, upload_id: str, data: bytes, offset: int | None, sized: bool = True
) -> int:
    return await store.append(upload_id, body(data), len(data) if sized else None, offset)


@pytest.mark.parametrize(
    "chunks",
    [
        [1000, 2000, 3],  # all below a part: tails only
        [PART + 1, 7, 3 * MIB, 2 * MIB + 5],  # parts and tails mixed
        [2 * PART + 3 * MIB],  # one body, several parts
    ],
    ids=["small", "mixed", "one-body"],
)
def test_append_in_chunks_then_commit(backend: Backend, chunks: list[int]) -> None:
    data = os.urandom(sum(chunks))
    digest = sha256(data)
    upload_id = new_id()

    async def scenario(store: BlobStore) -> None:
        await store.create_upload(upload_id)
        backend.session(upload_id)
        offset = 0
        for i, size in enumerate(chunks):
            piece = data[offset : offset + size]
            # Alternate sized and streamed bodies, with and without a claimed offset.
            claimed = offset if i % 2 == 0 else None
            offset = await append(store, upload_id, piece, claimed, sized=i % 3 != 1)
            assert backend.offset(upload_id) == offset
        assert await store.stat(digest) is None, "visible before commit"
        assert (await store.commit(upload_id, digest)).size == len(data)
        assert await read_all(store, digest) == data
        await store.discard_upload(upload_id)

    run(backend, scenario)
    assert backend.staged() == set()


def test_commit_with_a_wrong_digest_publishes_nothing(backend: Backend) -> None:
    data = os.urandom(PART + MIB)
    upload_id = new_id()

    async def scenario(store: BlobStore, replica: BlobStore) -> None:
        await store.create_upload(upload_id)
        backend.session(upload_id)
        await append(store, upload_id, data, 0)
        wrong = sha256(data + b"!")
        with pytest.raises(DigestMismatch):
            await store.commit(upload_id, wrong)  # the running hash decides
        with pytest.raises(DigestMismatch):
            await replica.commit(upload_id, wrong)  # the bytes read back decide
        assert await walked(store) == {}
        assert await store.stat(sha256(data)) is None

    run(backend, scenario, replicas=2)


@pytest.mark.parametrize("head", [1000, PART + MIB], ids=["tail", "parts"])
def test_a_refused_commit_leaves_the_upload_as_it_was(backend: Backend, head: int) -> None:
    """Wrong digest, wrong offset, wrong length or a cut body, with or without
    a last chunk, checked by the running hash or by the bytes read back: the
    upload keeps its offset and its bytes, and goes on on either replica."""
    data = os.urandom(head + 2 * MIB)
    last = data[head:]
    wrong = sha256(data + b"!")
    upload_id = new_id()

    async def scenario(store: BlobStore, replica: BlobStore) -> None:
        await store.create_upload(upload_id)
        backend.session(upload_id)
        await append(store, upload_id, data[:head], 0)
        for committer in (store, replica, store):
            with pytest.raises(DigestMismatch):
                await committer.commit(upload_id, wrong)
            assert backend.offset(upload_id) == head
            with pytest.raises(DigestMismatch):
                await committer.commit(upload_id, wrong, None, body(last), len(last), head)
            assert backend.offset(upload_id) == head
            with pytest.raises(OffsetMismatch):
                await committer.commit(upload_id, sha256(data), None, body(last), len(last), 0)
            with pytest.raises(TruncatedBody):
                await committer.commit(upload_id, sha256(data), None, body(last), len(last) + 1)
            with pytest.raises(BodyCut):
                await committer.commit(upload_id, sha256(data), None, cut_body(last, MIB), None)
            assert backend.offset(upload_id) == head
        assert await walked(store) == {}
        # Still an upload like any other: it takes appends, and the right digest.
        middle = head + MIB
        assert await append(replica, upload_id, data[head:middle], head) == middle
        rest = data[middle:]
        done = await store.commit(upload_id, sha256(data), None, body(rest), len(rest), middle)
        # What the caller ends the session at: the version the bytes were checked at.
        assert done.size == len(data) and done.version == backend.version(upload_id)
        assert await read_all(replica, sha256(data)) == data
        await store.discard_upload(upload_id)

    run(backend, scenario, replicas=2)
    assert backend.staged() == set()


def test_a_sized_body_of_the_wrong_length_changes_nothing(backend: Backend) -> None:
    data = os.urandom(PART + 2 * MIB)
    upload_id = new_id()

    async def scenario(store: BlobStore) -> None:
        await store.create_upload(upload_id)
        backend.session(upload_id)
        first = await append(store, upload_id, data[:1000], 0)
        short = store.append(upload_id, body(data[1000 : PART + 1000]), PART + 5000, first)
        with pytest.raises(TruncatedBody):
            await short
        long = store.append(upload_id, body(data[1000:]), 10, first)
        with pytest.raises(TruncatedBody):
            await long
        assert backend.offset(upload_id) == first
        end = await append(store, upload_id, data[1000:], first)
        assert end == len(data)
        await store.commit(upload_id, sha256(data))
        assert await read_all(store, sha256(data)) == data

    run(backend, scenario)


def test_a_cut_stream_keeps_the_prefix_that_arrived(backend: Backend) -> None:
    data = os.urandom(PART + 3 * MIB)
    upload_id = new_id()

    async def scenario(store: BlobStore) -> None:
        await store.create_upload(upload_id)
        backend.session(upload_id)
        with pytest.raises(BodyCut):
            await store.append(upload_id, cut_body(data, PART + 2 * MIB + 17), None)
        kept = backend.offset(upload_id)
        assert kept is not None and 0 < kept <= PART + 2 * MIB + 17
        await store.append(upload_id, body(data[kept:]), len(data) - kept, kept)
        await store.commit(upload_id, sha256(data))
        assert await read_all(store, sha256(data)) == data

    run(backend, scenario)


def test_two_appends_at_one_offset_one_wins_across_replicas(backend: Backend) -> None:
    upload_id = new_id()
    head = os.urandom(3000)
    ours, theirs = os.urandom(PART + MIB), os.urandom(PART + MIB)

    async def slow(data: bytes, started: asyncio.Event, go: asyncio.Event) -> AsyncIterator[bytes]:
        started.set()
        await go.wait()
        async for chunk in body(data, 64 * 1024):
            yield chunk

    async def scenario(one: BlobStore, two: BlobStore) -> None:
        await one.create_upload(upload_id)
        backend.session(upload_id)
        start = await append(one, upload_id, head, 0)
        go = asyncio.Event()
        a_started, b_started = asyncio.Event(), asyncio.Event()
        a = asyncio.ensure_future(
            one.append(upload_id, slow(ours, a_started, go), len(ours), start)
        )
        b = asyncio.ensure_future(
            two.append(upload_id, slow(theirs, b_started, go), len(theirs), start)
        )
        # Both have read the offset before either sends a byte (the filesystem
        # driver lets the second wait on the first's flock instead: it then
        # finds the offset moved).
        await asyncio.wait_for(a_started.wait(), 30)
        if backend.driver == "s3":
            await asyncio.wait_for(b_started.wait(), 30)
        go.set()
        results = await asyncio.gather(a, b, return_exceptions=True)
        won = [r for r in results if isinstance(r, int)]
        lost = [r for r in results if isinstance(r, OffsetMismatch)]
        assert len(won) == 1 and len(lost) == 1, results
        assert won[0] == start + len(ours) and lost[0].size == won[0]
        winner = ours if results[0] == won[0] else theirs
        assert backend.offset(upload_id) == won[0]
        # Whichever replica commits, the blob is the winner's bytes.
        final = head + winner
        await two.commit(upload_id, sha256(final))
        assert await read_all(one, sha256(final)) == final
        await one.discard_upload(upload_id)

    run(backend, scenario, replicas=2)
    assert backend.staged() == set()


def test_an_upload_moves_between_replicas(backend: Backend) -> None:
    data = os.urandom(2 * PART + 3 * MIB)
    cuts = [0, 1000, PART + 500, PART + 2 * MIB, 2 * PART + MIB, len(data)]
    upload_id = new_id()

    async def scenario(one: BlobStore, two: BlobStore) -> None:
        await one.create_upload(upload_id)
        backend.session(upload_id)
        stores = [one, two, one, one, two]
        for store, (start, end) in zip(stores, itertools.pairwise(cuts), strict=True):
            assert await append(store, upload_id, data[start:end], start) == end
            # The other replica is behind by one append and must say so.
            other = two if store is one else one
            with pytest.raises(OffsetMismatch):
                await append(other, upload_id, b"late", start)
        # ``two`` did not see every byte: it reads them back to check the digest.
        await two.commit(upload_id, sha256(data))
        assert await read_all(one, sha256(data)) == data

    run(backend, scenario, replicas=2)


def test_sha512_commit_hashes_the_staged_bytes(backend: Backend) -> None:
    data = os.urandom(PART + 100)
    digest = parse_digest("sha512:" + hashlib.sha512(data).hexdigest())
    upload_id = new_id()

    async def scenario(store: BlobStore) -> None:
        await store.create_upload(upload_id)
        backend.session(upload_id)
        await append(store, upload_id, data[:10], 0)
        await append(store, upload_id, data[10:], 10)
        assert (await store.commit(upload_id, digest)).size == len(data)
        assert await read_all(store, digest) == data

    run(backend, scenario)


def test_unknown_and_discarded_uploads(backend: Backend) -> None:
    upload_id = new_id()

    async def scenario(store: BlobStore) -> None:
        with pytest.raises(UploadMissing):
            await append(store, new_id(), b"x", None)  # no session
        with pytest.raises(UploadMissing):
            await append(store, "../../etc/passwd", b"x", None)
        await store.create_upload(upload_id)
        backend.session(upload_id)
        await append(store, upload_id, os.urandom(PART + 10), 0)
        await store.discard_upload(upload_id)
        backend.metadata.delete_upload(upload_id)
        with pytest.raises(UploadMissing):
            await store.commit(upload_id, sha256(b""))
        await store.discard_upload(upload_id)  # again: nothing to do

    run(backend, scenario)
    assert backend.staged() == set()


def test_sweep_removes_only_old_staging_of_no_session(backend: Backend) -> None:
    live, orphan = new_id(), new_id()

    async def scenario(store: BlobStore) -> None:
        for upload_id in (live, orphan):
            await store.create_upload(upload_id)
            backend.session(upload_id)
            await append(store, upload_id, os.urandom(1000), 0)
        backend.metadata.delete_upload(orphan)  # its row went; its bytes stayed
        young = await store.sweep({live}, datetime.now(UTC) - timedelta(hours=1))
        assert young.removed == []
        dry = await store.sweep({live}, datetime.now(UTC) + timedelta(seconds=5), dry_run=True)
        assert dry.removed and all(orphan in item for item in dry.removed)
        swept = await store.sweep({live}, datetime.now(UTC) + timedelta(seconds=5))
        assert swept.removed == dry.removed
        assert await append(store, live, b"more", 1000) == 1004  # the live one goes on

    run(backend, scenario)
    assert all(orphan not in key for key in backend.staged())
    assert any(live in key for key in backend.staged())


# -- serving -------------------------------------------------------------------------


def test_s3_redirects_to_a_presigned_url_when_asked(tmp_path: Path) -> None:
    engine = create_metadata_engine(sqlite_url(tmp_path))
    upgrade(engine)
    seaweed = shared_seaweed()
    backend = Backend("s3", tmp_path, MetadataStore(engine), seaweed, seaweed.new_bucket())
    data = os.urandom(3000)
    digest = sha256(data)

    async def main() -> None:
        store = backend.store(redirect=True, redirect_expiry=60)
        try:
            await store.put(digest, body(data), len(data))
            source = await store.open(digest)
            assert isinstance(source, Redirect) and source.size == len(data)
            async with aiohttp.ClientSession() as session:
                async with session.get(source.url) as reply:
                    assert reply.status == 200 and await reply.read() == data
                tampered = source.url.replace("X-Amz-Expires=60", "X-Amz-Expires=61")
                async with session.get(tampered) as reply:
                    assert reply.status == 403
            # A HEAD is the registry's to answer: no redirect then.
            assert isinstance(await store.open(digest, redirect=False), ByteStream)
        finally:
            await store.close()

    asyncio.run(main())


def test_s3_copies_large_blobs_part_by_part(tmp_path: Path) -> None:
    engine = create_metadata_engine(sqlite_url(tmp_path))
    upgrade(engine)
    seaweed = shared_seaweed()
    backend = Backend("s3", tmp_path, MetadataStore(engine), seaweed, seaweed.new_bucket())
    data = os.urandom(2 * PART + 123)
    upload_id = new_id()

    async def main() -> None:
        # Above copy_limit the commit copies with UploadPartCopy, as S3 needs past 5 GiB.
        store = backend.store(copy_limit=PART)
        try:
            await store.create_upload(upload_id)
            backend.session(upload_id)
            await append(store, upload_id, data, 0)
            await store.commit(upload_id, sha256(data))
            assert await read_all(store, sha256(data)) == data
        finally:
            await store.close()

    asyncio.run(main())


# -- crashes ---------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, hashlib, os, sys
    from pathlib import Path
    from moorage.metadata import DatabaseThreads, MetadataStore, create_metadata_engine
    from moorage.oci.digest import parse_digest
    from moorage.registry.blobs import MetadataLedger
    from moorage.storage import FilesystemBlobStore
    from moorage.storage.s3 import S3BlobStore, MIN_PART
    from tests.seaweed import ACCESS_KEY, SECRET_KEY, REGION
    from moorage.storage.s3bucket import S3Bucket

    upload_id, crash_at = sys.argv[1], sys.argv[2]
    everything = Path(sys.argv[3]).read_bytes()
    data = everything[1000:]  # the first 1000 bytes are already appended
    engine = create_metadata_engine(os.environ["DB"])
    ledger = MetadataLedger(MetadataStore(engine), DatabaseThreads(1))
    if os.environ["DRIVER"] == "filesystem":
        store = FilesystemBlobStore(Path(os.environ["TMP"]) / "blobs", ledger)
    else:
        bucket = S3Bucket(os.environ["ENDPOINT"], REGION, os.environ["BUCKET"],
                          ACCESS_KEY, SECRET_KEY)
        store = S3BlobStore(bucket, ledger, part_size=MIN_PART)
    owner, name = crash_at.rsplit(".", 1)
    target = {"os": os, "bucket": getattr(store, "bucket", None)}[owner]
    real = getattr(target, name)
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= int(os.environ.get("AFTER", "1")):
            os._exit(17)  # a crash: no cleanup, no finally
        return real(*args, **kwargs)

    async def dies_async(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= int(os.environ.get("AFTER", "1")):
            os._exit(17)
        return await real(*args, **kwargs)

    setattr(target, name, dies_async if asyncio.iscoroutinefunction(real) else dies)

    async def body():
        for i in range(0, len(data), 1 << 20):
            yield data[i : i + (1 << 20)]

    async def main():
        await store.append(upload_id, body(), len(data), 1000)
        digest = "sha256:" + hashlib.sha256(everything).hexdigest()
        await store.commit(upload_id, parse_digest(digest))

    asyncio.run(main())
    os._exit(0)
    """
)

CRASH_POINTS = [
    ("filesystem", "os.write"),  # mid-append, blocks on disk past the offset
    ("filesystem", "os.rename"),  # verified, not yet published
    ("s3", "bucket.upload_part"),  # mid-append, one part stored
    ("s3", "bucket.complete_multipart_upload"),  # verified, parts not assembled
    ("s3", "bucket.copy_object"),  # assembled, not yet copied to the blob's key
]


@pytest.mark.parametrize(("driver", "crash_at"), CRASH_POINTS)
def test_a_crash_at_any_step_leaves_nothing_half_visible(
    driver: str, crash_at: str, tmp_path: Path
) -> None:
    backend = make_backend(driver, tmp_path)
    everything = os.urandom(2 * PART + MIB)
    digest = sha256(everything)
    upload_id = new_id()
    payload = backend.tmp / "payload"
    payload.write_bytes(everything)

    async def prepare(store: BlobStore) -> None:
        await store.create_upload(upload_id)
        backend.session(upload_id)
        await append(store, upload_id, everything[:1000], 0)

    run(backend, prepare)
    # Mid-append: after a few blocks (or one part) are stored.
    after = {"os.write": "4", "bucket.upload_part": "2"}.get(crash_at, "1")
    child = subprocess.run(
        [sys.executable, "-c", CHILD, upload_id, crash_at, str(payload)],
        env={**os.environ, **backend.env(), "AFTER": after, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 17, child.stderr[-3000:]

    async def recover(store: BlobStore) -> None:
        # Nothing is visible but complete, verified blobs.
        assert await walked(store) == {}
        assert await store.stat(digest) is None
        offset = backend.offset(upload_id)
        if crash_at in ("os.rename", "bucket.complete_multipart_upload", "bucket.copy_object"):
            assert offset == len(everything), "the acknowledged append was lost"
        else:
            assert offset == 1000, "a sized append that died half-way counted"
            await append(store, upload_id, everything[1000:], 1000)
        # Another process takes over and commits.
        await store.commit(upload_id, digest)
        assert await read_all(store, digest) == everything
        assert await walked(store) == {str(digest): len(everything)}

    run(backend, recover)


def test_s3_streamed_appends_spend_few_part_numbers(tmp_path: Path) -> None:
    """An upload has 10,000 part numbers in all: appends reserve what they use."""
    backend = make_backend("s3", tmp_path)
    data = os.urandom(4 * (PART + 10))
    upload_id = new_id()

    async def scenario(store: BlobStore) -> None:
        await store.create_upload(upload_id)
        backend.session(upload_id)
        step = PART + 10
        for start in range(0, len(data), step):
            await append(store, upload_id, data[start : start + step], start, sized=False)
        await store.commit(upload_id, sha256(data))
        assert await read_all(store, sha256(data)) == data

    run(backend, scenario)
    with backend.metadata.engine.connect() as conn:
        handed_out = conn.scalar(select(Upload.next_part).where(Upload.id == upload_id))
    assert handed_out is not None and handed_out - 1 <= 5  # four parts and the tail
