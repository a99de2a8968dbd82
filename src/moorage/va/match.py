"""Packages of an image matched to the advisories that name them.

Each package is looked up only in its own ecosystem (``ecosystems``): OS
packages in their distribution's advisories by the name those use, language
packages in theirs. A distribution's advisory with its own fixed version
(``+deb12u1``) is the only word on a distribution package, however an
upstream range would judge it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from moorage.va.ecosystems import ecosystem, index_key, package_name
from moorage.va.model import Advisory, ImageContents, Match
from moorage.va.versions import VersionError, affected, compare


class AdvisoryLookup(Protocol):
    def for_package(self, ecosystem: str, name: str) -> Sequence[Advisory]: ...


def _preload(lookup: AdvisoryLookup, keys: Iterable[tuple[str, str]]) -> None:
    preload = getattr(lookup, "preload", None)  # the store's lookup reads many at once
    if callable(preload):
        preload(keys)


def match(contents: ImageContents, lookup: AdvisoryLookup) -> list[Match]:
    """Every (package, advisory) where the installed version is affected, once
    per advisory ID and package, with the lowest fixed version above the
    installed one that any of the advisory's entries for it gives."""
    wanted = []
    for package in contents.packages:
        eco = ecosystem(package, contents.os)
        if eco is not None:
            wanted.append((package, eco, package_name(package)))
    _preload(lookup, [(eco, name) for _, eco, name in wanted])
    found: dict[tuple[int, str], Match] = {}
    for i, (package, eco, name) in enumerate(wanted):
        key = index_key(eco, name)
        for advisory in lookup.for_package(eco, name):
            if advisory.withdrawn:
                continue
            for entry in advisory.affected:
                if index_key(entry.ecosystem, entry.name) != key:
                    continue
                hit, fixed = affected(eco, package.version, entry)
                if not hit:
                    continue
                seen = found.get((i, advisory.id))
                if seen is None or _lower(eco, fixed, seen.fixed):
                    found[(i, advisory.id)] = Match(package, advisory, eco, fixed)
    return sorted(found.values(), key=lambda m: (m.package.purl, m.advisory.id))


def _lower(eco: str, candidate: str | None, current: str | None) -> bool:
    if candidate is None:
        return False
    if current is None:
        return True
    try:
        return compare(eco, candidate, current) < 0
    except VersionError:
        return False
