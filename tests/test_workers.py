"""``moorage serve --workers N``: several processes on one port and one
database (SQLite by default, PostgreSQL with MOORAGE_TEST_DATABASE), each with
its own event loop, sharing what must be shared."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.helpers import wait_for
from tests.iam_helpers import ADMIN_KEY, Api, push_image_with
from tests.oci_layout import OCI_MANIFEST, make_image
from tests.server import MoorageServer, ensure_region_hosts

US = "us.localhost"


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("workers")
    started = MoorageServer(
        tmp / "data",
        tmp / "server.log",
        ("--workers", "3"),
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
    ).start()
    Api(started, ADMIN_KEY).namespace("us-south", "workers")
    yield started
    started.stop()


def bearer(server: MoorageServer, scope: str) -> dict[str, str]:
    r = requests.get(
        f"http://{server.host_for(US)}/oauth/token",
        params={"service": US, "scope": scope},
        auth=("iamapikey", ADMIN_KEY),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_three_workers_serve_one_port(server: MoorageServer) -> None:
    assert server.process is not None
    supervisor = server.process.pid
    workers = wait_for(lambda: len(children(supervisor)) == 3 and children(supervisor), 30)
    # Each binds the port itself (SO_REUSEPORT): three listening sockets.
    inodes = set()
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:"):
                inodes.add(target)
    listening = {
        line.split()[9]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(f":{server.port:04X}") and line.split()[3] == "0A"
    }
    assert len(listening) == 3 and {f"socket:[{i}]" for i in listening} <= inodes


def test_a_moved_tag_is_seen_by_every_worker(server: MoorageServer) -> None:
    """Each GET on a new connection may land on any worker; after the tag moves,
    every worker answers with the new manifest within a second (the change
    feed between processes), though each had the old one in its cache."""
    headers = bearer(server, "repository:workers/app:pull,push")
    base = f"http://{server.host_for(US)}/v2/workers/app"

    def push(seed: str) -> bytes:
        image = make_image(1, 512, seed)
        r = push_image_with(server, US, "workers/app", "v1", image, headers)
        assert r.status_code == 201, r.text
        return image.manifest

    def answers() -> set[bytes]:
        # Thirty connections of their own: the kernel spreads them over the workers.
        return {
            requests.get(
                f"{base}/manifests/v1",
                headers={**headers, "Accept": OCI_MANIFEST, "Connection": "close"},
                timeout=30,
            ).content
            for _ in range(30)
        }

    first = push("first")
    assert answers() == {first}
    moved = push("moved")
    wait_for(lambda: answers() == {moved}, 5, "every worker to see the moved tag")


def test_sign_in_throttling_holds_across_workers(server: MoorageServer) -> None:
    Api(server, ADMIN_KEY).call(
        "POST", "/iam/users", {"email": "w@a.test", "password": "right-password-1"}, 201
    )

    def guess(i: int) -> int:
        return requests.get(
            f"http://{server.host_for(US)}/oauth/token",
            params={"service": US},
            auth=("w@a.test", f"guess-{i}"),
            headers={"Connection": "close"},
            timeout=60,
        ).status_code

    with ThreadPoolExecutor(30) as pool:
        answers = Counter(pool.map(guess, range(30)))
    assert answers == {401: 10, 429: 20}, answers


def test_a_worker_that_dies_is_started_again(server: MoorageServer) -> None:
    assert server.process is not None
    before = children(server.process.pid)
    os.kill(before[0], signal.SIGKILL)
    wait_for(
        lambda: (
            len(children(server.process.pid)) == 3 and before[0] not in children(server.process.pid)
        ),  # type: ignore[union-attr]
        30,
        "a new worker",
    )
    for _ in range(10):
        r = requests.get(f"{server.url}/health", headers={"Connection": "close"}, timeout=10)
        assert r.status_code == 200


def test_sigterm_stops_every_worker(tmp_path: Path) -> None:
    server = MoorageServer(tmp_path / "data", tmp_path / "log", ("--workers", "2")).start()
    assert server.process is not None
    supervisor = server.process.pid
    workers = wait_for(lambda: len(children(supervisor)) == 2 and children(supervisor), 30)
    assert server.stop() == 0
    for pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
