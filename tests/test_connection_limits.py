"""Connections cannot be held open for nothing: headers have a deadline, idle
keep-alive connections and stalled bodies are closed, and one address (or
everyone together) may hold only so many connections. A slow upload that
keeps sending is never cut."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import requests

from tests.server import MoorageServer


def limited_server(tmp_path: Path, **server: float) -> MoorageServer:
    config = tmp_path / "moorage.toml"
    config.write_text("[server]\n" + "".join(f"{k} = {v}\n" for k, v in server.items()))
    return MoorageServer(tmp_path / "data", tmp_path / "log", ("--config", str(config))).start()


def connect(registry: MoorageServer, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", registry.port), timeout=10, source_address=(source, 0)
    )
    return sock


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (reading and discarding any
    reply), or None if it was still open after ``seconds``."""
    started = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - started < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
    return None


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def get_v2(sock: socket.socket) -> bytes:
    """One keep-alive GET /v2/ on ``sock``; returns the status line."""
    sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.settimeout(10)
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.endswith(b"{}"):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {reply!r}"
        reply += chunk
    return reply.split(b"\r\n", 1)[0]


def hold(registry: MoorageServer, source: str = "127.0.0.1") -> socket.socket:
    """A served keep-alive connection from ``source``. Connections a client
    just closed may count for a moment, until the server sees them go."""
    deadline = time.monotonic() + 10
    while True:
        sock = connect(registry, source)
        try:
            assert b" 200 " in get_v2(sock)
            return sock
        except (AssertionError, ConnectionError):
            sock.close()
            assert time.monotonic() < deadline, f"no connection from {source} was served"
            time.sleep(0.05)


def test_half_sent_headers_are_cut_off_after_the_header_timeout(tmp_path: Path) -> None:
    registry = limited_server(tmp_path, header_timeout=2, idle_timeout=60)
    try:
        started = time.monotonic()
        # Half a request each, and one that trickles a byte every 0.2 s: a
        # trickle does not extend the deadline.
        stalled = [connect(registry) for _ in range(40)]
        for sock in stalled:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        trickle = connect(registry)
        trickle_closed = None
        for byte in b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaa":
            try:
                trickle.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                trickle_closed = time.monotonic() - started
                break
            if closed_within(trickle, 0.2) is not None:
                trickle_closed = time.monotonic() - started
                break
        assert trickle_closed is not None and 1.5 < trickle_closed < 6, trickle_closed
        # Nothing was closed early, everything within a few seconds of the deadline.
        for sock in stalled:
            took = closed_within(sock, 8)
            assert took is not None, "a half-sent request is still open"
            assert 1.5 < time.monotonic() - started < 10
            sock.close()
        # A request sent in full is answered as ever.
        assert requests.get(f"{registry.url}/v2/", timeout=5).status_code == 200
    finally:
        registry.stop()


def test_idle_keep_alive_connections_are_closed(tmp_path: Path) -> None:
    registry = limited_server(tmp_path, header_timeout=30, idle_timeout=2)
    try:
        sock = connect(registry)
        assert b" 200 " in get_v2(sock)
        started = time.monotonic()
        # Still usable a moment later...
        time.sleep(0.5)
        assert b" 200 " in get_v2(sock)
        took = closed_within(sock, 8)
        assert took is not None and time.monotonic() - started > 1.5, took
        sock.close()
    finally:
        registry.stop()


def test_a_client_beyond_its_cap_is_refused_while_another_address_is_served(
    tmp_path: Path,
) -> None:
    registry = limited_server(tmp_path, max_connections_per_client=4, idle_timeout=60)
    try:
        held = [hold(registry) for _ in range(4)]
        extra = connect(registry)
        extra.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert closed_within(extra, 2) is not None, "the fifth connection was served"
        extra.close()
        # Another address is served at once.
        other = connect(registry, source="127.0.0.2")
        assert b" 200 " in get_v2(other)
        other.close()
        # The four are untouched, and a slot given back is usable again.
        for sock in held:
            assert b" 200 " in get_v2(sock)
        held.pop().close()

        hold(registry).close()  # served again once the server saw the close
        assert "max_connections_per_client" in registry.log_text()
        for sock in held:
            sock.close()
    finally:
        registry.stop()


def test_the_global_cap_holds_for_every_address(tmp_path: Path) -> None:
    registry = limited_server(
        tmp_path, max_connections=6, max_connections_per_client=0, idle_timeout=60
    )
    try:
        held = [hold(registry, f"127.0.0.{2 + i}") for i in range(6)]
        for source in ("127.0.0.1", "127.0.0.99"):
            extra = connect(registry, source=source)
            extra.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert closed_within(extra, 2) is not None
            extra.close()
        for sock in held:
            sock.close()
    finally:
        registry.stop()


def test_a_slow_upload_that_keeps_sending_completes(tmp_path: Path) -> None:
    registry = limited_server(tmp_path, header_timeout=1, body_timeout=2)
    try:
        start = requests.post(f"{registry.url}/v2/slow/upload/blobs/uploads/", timeout=5)
        location = start.headers["Location"]
        data = hashlib.sha256(b"slow").digest() * 1024  # 32 KiB
        pieces = [data[i : i + 1024] for i in range(0, len(data), 1024)]
        sock = connect(registry)
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        started = time.monotonic()
        for piece in pieces:  # 32 pieces, 0.15 s apart: about 5 s, far past the header timeout
            sock.sendall(piece)
            time.sleep(0.15)
        assert time.monotonic() - started > 4
        sock.settimeout(10)
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 202 "), reply[:200]
        assert f"range: 0-{len(data) - 1}".encode() in reply.lower()
        sock.close()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        done = requests.put(f"{registry.url}{location}", params={"digest": digest}, timeout=5)
        assert done.status_code == 201, done.text
        assert done.headers["Docker-Content-Digest"] == digest
        blob = requests.get(f"{registry.url}/v2/slow/upload/blobs/{digest}", timeout=5)
        assert blob.content == data
    finally:
        registry.stop()


def test_a_stalled_body_is_cut_off_and_leaves_the_upload_as_it_was(tmp_path: Path) -> None:
    registry = limited_server(tmp_path, header_timeout=1, body_timeout=2)
    try:
        start = requests.post(f"{registry.url}/v2/slow/stall/blobs/uploads/", timeout=5)
        location = start.headers["Location"]
        sock = connect(registry)
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/octet-stream\r\nContent-Range: 0-9999\r\n"
            "Content-Length: 10000\r\n\r\n".encode()
            + b"x" * 4000
        )
        took = closed_within(sock, 10)
        assert took is not None and took > 1.5, took
        sock.close()
        status = requests.get(f"{registry.url}{location}", timeout=5)
        assert status.status_code == 204 and status.headers["Range"] == "0-0"
    finally:
        registry.stop()
