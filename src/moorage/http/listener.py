"""Accepting connections: caps per client address and in all, deadlines for
headers, idle keep-alive and stalled bodies, and the TLS handshake.

aiohttp closes idle keep-alive connections but bounds neither how long a
client may take to send its headers nor how many connections it may hold, so
a few hundred half-sent requests could use up the file descriptors. Like
nginx's ``client_header_timeout`` and Go's ``ReadHeaderTimeout``:

- a request's headers must be complete ``header_timeout`` seconds after its
  first byte (the first request's: after the connection was accepted, TLS
  handshake included);
- a keep-alive connection may wait ``idle_timeout`` seconds for its next
  request (aiohttp's own keep-alive timer);
- a request body must keep arriving: ``body_timeout`` seconds without a byte
  closes the connection, however long the whole upload takes;
- connections beyond ``max_connections_per_client`` from one address, or
  beyond ``max_connections`` in all, are closed as soon as they are accepted.

The listening socket is plain TCP: each accepted connection is counted before
anything else, then (with TLS) goes through ``loop.start_tls`` with the
certificates current at that moment, so a reload never touches connections
already open. Plain HTTP hands the socket straight to aiohttp's protocol:
nothing is added to the path a blob takes through ``sendfile``."""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("moorage.http")

# Descriptors kept back from connections: the database, logs, the listening
# socket, uploads being written.
_RESERVED_FDS = 64
_REFUSAL_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 20.0
    idle_timeout: float = 60.0
    body_timeout: float = 60.0
    max_connections: int = 0  # 0: derived from the open-file limit
    max_connections_per_client: int = 256  # 0: no per-address limit


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one (as Go's runtime
    does) and return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_ceiling(open_file_limit: int) -> int:
    """Connections that fit below the open-file limit: each may hold its
    socket and one open blob."""
    return max(16, (open_file_limit - _RESERVED_FDS) // 2)


class TlsContextSource(Protocol):
    """Where the listener gets the TLS context for each new handshake."""

    @property
    def context(self) -> ssl.SSLContext: ...


class Listener:
    """Counts, limits and (with TLS) wraps the connections of one aiohttp
    ``web.Server``; ``protocol`` is the factory for ``loop.create_server``."""

    def __init__(
        self,
        server: web.Server,
        limits: Limits,
        handler_args: dict[str, Any],
        tls: TlsContextSource | None = None,
    ) -> None:
        self.server = server
        self.limits = limits
        ceiling = connection_ceiling(raise_open_file_limit())
        if limits.max_connections > ceiling:
            log.warning(
                "max_connections %d is above what the open-file limit allows (%d): "
                "raise the limit (ulimit -n, LimitNOFILE=) or connections may fail",
                limits.max_connections,
                ceiling,
            )
        self.max_connections = limits.max_connections or ceiling
        self.handler_args = handler_args
        self.tls = tls
        self.open = 0
        self.by_client: dict[str, int] = {}
        self.refused = 0
        self._refusals_logged_at = 0.0
        self._handshakes: set[asyncio.Task[None]] = set()

    def protocol(self) -> asyncio.Protocol:
        return _Gate(self)

    # -- counting ------------------------------------------------------------

    def _admit(self, client: str) -> str | None:
        """None when the connection may stay, else why it may not."""
        if self.open >= self.max_connections:
            return f"{self.open} connections open (max_connections)"
        per_client = self.limits.max_connections_per_client
        if per_client and self.by_client.get(client, 0) >= per_client:
            return f"{per_client} connections from this address (max_connections_per_client)"
        self.open += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        left = self.by_client[client] - 1
        if left:
            self.by_client[client] = left
        else:
            del self.by_client[client]

    def _log_refusal(self, client: str, reason: str) -> None:
        self.refused += 1
        now = asyncio.get_running_loop().time()
        if now - self._refusals_logged_at >= _REFUSAL_LOG_INTERVAL:
            self._refusals_logged_at = now
            log.warning(
                "refused a connection from %s: %s (%d refused so far)", client, reason, self.refused
            )

    # -- accepting -----------------------------------------------------------

    def accepted(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        accepted_at = loop.time()
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        refusal = self._admit(client)
        if refusal is not None:
            self._log_refusal(client, refusal)
            transport.abort()
            return
        if self.tls is None:
            handler = self._handler(client, accepted_at)
            transport.set_protocol(handler)
            handler.connection_made(transport)
            return
        # Nothing is read until the TLS layer is in place.
        transport.pause_reading()
        task = loop.create_task(self._handshake(transport, client, accepted_at))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    def _handler(self, client: str, accepted_at: float) -> _GuardedHandler:
        return _GuardedHandler(
            self.server,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=self.limits.idle_timeout,
            guard=_Guard(self, client, accepted_at + self.limits.header_timeout),
            **self.handler_args,
        )

    async def _handshake(
        self, transport: asyncio.Transport, client: str, accepted_at: float
    ) -> None:
        assert self.tls is not None
        loop = asyncio.get_running_loop()
        held = _Held()
        try:
            tls_transport = await loop.start_tls(
                transport,
                held,
                self.tls.context,
                server_side=True,
                ssl_handshake_timeout=self.limits.header_timeout,
            )
        except asyncio.CancelledError:
            transport.abort()
            self.release(client)
            raise
        except Exception as exc:  # any failed handshake: scanners, untrusting clients
            log.debug("TLS handshake with %s failed: %r", client, exc)
            transport.abort()
            self.release(client)
            return
        if tls_transport is None or held.lost:
            self.release(client)
            return
        handler = self._handler(client, accepted_at)
        tls_transport.set_protocol(handler)
        handler.connection_made(tls_transport)
        if held.data:
            handler.data_received(b"".join(held.data))
        if held.eof:
            handler.eof_received()

    def close(self) -> None:
        """Abandon handshakes in progress (the server is stopping)."""
        for task in list(self._handshakes):
            task.cancel()


class _Gate(asyncio.Protocol):
    """The protocol of a just-accepted socket, replaced at once."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.listener.accepted(transport)


class _Held(asyncio.Protocol):
    """Keeps what arrives between the end of the TLS handshake and the moment
    aiohttp's protocol takes the connection over."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


@dataclass
class _Guard:
    listener: Listener
    client: str
    first_deadline: float


class _GuardedHandler(RequestHandler):
    """aiohttp's protocol with a deadline on each request's headers and a
    watchdog on request bodies; it gives its slot back when it closes."""

    def __init__(self, manager: web.Server, *, guard: _Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: Any = None  # the payload of the last request whose headers arrived
        self._last_read = 0.0
        self._released = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._header_timer = self._loop.call_at(self._guard.first_deadline, self._headers_late)

    def data_received(self, data: bytes) -> None:
        body = self._body
        in_body = body is not None and not body.is_eof()
        if data and in_body:
            self._last_read = self._loop.time()
        # aiohttp calls this with b"" to parse what it buffered while paused.
        starts_request = bool(data) and not in_body and self._header_timer is None
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            # Headers complete: no deadline until the next request begins.
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if self._messages:
                self._body = self._messages[-1][1]
                if not self._body.is_eof():
                    self._watch_body()
        elif starts_request and not self._force_close:
            # A request's first bytes, its headers not complete yet.
            self._header_timer = self._loop.call_at(
                self._loop.time() + self._guard.listener.limits.header_timeout, self._headers_late
            )

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport is not None:
            log.debug("closing a connection from %s: headers too slow", self._guard.client)
            self.force_close()

    def _watch_body(self) -> None:
        self._last_read = self._loop.time()
        if self._body_timer is None:
            self._body_timer = self._loop.call_at(
                self._last_read + self._guard.listener.limits.body_timeout, self._body_check
            )

    def _body_check(self) -> None:
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof() or self.transport is None:
            return
        now = self._loop.time()
        if self._reading_paused or self._buffer_paused:
            self._last_read = now  # the handler has not caught up: not the client's fault
        deadline = self._last_read + self._guard.listener.limits.body_timeout
        if now >= deadline:
            log.debug("closing a connection from %s: request body stalled", self._guard.client)
            self.force_close()
            return
        self._body_timer = self._loop.call_at(deadline, self._body_check)

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None
        if not self._released:
            self._released = True
            self._guard.listener.release(self._guard.client)
        super().connection_lost(exc)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a Listener."""

    __slots__ = ("_host", "_listener", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        listener: Listener,
        host: str,
        port: int,
        backlog: int = 1024,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._listener = listener
        self._host = host
        self._port = port
        # Several processes (``--workers``) each bind the port; the kernel
        # spreads new connections over them.
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        scheme = "https" if self._listener.tls else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._listener.protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )

    async def stop(self) -> None:
        await super().stop()
        self._listener.close()
