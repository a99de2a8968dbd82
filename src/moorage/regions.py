"""Regional registries and the domains they answer on.

One installation serves several regions, each with its own namespaces and
images, chosen by the Host header. The defaults follow the seed: five regional
registries, a global registry of public images on the base domain, and
legacy domains that accept only deprecated registry tokens."""

from __future__ import annotations

from dataclasses import dataclass

GLOBAL = "global"


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
        return cls(regions, extra_global_hosts=("127.0.0.1", "::1", "[::1]"))

    def resolve(self, host: str | None) -> Target:
        """The region a Host header names; the port does not matter."""
        name = (host or "").strip().lower()
        if name.startswith("["):
            name = name.split("]", 1)[0] + "]"
        else:
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
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
