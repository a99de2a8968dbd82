"""Crash safety, graceful shutdown and concurrent pushes, against the real
server process (``kill -9`` is a real SIGKILL to the whole process group)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.helpers import error_code, push_blob, put_manifest, simple_manifest
from tests.oci_layout import sha256
from tests.seaweed import shared_seaweed
from tests.server import MoorageServer

CHUNK = 8 * 1024 * 1024


def stored_blobs(registry: MoorageServer) -> dict[str, int]:
    """Every published blob, checked to hash to its name (files, or S3 objects)."""
    files = {}
    if registry.bucket is not None:
        seaweed = shared_seaweed()
        for key, size in seaweed.keys(registry.bucket, "blobs/").items():
            _, algorithm, shard, name = key.split("/")
            data = seaweed.read(registry.bucket, key)
            assert hashlib.new(algorithm, data).hexdigest() == name == shard + name[2:], key
            files[f"{algorithm}:{name}"] = size
        return files
    root = registry.data_dir / "blobs"
    for path in root.glob("*/*/*"):
        algorithm = path.parent.parent.name
        digest = hashlib.new(algorithm)
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        assert digest.hexdigest() == path.name, f"{path} is corrupt"
        files[f"{algorithm}:{path.name}"] = path.stat().st_size
    assert not [p for p in root.rglob("*") if p.is_file() and len(p.name) < 64], "stray files"
    return files


def assert_store_consistent(registry: MoorageServer) -> None:
    """Every published blob hashes to its name and every blob row has its bytes."""
    files = stored_blobs(registry)
    if registry.database_url.startswith("sqlite"):
        assert registry.query("PRAGMA integrity_check")[0][0] == "ok"
    for digest, size in registry.query("SELECT digest, size FROM blobs"):
        assert files.get(str(digest)) == size, f"blob row {digest} has no matching file"


def test_kill9_during_chunked_upload_then_resume(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry: MoorageServer = server_factory(tmp_path / "data")
    data = os.urandom(24 * CHUNK)
    digest = sha256(data)
    location = requests.post(f"{registry.url}/v2/crash/big/blobs/uploads/", timeout=5).headers[
        "Location"
    ]
    acked = 0
    for _ in range(4):
        r = requests.patch(
            f"{registry.url}{location}",
            data=data[acked : acked + CHUNK],
            headers={"Content-Range": f"{acked}-{acked + CHUNK - 1}"},
            timeout=30,
        )
        assert r.status_code == 202
        acked += CHUNK

    sent = threading.Event()

    def slow_rest() -> Iterator[bytes]:
        for offset in range(acked, len(data), 1 << 20):
            yield data[offset : offset + (1 << 20)]
            if offset - acked >= 6 * CHUNK:
                sent.set()
                time.sleep(0.05)

    def stream() -> None:
        # The server dies under it; that is the point.
        with contextlib.suppress(requests.RequestException):
            requests.patch(f"{registry.url}{location}", data=slow_rest(), timeout=60)

    streamer = threading.Thread(target=stream)
    streamer.start()
    assert sent.wait(60)
    registry.kill9()
    streamer.join(60)

    # No partial blob anywhere, before or after the restart.
    assert registry.blob_files() == set()
    registry.start()
    assert registry.blob_files() == set()
    r = requests.get(f"{registry.url}/v2/crash/big/blobs/{digest}", timeout=5)
    assert r.status_code == 404 and error_code(r) == "BLOB_UNKNOWN"
    assert_store_consistent(registry)

    status = requests.get(f"{registry.url}{location}", timeout=5)
    if status.status_code == 404:
        assert error_code(status) == "BLOB_UPLOAD_UNKNOWN"
        return
    assert status.status_code == 204
    offset = int(status.headers["Range"].split("-")[1]) + 1
    assert offset >= acked, "acknowledged chunks were lost"
    r = requests.patch(
        f"{registry.url}{location}",
        data=data[offset:],
        headers={"Content-Range": f"{offset}-{len(data) - 1}"},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    done = requests.put(f"{registry.url}{location}", params={"digest": digest}, timeout=60)
    assert done.status_code == 201, done.text
    fetched = requests.get(f"{registry.url}/v2/crash/big/blobs/{digest}", timeout=60)
    assert hashlib.sha256(fetched.content).hexdigest() == digest.split(":")[1]
    assert_store_consistent(registry)


def test_kill9_after_pushes_keeps_every_acknowledged_push(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry: MoorageServer = server_factory(tmp_path / "data")
    bodies = {}
    for i in range(5):
        repo = f"crash/img{i}"
        bodies[repo] = simple_manifest(registry, repo, seed=os.urandom(1000))
        assert put_manifest(registry, repo, "v1", bodies[repo]).status_code == 201
    registry.kill9()
    registry.start()
    for repo, body in bodies.items():
        r = requests.get(f"{registry.url}/v2/{repo}/manifests/v1", timeout=5)
        assert r.content == body
    assert_store_consistent(registry)


def _upload_during_sigterm(
    registry: MoorageServer, data: bytes, pause: float
) -> tuple[str, requests.Response | None]:
    """Stream ``data`` in 1 MiB pieces, ``pause`` seconds apart, sending SIGTERM
    to the server a quarter of the way through; returns the session and reply."""
    location = requests.post(f"{registry.url}/v2/drain/blob/blobs/uploads/", timeout=5).headers[
        "Location"
    ]
    pieces = len(data) >> 20
    quarter = threading.Event()
    result: dict[str, requests.Response] = {}

    def slow() -> Iterator[bytes]:
        for i in range(pieces):
            if i == pieces // 4:
                quarter.set()
            time.sleep(pause)
            yield data[i << 20 : (i + 1) << 20]

    def stream() -> None:
        with contextlib.suppress(requests.RequestException):
            result["response"] = requests.patch(
                f"{registry.url}{location}", data=slow(), timeout=120
            )

    streamer = threading.Thread(target=stream)
    streamer.start()
    assert quarter.wait(30)
    assert registry.process is not None
    os.killpg(registry.process.pid, signal.SIGTERM)
    streamer.join(120)
    assert registry.process.wait(60) == 0, "the server did not exit cleanly on SIGTERM"
    registry.process = None
    return location, result.get("response")


def test_graceful_shutdown_finishes_inflight_upload(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry: MoorageServer = server_factory(tmp_path / "data")
    data = os.urandom(16 << 20)
    location, response = _upload_during_sigterm(registry, data, pause=0.1)
    assert response is not None and response.status_code == 202
    assert response.headers["Range"] == f"0-{len(data) - 1}"
    registry.start()
    done = requests.put(f"{registry.url}{location}", params={"digest": sha256(data)}, timeout=30)
    assert done.status_code == 201, done.text
    assert_store_consistent(registry)


def test_shutdown_timeout_leaves_cut_upload_resumable(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "moorage.toml"
    config.write_text("[server]\nshutdown_timeout = 1\n")
    registry: MoorageServer = server_factory(tmp_path / "data", "--config", str(config))
    data = os.urandom(40 << 20)
    location, response = _upload_during_sigterm(registry, data, pause=0.15)
    assert response is None or response.status_code != 202, "the upload should have been cut"
    registry.start()
    status = requests.get(f"{registry.url}{location}", timeout=5)
    assert status.status_code == 204
    # A streamed body keeps the prefix that arrived before the cut.
    offset = int(status.headers["Range"].split("-")[1]) + 1
    assert 0 < offset < len(data)
    r = requests.patch(
        f"{registry.url}{location}",
        data=data[offset:],
        headers={"Content-Range": f"{offset}-{len(data) - 1}"},
        timeout=30,
    )
    assert r.status_code == 202, (status.headers, r.headers, r.text)
    done = requests.put(f"{registry.url}{location}", params={"digest": sha256(data)}, timeout=30)
    assert done.status_code == 201, done.text
    assert_store_consistent(registry)


def test_twenty_identical_concurrent_pushes(registry: MoorageServer) -> None:
    data = os.urandom(4 * (1 << 20))
    digest = sha256(data)

    def monolithic(i: int) -> int:
        return push_blob(registry, f"race/repo{i % 4}", data) and 201

    def chunked(i: int) -> int:
        repo = f"race/repo{i % 4}"
        location = requests.post(f"{registry.url}/v2/{repo}/blobs/uploads/", timeout=30).headers[
            "Location"
        ]
        half = len(data) // 2
        r = requests.patch(
            f"{registry.url}{location}",
            data=data[:half],
            headers={"Content-Range": f"0-{half - 1}"},
            timeout=30,
        )
        assert r.status_code == 202
        return requests.put(
            f"{registry.url}{r.headers['Location']}",
            params={"digest": digest},
            data=data[half:],
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(monolithic if i % 2 else chunked, i) for i in range(20)]
        assert [f.result() for f in futures] == [201] * 20

    assert [f for f in registry.blob_files() if f == digest] == [digest]
    rows = registry.db_rows()
    assert [r for r in rows["blobs"] if r[0] == digest] and len(
        [r for r in rows["blobs"] if r[0] == digest]
    ) == 1
    assert len([r for r in rows["repository_blobs"] if r[1] == digest]) == 4
    assert registry.upload_files() == set()
    for i in range(4):
        r = requests.get(f"{registry.url}/v2/race/repo{i}/blobs/{digest}", timeout=30)
        assert r.content == data

    # And twenty clients tagging the same manifest at once.
    body = simple_manifest(registry, "race/repo0")
    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(
            pool.map(
                lambda _: put_manifest(registry, "race/repo0", "latest", body).status_code,
                range(20),
            )
        )
    assert codes == [201] * 20
    assert len([m for m in registry.db_rows()["manifests"] if m[2] == sha256(body)]) == 1
    assert_store_consistent(registry)
