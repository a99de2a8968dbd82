"""The S3 driver's client (boto3, configured in storage/s3bucket.py) against a
real SeaweedFS that checks every signature: a wrong secret is refused and the
right one accepted, through the driver, with keys that need quoting and a
copy whose source header is signed; requests go out as measured (no SHA-256
of the body, no CRC32 of every part) and from the bucket's own threads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from moorage.metadata import (
    DatabaseThreads,
    MetadataStore,
    RepoRef,
    create_metadata_engine,
    sqlite_url,
    upgrade,
)
from moorage.oci.digest import Digest, parse_digest
from moorage.registry.blobs import MetadataLedger
from moorage.storage import StorageError
from moorage.storage.s3 import MIN_PART, S3BlobStore
from moorage.storage.s3bucket import S3Bucket, S3Error
from tests.seaweed import ACCESS_KEY, REGION, shared_seaweed

MIB = 1 << 20


def sha256(data: bytes) -> Digest:
    return parse_digest("sha256:" + hashlib.sha256(data).hexdigest())


async def body(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), MIB):
        yield data[i : i + MIB]


def ledger(tmp_path: Path) -> tuple[MetadataStore, MetadataLedger]:
    engine = create_metadata_engine(sqlite_url(tmp_path))
    upgrade(engine)
    metadata = MetadataStore(engine)
    return metadata, MetadataLedger(metadata, DatabaseThreads(2))


def test_a_store_that_checks_signatures_refuses_a_wrong_secret(tmp_path: Path) -> None:
    seaweed = shared_seaweed()
    name = seaweed.new_bucket()
    metadata, upload_ledger = ledger(tmp_path)
    data = os.urandom(MIN_PART + 1000)
    upload_id = os.urandom(16).hex()
    # Keys that need quoting, in the path and in the signed x-amz-copy-source.
    prefix = "a b/c+d~(e)/"

    async def main() -> None:
        good = S3BlobStore(seaweed.client(name), upload_ledger, prefix=prefix, part_size=MIN_PART)
        bad = S3BlobStore(
            S3Bucket(seaweed.endpoint, REGION, name, ACCESS_KEY, "wrong"),
            upload_ledger,
            prefix=prefix,
        )
        try:
            await good.check()
            # An upload: multipart, a tail read back, completed, copied to the blob's key.
            await good.create_upload(upload_id)
            metadata.create_upload(upload_id, RepoRef("global", "test/repo"), None)
            await good.append(upload_id, body(data[:MIB]), MIB, 0)
            await good.append(upload_id, body(data[MIB:]), len(data) - MIB, MIB)
            assert (await good.commit(upload_id, sha256(data))).size == len(data)
            assert b"".join([c async for c in good.read(sha256(data))]) == data

            with pytest.raises(StorageError, match=r"^S3 bucket .*AccessDenied"):
                await bad.check()  # a HEAD: no body to say more
            with pytest.raises(S3Error) as refused:
                [item async for item in bad.walk()]
            assert refused.value.code == "SignatureDoesNotMatch"
            with pytest.raises(S3Error) as refused:
                await bad.put(sha256(b"unsigned"), body(b"unsigned"), 8)
            assert refused.value.status == 403
            assert await good.stat(sha256(b"unsigned")) is None
            assert not bad.health().ok  # a refusal (403) shows on /health
        finally:
            await good.close()
            await bad.close()

    asyncio.run(main())
    hex_ = sha256(data).hex
    assert seaweed.keys(name, f"{prefix}blobs/") == {
        f"{prefix}blobs/sha256/{hex_[:2]}/{hex_}": len(data)
    }


def test_requests_go_out_as_measured_from_the_buckets_threads(tmp_path: Path) -> None:
    """UNSIGNED-PAYLOAD and no checksum of the body: what made boto3 cost the
    least CPU. Every call runs on a thread of the bucket's own, never on the
    event loop's thread nor in its default executor."""
    seaweed = shared_seaweed()
    name = seaweed.new_bucket()
    _, upload_ledger = ledger(tmp_path)
    data = os.urandom(2 * MIN_PART + 10)
    sent: list[tuple[str, str, dict[str, str]]] = []

    def record(request: Any, **_: Any) -> None:
        headers = {
            k.lower(): v if isinstance(v, str) else v.decode() for k, v in request.headers.items()
        }
        sent.append((threading.current_thread().name, request.method, headers))

    async def main() -> None:
        bucket = seaweed.client(name)
        bucket.s3.meta.events.register("before-send.s3", record)
        store = S3BlobStore(bucket, upload_ledger, part_size=MIN_PART)
        loop_thread = threading.current_thread().name
        try:
            await store.put(sha256(data), body(data), len(data))
            assert (
                b"".join([c async for c in store.read(sha256(data), 5, MIB)]) == data[5 : 5 + MIB]
            )
        finally:
            await store.close()
        assert sent and all(thread.startswith("s3_") for thread, _, _ in sent), sent
        assert loop_thread not in {thread for thread, _, _ in sent}

    asyncio.run(main())
    puts = [headers for _, method, headers in sent if method == "PUT"]
    assert len(puts) == 3  # three parts, the last of them short
    for headers in puts:
        assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert not [h for h in headers if h.startswith(("x-amz-checksum", "x-amz-sdk-checksum"))]
        assert "content-md5" not in headers
