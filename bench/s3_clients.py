#!/usr/bin/env python3
"""The one-off measurement that chose Moorage's S3 client (docs/benchmarks.md).

Each candidate uploads 1 GiB to a running S3 endpoint as one multipart upload
of 16 MiB parts, one part after another as a registry streams a body, then
downloads it with one streamed GET read in 1 MiB pieces, as a registry
serves it. Every candidate runs in a process of its own, so the CPU time it
reports (user + system, all its threads) is that client's alone; the object
store's CPU is not counted.

It needs the candidates other than boto3, which Moorage does not depend on;
run it from a scratch environment against a store that checks signatures:

    python3 -m venv /tmp/s3cmp && /tmp/s3cmp/bin/pip install -e . obstore aiobotocore
    /tmp/s3cmp/bin/python bench/s3_clients.py --endpoint http://127.0.0.1:8333

``--only`` picks candidates by a part of their name. "Moorage's S3Bucket" is
the driver's own wrapper (``moorage.storage.s3bucket``: tuned boto3 on a
thread pool of its own). The hand-written SigV4 client on aiohttp that
Moorage used before it was measured by this script as of commit 9b7eaa5,
where that client still is."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

MIB = 1 << 20
PART = 16 * MIB
PARTS = 64  # 1 GiB
READ = MIB
BUCKET = "clients"
KEY, SECRET, REGION = "bench", "bench-secret", "us-east-1"

Phase = Callable[[], Awaitable[None]]


def _botocore_config(tuned: bool) -> Any:
    from botocore.config import Config

    if not tuned:
        return Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    # No SHA-256 of every body over plain HTTP, no CRC32 of every part.
    return Config(
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 1},
    )


async def boto3_phases(endpoint: str, data: bytes, tuned: bool) -> tuple[Phase, Phase]:
    """boto3 (synchronous) on worker threads, as an asyncio server would call it."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name=REGION,
        config=_botocore_config(tuned),
    )
    key = f"boto3-{uuid.uuid4().hex}"

    async def upload() -> None:
        mpu = await asyncio.to_thread(client.create_multipart_upload, Bucket=BUCKET, Key=key)
        parts = []
        for n in range(1, PARTS + 1):
            reply = await asyncio.to_thread(
                client.upload_part,
                Bucket=BUCKET,
                Key=key,
                UploadId=mpu["UploadId"],
                PartNumber=n,
                Body=data,
            )
            parts.append({"PartNumber": n, "ETag": reply["ETag"]})
        await asyncio.to_thread(
            client.complete_multipart_upload,
            Bucket=BUCKET,
            Key=key,
            UploadId=mpu["UploadId"],
            MultipartUpload={"Parts": parts},
        )

    async def download() -> None:
        body = (await asyncio.to_thread(client.get_object, Bucket=BUCKET, Key=key))["Body"]
        total = 0
        while block := await asyncio.to_thread(body.read, READ):
            total += len(block)
        assert total == PART * PARTS, total

    return upload, download


async def aiobotocore_phases(endpoint: str, data: bytes, tuned: bool) -> tuple[Phase, Phase]:
    from aiobotocore.session import get_session

    client = await (
        get_session()
        .create_client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
            config=_botocore_config(tuned),
        )
        .__aenter__()
    )
    key = f"aiobotocore-{uuid.uuid4().hex}"

    async def upload() -> None:
        mpu = await client.create_multipart_upload(Bucket=BUCKET, Key=key)
        parts = []
        for n in range(1, PARTS + 1):
            reply = await client.upload_part(
                Bucket=BUCKET, Key=key, UploadId=mpu["UploadId"], PartNumber=n, Body=data
            )
            parts.append({"PartNumber": n, "ETag": reply["ETag"]})
        await client.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=mpu["UploadId"], MultipartUpload={"Parts": parts}
        )

    async def download() -> None:
        reply = await client.get_object(Bucket=BUCKET, Key=key)
        total = 0
        async with reply["Body"] as body:
            while block := await body.read(READ):
                total += len(block)
        assert total == PART * PARTS, total

    return upload, download


async def obstore_phases(endpoint: str, data: bytes, tuned: bool) -> tuple[Phase, Phase]:
    """obstore has no part-level multipart calls (so no resuming an upload on
    another replica); the upload here is its own streamed multipart writer."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=endpoint,
        access_key_id=KEY,
        secret_access_key=SECRET,
        region=REGION,
        client_options={"allow_http": True},
        virtual_hosted_style_request=False,
    )
    key = f"obstore-{uuid.uuid4().hex}"

    async def upload() -> None:
        async with obstore.open_writer_async(store, key, buffer_size=PART) as writer:
            for _ in range(PARTS):
                await writer.write(data)

    async def download() -> None:
        result = await obstore.get_async(store, key)
        total = 0
        async for block in result.stream(min_chunk_size=READ):
            total += len(block)
        assert total == PART * PARTS, total

    return upload, download


async def moorage_phases(endpoint: str, data: bytes, tuned: bool) -> tuple[Phase, Phase]:
    """boto3 as the S3 driver runs it: moorage.storage.s3bucket.S3Bucket."""
    from moorage.storage.s3bucket import S3Bucket

    bucket = S3Bucket(endpoint, REGION, BUCKET, KEY, SECRET, path_style=True)
    key = f"moorage-{uuid.uuid4().hex}"

    async def upload() -> None:
        upload_id = await bucket.create_multipart_upload(key)
        parts = []
        for n in range(1, PARTS + 1):
            parts.append((n, await bucket.upload_part(key, upload_id, n, data)))
        await bucket.complete_multipart_upload(key, upload_id, parts)

    async def download() -> None:
        total = 0
        async for block in bucket.get_object(key, piece=READ):
            total += len(block)
        assert total == PART * PARTS, total

    return upload, download


CANDIDATES: dict[str, tuple[Callable[[str, bytes, bool], Awaitable[tuple[Phase, Phase]]], bool]] = {
    "boto3 1.43 on threads, defaults": (boto3_phases, False),
    "boto3 1.43 on threads, tuned": (boto3_phases, True),
    "aiobotocore 3.10, defaults": (aiobotocore_phases, False),
    "aiobotocore 3.10, tuned": (aiobotocore_phases, True),
    "obstore 0.12 (no part-level multipart)": (obstore_phases, True),
    "Moorage's S3Bucket (boto3 on its own threads, tuned)": (moorage_phases, True),
}


async def _child(name: str, endpoint: str) -> dict[str, float]:
    make, tuned = CANDIDATES[name]
    data = os.urandom(PART)
    upload, download = await make(endpoint, data, tuned)
    figures: dict[str, float] = {}
    for label, phase in (("up", upload), ("down", download)):
        wall, cpu = time.perf_counter(), time.process_time()
        await phase()
        figures[f"{label}_mbs"] = PART * PARTS / 1e6 / (time.perf_counter() - wall)
        figures[f"{label}_cpu"] = time.process_time() - cpu
    return figures


def measure_child(name: str, endpoint: str) -> dict[str, float]:
    """One candidate in a fresh process, so its CPU time is its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--endpoint", endpoint, "--child", name],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _make_bucket(endpoint: str) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name=REGION,
        config=_botocore_config(True),
    )
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyExists",
            "BucketAlreadyOwnedByYou",
        ):
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child")
    parser.add_argument(
        "--only", action="append", default=[], help="candidates whose name contains this"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child, args.endpoint))))
        return
    _make_bucket(args.endpoint)
    chosen = [n for n in CANDIDATES if not args.only or any(o in n for o in args.only)]
    results: dict[str, list[dict[str, float]]] = {}
    for r in range(args.rounds):
        names = chosen if r % 2 == 0 else list(reversed(chosen))
        for name in names:
            figures = measure_child(name, args.endpoint)
            results.setdefault(name, []).append(figures)
            print(f"round {r + 1} {name}: {figures}", flush=True)
    print()
    print("| client | upload MB/s | upload CPU s/GiB | download MB/s | download CPU s/GiB |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in results.items():

        def med(field: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(row[field] for row in rows)

        print(
            f"| {name} | {med('up_mbs'):,.0f} | {med('up_cpu'):.2f} | "
            f"{med('down_mbs'):,.0f} | {med('down_cpu'):.2f} |"
        )


if __name__ == "__main__":
    main()
