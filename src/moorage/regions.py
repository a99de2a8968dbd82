"""Regional registries and the domains they answer on.

One installation serves several regions, each with its own namespaces and
images, chosen by the Host header. The defaults follow the seed: five regional
registries, a global registry of public images on the base domain, and
legacy domains that accept only deprecated registry tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass

GLOBAL = "global"
# The global registry also answers on the loopback addresses.
LOOPBACK_HOSTS = ("127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Region:
    name: str
    domain: str
    legacy_domain: str | None = None

    @property
    def is_global(self) -> bool:
        return self.name == GLOBAL


@dataclass(frozen=True)
class Target:
    """Where a request landed: the region, and whether it came in on its legacy domain."""

    region: Region
    legacy: bool

    @property
    def service(self) -> str:
        """The token ``service`` (and JWT audience) of this domain."""
        return (
            self.region.legacy_domain
            if self.legacy and self.region.legacy_domain
            else self.region.domain
        )


@dataclass(frozen=True)
class PublicUrl:
    """How clients reach each domain: ``template`` (``public_url``) with the
    domain in place of ``{domain}``. Built from configuration only, never from
    a request, so no Host header can redirect a client's credentials."""

    template: str

    def base(self, target: Target) -> str:
        return self.template.replace("{domain}", target.service)

    def realm(self, target: Target) -> str:
        return self.base(target) + "/oauth/token"


# (region, domain prefix, legacy domain prefix) as the seed names them.
DEFAULT_LAYOUT: tuple[tuple[str, str | None, str | None], ...] = (
    ("us-south", "us", "registry.ng"),
    ("eu-gb", "uk", "registry.eu-gb"),
    ("eu-de", "de", "registry.eu-de"),
    ("au-syd", "au", "registry.au-syd"),
    ("jp-tok", "jp", None),
    (GLOBAL, None, None),
)


class UnknownDomain(LookupError):
    pass


class MalformedHost(ValueError):
    """A Host header that is not ``name[:port]``: answered with 400."""


_HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::([0-9]{1,5}))?")


def split_host(header: str | None) -> tuple[str, int | None]:
    """The lower-cased name and the port of a Host header, or MalformedHost:
    anything but a DNS name, an IPv4 address or a bracketed IPv6 address,
    with an optional port from 1 to 65535 (no user info, no path)."""
    match = _HOST_HEADER.fullmatch(header or "")
    if match is None:
        raise MalformedHost("the Host header must be a host name with an optional port")
    name, port = match.group(1).lower(), match.group(2)
    if port is not None and not 0 < int(port) < 65536:
        raise MalformedHost("the port in the Host header must be between 1 and 65535")
    if name.endswith(".") and not name.startswith("["):
        name = name[:-1]  # the root label of a fully qualified name
    return name, int(port) if port is not None else None


class RegionMap:
    def __init__(self, regions: list[Region], extra_global_hosts: tuple[str, ...] = ()) -> None:
        self.regions = {r.name: r for r in regions}
        self._by_host: dict[str, Target] = {}
        for region in regions:
            self._by_host[region.domain] = Target(region, legacy=False)
            if region.legacy_domain:
                self._by_host[region.legacy_domain] = Target(region, legacy=True)
        if GLOBAL in self.regions:
            for host in extra_global_hosts:
                self._by_host.setdefault(host, Target(self.regions[GLOBAL], legacy=False))

    @classmethod
    def default(cls, base_domain: str = "localhost") -> RegionMap:
        regions = [
            Region(
                name,
                f"{prefix}.{base_domain}" if prefix else base_domain,
                f"{legacy}.{base_domain}" if legacy else None,
            )
            for name, prefix, legacy in DEFAULT_LAYOUT
        ]
        return cls(regions, extra_global_hosts=LOOPBACK_HOSTS)

    def resolve(self, host: str | None) -> Target:
        """The region a Host header names (the port does not matter): raises
        MalformedHost for a header that is not ``name[:port]``, UnknownDomain
        for a name no region answers on."""
        name, _ = split_host(host)
        target = self._by_host.get(name)
        if target is None:
            raise UnknownDomain(name)
        return target

    def domains(self) -> list[str]:
        return sorted(self._by_host)

    def get(self, name: str) -> Region:
        try:
            return self.regions[name]
        except KeyError:
            raise UnknownDomain(name) from None
