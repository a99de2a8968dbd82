"""Where a Moorage process may connect when a host is named by someone else.

The admission webhook, the kubelet credential provider and ``ks diagnose``
fetch from registries that an image reference, a ``WWW-Authenticate`` realm or
a redirect names, and any of those may be an attacker's. Every such fetch goes
through an HTTP client made here (``Egress.client``/``async_client``), so one
policy decides, for every connection and every request:

- **Addresses.** A host is resolved when the connection is made, every address
  it resolves to is checked, and the socket is opened to the checked address
  (a DNS answer that changes afterwards cannot swap it). Loopback,
  link-local, private, shared (CGNAT), reserved and multicast addresses (and
  IPv4 addresses inside IPv6 ones: mapped, 6to4, NAT64, IPv4-compatible;
  and site-local IPv6) are refused unless the operator allowed
  them: a network (``10.96.0.0/12``) or a host (``registry.internal:5000``;
  without a port, any port).
- **Schemes.** HTTPS, except for a host the operator listed as insecure, and
  plain HTTP then only to an address the operator allowed, never to a public
  one.
- **Credentials.** A request carrying ``Authorization`` names the host the
  credential was stored for (``credential_for``); it goes to that host only,
  or to a token service the operator configured for it. A request that does
  not say is refused.
- **Redirects** are never followed by the client; a caller that follows one
  makes a new request, checked like any other.

A refusal is ``Refused`` (an ``httpx.TransportError``), whose message says
what was refused and how to allow it."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import anyio
import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
CREDENTIAL_FOR = "moorage.credential_for"  # request extension: the host a credential belongs to
DEFAULT_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32)


class Refused(httpx.TransportError):
    """The policy refused a connection or a request; the message says why."""


def authority(host: str, port: int | None) -> str:
    """``host[:port]`` as image references write it (IPv6 in brackets)."""
    host = host.lower().strip("[]")
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def url_authority(url: httpx.URL) -> str:
    return authority(url.host, url.port)


def credential_for(host: str) -> dict[str, Any]:
    """The request extensions that let a credential stored for ``host`` go with it."""
    return {CREDENTIAL_FOR: host.lower()}


# IPv6 prefixes whose last 32 bits are an IPv4 address a translator delivers to:
# NAT64 (RFC 6052, RFC 8215), SIIT's IPv4-translated, the old IPv4-compatible.
_CARRIES_IPV4 = tuple(
    ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0:0/96", "::/96")
)


def _embedded(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64 and the like),
    which is where it goes."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is not None:
            return inner
        if any(address in net for net in _CARRIES_IPV4):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _kind(address: IPAddress) -> str:
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    return "a private or reserved address"


@dataclass(frozen=True)
class Egress:
    """The operator's allowances; an empty one allows public HTTPS only."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()  # host or host:port, any address
    insecure: frozenset[str] = frozenset()  # host[:port] reached over plain HTTP
    # registry host[:port] -> other hosts its credentials may be sent to (token services)
    token_services: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    allow_option: str = "--allow-private"  # how the operator allows more, for messages

    @classmethod
    def parse(
        cls,
        allow: Iterable[str] = (),
        insecure: Iterable[str] = (),
        token_services: Iterable[str] = (),
        allow_option: str = "--allow-private",
    ) -> Egress:
        """From the operator's words: ``allow`` entries are CIDRs, addresses or
        ``host[:port]``; ``token_services`` entries ``REGISTRY=HOST[:PORT]``.
        ValueError names a malformed entry."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in allow:
            text = entry.strip().lower()
            try:
                networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if not text or "/" in text or "://" in text or "@" in text:
                raise ValueError(f"{allow_option} takes a CIDR or HOST[:PORT], not {entry!r}")
            hosts.add(text)
        services: dict[str, set[str]] = {}
        for entry in token_services:
            registry, _, service = entry.lower().partition("=")
            if not registry or not service or "/" in registry + service:
                raise ValueError(f"expected REGISTRY=HOST[:PORT], not {entry!r}")
            services.setdefault(registry, set()).add(service)
        return cls(
            tuple(networks),
            frozenset(hosts),
            frozenset(h.lower() for h in insecure),
            MappingProxyType({k: frozenset(v) for k, v in services.items()}),
            allow_option,
        )

    def scheme(self, host: str) -> str:
        return "http" if host.lower() in self.insecure else "https"

    def host_allowed(self, host: str, port: int | None) -> bool:
        return authority(host, port) in self.hosts or authority(host, None) in self.hosts

    def may_send_credential(self, stored_for: str, url: httpx.URL) -> bool:
        """Whether a credential stored for ``stored_for`` may go to ``url``."""
        target = url_authority(url)
        stored_for = stored_for.lower()
        return target == stored_for or target in self.token_services.get(stored_for, ())

    def check_request(self, request: httpx.Request) -> None:
        """Scheme and credential rules, before any connection."""
        url = request.url
        where = url_authority(url)
        if url.scheme == "http":
            if where not in self.insecure:
                raise Refused(f"refused plain HTTP to {where}: only HTTPS, unless listed insecure")
        elif url.scheme != "https":
            raise Refused(f"refused {url.scheme!r} URL to {where}")
        if "authorization" in request.headers:
            stored_for = request.extensions.get(CREDENTIAL_FOR)
            if not isinstance(stored_for, str) or not self.may_send_credential(stored_for, url):
                raise Refused(
                    f"refused to send the credential of {stored_for or 'another host'} to {where}"
                )

    def check_address(self, host: str, port: int, address: IPAddress, plain: bool) -> None:
        """Whether a connection to ``host`` may go to ``address``."""
        if self.host_allowed(host, port):
            return
        target = _embedded(address)
        allowed = any(target in net or address in net for net in self.networks)
        if allowed:
            return
        where = authority(host, port)
        site_local = isinstance(target, ipaddress.IPv6Address) and target.is_site_local
        if not target.is_global or target.is_multicast or site_local:
            raise Refused(
                f"refused {where}: it resolves to {address}, {_kind(target)} "
                f"(allow it with {self.allow_option})"
            )
        if plain:
            raise Refused(f"refused plain HTTP to {where}: {address} is a public address")

    def _checked(
        self, host: str, port: int, found: Iterable[tuple[Any, ...]], plain: bool
    ) -> list[str]:
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        if not addresses:
            raise Refused(f"{host} has no address")
        for text in addresses:
            self.check_address(host, port, ipaddress.ip_address(text.split("%", 1)[0]), plain)
        return addresses

    def async_client(
        self,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 10,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> httpx.AsyncClient:
        """An asyncio client under this policy; it never follows redirects."""
        return httpx.AsyncClient(
            transport=_AsyncTransport(self, verify, limits),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
        )

    def client(self, verify: ssl.SSLContext | bool = True, timeout: float = 10) -> httpx.Client:
        """A blocking client under this policy; it never follows redirects."""
        return httpx.Client(
            transport=_SyncTransport(self, verify, DEFAULT_LIMITS),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
        )


# -- the connection: resolve, check, connect to what was checked -------------------


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, policy: Egress, plain: bool) -> None:
        self.policy, self.plain = policy, plain
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = self.policy._checked(host, port, found, self.plain)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _SyncBackend(httpcore.NetworkBackend):
    def __init__(self, policy: Egress, plain: bool) -> None:
        self.policy, self.plain = policy, plain
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = self.policy._checked(host, port, found, self.plain)
        error: Exception | None = None
        for address in addresses:
            try:
                return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def _ssl_context(verify: ssl.SSLContext | bool) -> ssl.SSLContext:
    return verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify)


class _AsyncTransport(httpx.AsyncBaseTransport):
    """httpx's own transport (its mapping of requests, responses and errors),
    with connection pools whose network backend is the policy's: httpx does not
    take a backend, so the pool it made is replaced by one that does."""

    def __init__(self, policy: Egress, verify: ssl.SSLContext | bool, limits: httpx.Limits):
        self.policy = policy
        self.schemes: dict[str, httpx.AsyncHTTPTransport] = {}
        context = _ssl_context(verify)
        for scheme in ("http", "https"):
            transport = httpx.AsyncHTTPTransport(verify=context, limits=limits, trust_env=False)
            transport._pool = httpcore.AsyncConnectionPool(
                ssl_context=context,
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                network_backend=_AsyncBackend(policy, plain=scheme == "http"),
            )
            self.schemes[scheme] = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.policy.check_request(request)
        return await self.schemes[request.url.scheme].handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self.schemes.values():
            await transport.aclose()


class _SyncTransport(httpx.BaseTransport):
    """As ``_AsyncTransport``, blocking."""

    def __init__(self, policy: Egress, verify: ssl.SSLContext | bool, limits: httpx.Limits):
        self.policy = policy
        self.schemes: dict[str, httpx.HTTPTransport] = {}
        context = _ssl_context(verify)
        for scheme in ("http", "https"):
            transport = httpx.HTTPTransport(verify=context, limits=limits, trust_env=False)
            transport._pool = httpcore.ConnectionPool(
                ssl_context=context,
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                network_backend=_SyncBackend(policy, plain=scheme == "http"),
            )
            self.schemes[scheme] = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.policy.check_request(request)
        return self.schemes[request.url.scheme].handle_request(request)

    def close(self) -> None:
        for transport in self.schemes.values():
            transport.close()
