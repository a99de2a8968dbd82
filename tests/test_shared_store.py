"""Moorage as a scale-out deployment would run it: two server processes
sharing one database and one blob store (a bucket, or a directory both
mount). An upload's chunks may land on either; of two chunks for one range,
one wins whichever process got each; on S3, blobs are served through the
registry or by redirect to a presigned URL."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import require_tool
from tests.helpers import push_blob
from tests.oci_layout import make_image, read_layout_blobs, sha256, write_layout
from tests.seaweed import shared_seaweed
from tests.server import MoorageServer
from tests.test_clients import run

MIB = 1 << 20


@pytest.fixture(params=["s3", "filesystem"])
def replicas(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[MoorageServer, MoorageServer]]:
    storage = request.param
    bucket = shared_seaweed().new_bucket() if storage == "s3" else None
    started = [
        MoorageServer(tmp_path / "data", tmp_path / f"{name}.log", storage=storage, bucket=bucket)
        for name in ("a", "b")
    ]
    for server in started:
        server.start()
    yield started[0], started[1]
    for server in started:
        server.stop()


def patch(server: MoorageServer, location: str, data: bytes, start: int) -> requests.Response:
    return requests.patch(
        f"{server.url}{location}",
        data=data,
        headers={"Content-Range": f"{start}-{start + len(data) - 1}"},
        timeout=60,
    )


def test_an_upload_whose_chunks_land_on_both_replicas(
    replicas: tuple[MoorageServer, MoorageServer],
) -> None:
    a, b = replicas
    data = os.urandom(14 * MIB + 12345)
    cuts = [0, 6 * MIB, 6 * MIB + 700, 11 * MIB, len(data)]
    location = requests.post(f"{a.url}/v2/scale/out/blobs/uploads/", timeout=10).headers["Location"]
    for server, (start, end) in zip([a, b, a, b], itertools.pairwise(cuts), strict=True):
        assert patch(server, location, data[start:end], start).status_code == 202
        for either in (a, b):  # both report the offset the database holds
            status = requests.get(f"{either.url}{location}", timeout=10)
            assert status.status_code == 204 and status.headers["Range"] == f"0-{end - 1}"
    done = requests.put(f"{a.url}{location}", params={"digest": sha256(data)}, timeout=60)
    assert done.status_code == 201, done.text
    for server in (a, b):
        got = requests.get(f"{server.url}/v2/scale/out/blobs/{sha256(data)}", timeout=60)
        assert got.status_code == 200 and got.content == data
    assert a.upload_files() == set()


def test_two_chunks_for_one_range_on_two_replicas_one_wins(
    replicas: tuple[MoorageServer, MoorageServer],
) -> None:
    a, b = replicas
    head = os.urandom(1000)
    location = requests.post(f"{a.url}/v2/scale/race/blobs/uploads/", timeout=10).headers[
        "Location"
    ]
    assert patch(a, location, head, 0).status_code == 202
    bodies = {"a": os.urandom(7 * MIB), "b": os.urandom(7 * MIB)}
    # Each body holds its first byte until both requests are under way, so
    # both replicas read the offset before either has saved.
    both_sending = threading.Barrier(2, timeout=30)
    replies: dict[str, requests.Response] = {}

    def body(data: bytes) -> Iterator[bytes]:
        both_sending.wait()
        for i in range(0, len(data), MIB):
            yield data[i : i + MIB]

    def send(name: str, server: MoorageServer) -> None:
        replies[name] = requests.patch(
            f"{server.url}{location}",
            data=body(bodies[name]),
            headers={"Content-Range": f"1000-{1000 + 7 * MIB - 1}"},
            timeout=60,
        )

    threads = [threading.Thread(target=send, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    codes = sorted(r.status_code for r in replies.values())
    assert codes == [202, 416], {n: (r.status_code, r.text) for n, r in replies.items()}
    winner = next(n for n, r in replies.items() if r.status_code == 202)
    loser = replies["b" if winner == "a" else "a"]
    assert loser.headers["Range"] == f"0-{1000 + 7 * MIB - 1}"
    final = head + bodies[winner]
    done = requests.put(f"{b.url}{location}", params={"digest": sha256(final)}, timeout=60)
    assert done.status_code == 201, done.text
    assert requests.get(f"{a.url}/v2/scale/race/blobs/{sha256(final)}", timeout=60).content == final


def test_blobs_redirect_to_presigned_urls_when_configured(tmp_path: Path) -> None:
    server = MoorageServer(
        tmp_path / "data", tmp_path / "log", storage="s3", s3_env={"MOORAGE_S3_REDIRECT": "true"}
    ).start()
    try:
        data = os.urandom(3 * MIB)
        digest = push_blob(server, "redirect/blob", data)
        url = f"{server.url}/v2/redirect/blob/blobs/{digest}"
        reply = requests.get(url, allow_redirects=False, timeout=10)
        assert reply.status_code == 307 and reply.headers["Docker-Content-Digest"] == digest
        location = reply.headers["Location"]
        assert location.startswith(shared_seaweed().endpoint) and "X-Amz-Signature=" in location
        assert requests.get(location, timeout=30).content == data
        assert requests.get(url, timeout=30).content == data  # followed by the client
        head = requests.head(url, timeout=10)  # a presigned GET is no good for HEAD
        assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
        stranger = requests.get(
            f"{server.url}/v2/redirect/other/blobs/{digest}", allow_redirects=False, timeout=10
        )
        assert stranger.status_code == 404  # no link, no URL

        # A real client pulls through the redirects.
        skopeo = require_tool("skopeo")
        image = make_image(layer_count=2, layer_bytes=512 * 1024, seed="redirected")
        layout = write_layout(image, tmp_path / "src")
        target = f"docker://{server.host}/redirect/image:v1"
        run(skopeo, "copy", "--dest-tls-verify=false", f"oci:{layout}:latest", target)
        run(skopeo, "copy", "--src-tls-verify=false", target, f"oci:{tmp_path / 'out'}:latest")
        pulled = read_layout_blobs(tmp_path / "out")
        for blob_digest in image.blob_digests:
            assert hashlib.sha256(pulled[blob_digest]).hexdigest() == blob_digest.split(":")[1]
    finally:
        server.stop()
