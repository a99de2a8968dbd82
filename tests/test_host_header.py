"""The Host header picks a region and nothing else: a malformed one gets 400,
an unknown one 404, before anything else, and the token realm comes from the
configuration, never from the request."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import raw_request
from tests.iam_helpers import ADMIN_KEY
from tests.server import MOORAGE, MoorageServer, free_port


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    tmp = tmp_path_factory.mktemp("host")
    server = MoorageServer(
        tmp / "data", tmp / "server.log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    ).start()
    yield server
    server.stop()


def get(registry: MoorageServer, path: str, *headers: bytes) -> tuple[int, bytes]:
    request = b"GET " + path.encode() + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers)
    reply = raw_request(registry, request + b"Connection: close\r\n\r\n")
    status_line = reply.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), reply


def realm(reply: bytes) -> str:
    for line in reply.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"www-authenticate":
            return value.decode().split('realm="', 1)[1].split('"', 1)[0]
    raise AssertionError(f"no challenge in {reply[:300]!r}")


MALFORMED = [
    b"us.localhost:@evil.example",
    b"us.localhost:5000@evil.example",
    b"user:pass@us.localhost",
    b"us.localhost/evil.example",
    b"us.localhost:evil.example",
    b"us.localhost:",
    b"us.localhost:0",
    b"us.localhost:65536",
    b"us.localhost:5000:5000",
    b"us.localhost evil.example",
    b"us.localhost\\evil.example",
    b"[::1",
    b"",
]
PATHS = ["/v2/", "/v2/team/app/manifests/v1", "/oauth/token", "/api/v1/iam/me", "/nowhere"]


@pytest.mark.parametrize("host", MALFORMED, ids=lambda h: h.decode() or "empty")
def test_a_malformed_host_gets_400_and_is_not_echoed(
    token_registry: MoorageServer, host: bytes
) -> None:
    for path in PATHS:
        status, reply = get(token_registry, path, b"Host: " + host)
        assert status == 400, (path, reply[:300])
        assert b"evil" not in reply
        assert b"www-authenticate" not in reply.lower()
    assert "evil" not in token_registry.log_text()


def test_a_missing_or_repeated_host_gets_400(token_registry: MoorageServer) -> None:
    status, _ = get(token_registry, "/v2/")
    assert status == 400
    status, reply = get(token_registry, "/v2/", b"Host: us.localhost", b"Host: evil.example")
    assert status == 400 and b"evil" not in reply


def test_an_unknown_domain_gets_404_before_anything_else(token_registry: MoorageServer) -> None:
    for host in (b"evil.example", b"evil.example:5000", b"us.localhost.evil.example", b"[::2]"):
        for path in PATHS:
            status, reply = get(token_registry, path, b"Host: " + host)
            assert status == 404, (host, path, reply[:300])
            assert b"evil" not in reply and b"www-authenticate" not in reply.lower()
    # Load balancers probe /health by address: it answers, naming no host.
    status, reply = get(token_registry, "/health", b"Host: 10.1.2.3:5000")
    assert status == 200 and b"10.1.2.3" not in reply
    assert get(token_registry, "/health", b"Host: us.localhost:@evil.example")[0] == 400


def test_the_realm_comes_from_the_configuration(token_registry: MoorageServer) -> None:
    port = token_registry.port
    cases = {
        f"us.localhost:{port}": f"http://us.localhost:{port}/oauth/token",
        "US.LOCALHOST": f"http://us.localhost:{port}/oauth/token",
        # A client that reached the server on another port still gets the configured one.
        "us.localhost:1234": f"http://us.localhost:{port}/oauth/token",
        f"registry.ng.localhost:{port}": f"http://registry.ng.localhost:{port}/oauth/token",
        f"127.0.0.1:{port}": f"http://localhost:{port}/oauth/token",
        f"[::1]:{port}": f"http://localhost:{port}/oauth/token",
    }
    for host, expected in cases.items():
        status, reply = get(token_registry, "/v2/team/app/manifests/v1", f"Host: {host}".encode())
        assert status == 401
        assert realm(reply) == expected, host


def test_the_realm_follows_public_url(tmp_path: Path) -> None:
    config = tmp_path / "moorage.toml"
    config.write_text('[server]\npublic_url = "https://{domain}:8443"\n')
    from_file = MoorageServer(
        tmp_path / "a", tmp_path / "a.log", ("--config", str(config)), auth="token"
    ).start()
    from_env = MoorageServer(
        tmp_path / "b",
        tmp_path / "b.log",
        auth="token",
        env={"MOORAGE_PUBLIC_URL": "https://{domain}"},
    ).start()
    try:
        for host, expected in {
            "us.localhost": "https://us.localhost:8443/oauth/token",
            "registry.eu-de.localhost:9999": "https://registry.eu-de.localhost:8443/oauth/token",
            "127.0.0.1": "https://localhost:8443/oauth/token",
        }.items():
            reply = get(from_file, "/v2/", f"Host: {host}".encode())[1]
            assert realm(reply) == expected
        reply = get(from_env, "/v2/", b"Host: jp.localhost:5000")[1]
        assert realm(reply) == "https://jp.localhost/oauth/token"
    finally:
        from_file.stop()
        from_env.stop()


@pytest.mark.parametrize(
    "value",
    ["https://evil.example", "https://{domain}/prefix", "https://{domain}:0", "ftp://{domain}"],
)
def test_a_bad_public_url_stops_the_server(tmp_path: Path, value: str) -> None:
    result = subprocess.run(
        [str(MOORAGE), "serve", "--port", str(free_port()), "--data", str(tmp_path / "d")],
        env={"MOORAGE_PUBLIC_URL": value, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "public_url" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
