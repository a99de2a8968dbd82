"""The S3 client's request signing against AWS's published Signature Version 4
examples (the S3 developer guide's GET Object with a Range header, and its
presigned GET), and against a real SeaweedFS that checks signatures."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from moorage.storage.s3client import EMPTY_SHA256, S3Client, S3Credentials, S3Error, SigV4
from tests.seaweed import REGION, shared_seaweed

EXAMPLE = S3Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
HOST = "examplebucket.s3.amazonaws.com"
WHEN = datetime(2013, 5, 24, tzinfo=UTC)


def test_signature_of_the_get_object_example() -> None:
    headers = {
        "host": HOST,
        "range": "bytes=0-9",
        "x-amz-content-sha256": EMPTY_SHA256,
        "x-amz-date": "20130524T000000Z",
    }
    signature = SigV4(EXAMPLE, "us-east-1")._signature(
        "GET", "/test.txt", [], headers, EMPTY_SHA256, "20130524T000000Z"
    )
    assert signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


def test_presigned_get_of_the_example() -> None:
    query = dict(SigV4(EXAMPLE, "us-east-1").presign("GET", "/test.txt", HOST, 86400, WHEN))
    assert query["X-Amz-Credential"] == "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"
    assert query["X-Amz-Signature"] == (
        "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )


def test_a_store_that_checks_signatures_refuses_a_wrong_secret() -> None:
    seaweed = shared_seaweed()
    bucket = seaweed.new_bucket()

    async def main() -> None:
        good = seaweed.client(bucket)
        bad = S3Client(seaweed.endpoint, REGION, bucket, S3Credentials("moorage-test", "wrong"))
        try:
            # Keys that need quoting, and a header (x-amz-copy-source) that must be signed.
            await good.put_object("a b/c+d~(e)", b"signed")
            await good.copy_object("a b/c+d~(e)", "copy of it")
            assert await good.get_bytes("copy of it") == b"signed"
            with pytest.raises(S3Error) as refused:
                await bad.put_object("x", b"unsigned")
            assert refused.value.code == "SignatureDoesNotMatch"
        finally:
            await good.close()
            await bad.close()

    asyncio.run(main())
