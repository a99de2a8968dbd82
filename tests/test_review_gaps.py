"""Two promises of docs/security.md that the change's own tests do not check
through the server (security review of core 4c9ba95). Both pass on that code.
The first fails if SignIn counts a failure only after the password check, as
its scrypt now runs off the event loop (3e64210 ran it on the loop, so its
sign-ins were serial and it passes there); the second fails on 3e64210 (500)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.iam_helpers import ADMIN_KEY, Api
from tests.server import MoorageServer, ensure_region_hosts

US = "us.localhost"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MoorageServer]:
    ensure_region_hosts()
    started = MoorageServer(
        tmp_path / "data",
        tmp_path / "server.log",
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
    ).start()
    yield started
    started.stop()


def test_parallel_guesses_get_ten_answers_through_the_server(server: MoorageServer) -> None:
    """test_signin's parallel test drives FailureLimiter alone; this one sends
    the guesses at once, through the token endpoint."""
    Api(server, ADMIN_KEY).call(
        "POST", "/iam/users", {"email": "target@a.test", "password": "right-password-1"}, 201
    )
    url = f"http://{server.host_for(US)}/oauth/token"

    def guess(i: int) -> int:
        return requests.get(
            url, params={"service": US}, auth=("target@a.test", f"guess-{i}"), timeout=60
        ).status_code

    with ThreadPoolExecutor(40) as pool:
        answers = Counter(pool.map(guess, range(40)))
    assert answers == {401: 10, 429: 30}, answers


def test_json_nested_too_deeply_within_the_size_limit_gets_400(server: MoorageServer) -> None:
    """test_bad_input's nested management body is 100 kB: aiohttp refuses it with
    413 before any parsing, so it cannot catch a parser that fails on depth."""
    body = b'{"name": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert len(body) < 64 * 1024
    r = requests.post(
        f"{server.url}/api/v1/iam/service-ids",
        data=body,
        auth=("iamapikey", ADMIN_KEY),
        timeout=30,
    )
    assert r.status_code == 400, r.text
