"""Versions compared as each package manager compares them, and OSV's
affected-range evaluation on top.

The comparisons are univers's (dpkg's, rpm's ``rpmvercmp``, apk's, PEP 440,
semver, Go's semver, Maven's ``ComparableVersion``); this module only picks
the scheme for an OSV ecosystem and applies OSV's event semantics."""

from __future__ import annotations

import functools
from collections.abc import Callable

from univers import versions as uv

from moorage.va.model import Affected, AffectedRange, RangeEvent


class VersionError(ValueError):
    """A version the ecosystem's scheme cannot read."""


def _go(text: str) -> uv.Version:
    # Go modules write "v1.2.3", OSV records "1.2.3", the toolchain "go1.22.1".
    if text.startswith("go") and text[2:3].isdigit():
        text = text[2:]
    return uv.GolangVersion(text if text.startswith("v") else "v" + text)


def _semver(text: str) -> uv.Version:
    return uv.SemverVersion(text[1:] if text.startswith("v") else text)


_SCHEMES: dict[str, Callable[[str], uv.Version]] = {
    "deb": uv.DebianVersion,
    "rpm": uv.RpmVersion,
    "apk": uv.AlpineLinuxVersion,
    "pypi": uv.PypiVersion,
    "semver": _semver,
    "go": _go,
    "maven": uv.MavenVersion,
}

# The OSV ecosystem (its part before the first ":") -> the scheme.
_BY_ECOSYSTEM = {
    "Debian": "deb",
    "Ubuntu": "deb",
    "AlmaLinux": "rpm",
    "Rocky Linux": "rpm",
    "Red Hat": "rpm",
    "SUSE": "rpm",
    "openSUSE": "rpm",
    "Alpine": "apk",
    "PyPI": "pypi",
    "npm": "semver",
    "crates.io": "semver",
    "Go": "go",
    "Maven": "maven",
}


def scheme(ecosystem: str) -> str:
    """The version scheme of an OSV ecosystem ("Debian:12" -> "deb")."""
    base = ecosystem.split(":", 1)[0]
    try:
        return _BY_ECOSYSTEM[base]
    except KeyError:
        raise VersionError(f"no version scheme for ecosystem {ecosystem!r}") from None


@functools.lru_cache(maxsize=65536)
def _parse(kind: str, text: str) -> uv.Version:
    try:
        return _SCHEMES[kind](text)
    except VersionError:
        raise
    except Exception as exc:  # univers raises InvalidVersion, ValueError, TypeError...
        raise VersionError(f"{text!r} is not a {kind} version: {exc}") from None


def _cmp(kind: str, a: str, b: str) -> int:
    va, vb = _parse(kind, a), _parse(kind, b)
    return -1 if va < vb else (1 if va > vb else 0)


def compare(ecosystem: str, a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is older than, equal to or newer than ``b`` in the
    ecosystem's scheme. Raises ``VersionError`` for a version it cannot read."""
    return _cmp(scheme(ecosystem), a, b)


def _range_kind(ecosystem: str, r: AffectedRange) -> str | None:
    if r.type == "SEMVER":
        return "go" if scheme(ecosystem) == "go" else "semver"
    if r.type == "ECOSYSTEM":
        return scheme(ecosystem)
    return None  # GIT ranges name commits, not versions


def _in_range(kind: str, installed: str, r: AffectedRange) -> tuple[bool, str | None]:
    """OSV's evaluation: events in version order ("0" first); introduced turns
    vulnerable on, fixed (at or below) and last_affected (below) turn it off;
    any limit bounds the range from above."""
    limits = [e.version for e in r.events if e.kind == "limit"]
    if limits and not any(_cmp(kind, installed, lim) < 0 for lim in limits):
        return False, None

    def by_version(x: RangeEvent, y: RangeEvent) -> int:
        return _cmp(kind, x.version, y.version)

    ordered = sorted(
        (e for e in r.events if e.kind != "limit" and e.version != "0"),
        key=functools.cmp_to_key(by_version),
    )
    vulnerable = any(e.kind == "introduced" and e.version == "0" for e in r.events)
    for event in ordered:
        c = _cmp(kind, installed, event.version)
        if event.kind == "introduced" and c >= 0:
            vulnerable = True
        elif (event.kind == "fixed" and c >= 0) or (event.kind == "last_affected" and c > 0):
            vulnerable = False
    if not vulnerable:
        return False, None
    fixes = [
        e.version for e in ordered if e.kind == "fixed" and _cmp(kind, e.version, installed) > 0
    ]
    return True, fixes[0] if fixes else None


def affected(ecosystem: str, installed: str, entry: Affected) -> tuple[bool, str | None]:
    """Whether ``installed`` is among the versions ``entry`` names as affected
    (its ranges or its explicit ``versions``), and the lowest fixed version
    above it, if the record gives one. A range whose versions this scheme
    cannot read is skipped rather than guessed at."""
    hit = installed in entry.versions
    fixes: list[str] = []
    for r in entry.ranges:
        kind = _range_kind(ecosystem, r)
        if kind is None:
            continue
        try:
            inside, fixed = _in_range(kind, installed, r)
        except VersionError:
            continue
        if inside:
            hit = True
            if fixed is not None:
                fixes.append(fixed)
    if not hit:
        return False, None
    if not fixes:
        return True, None
    kind = scheme(ecosystem)
    best = fixes[0]
    for f in fixes[1:]:
        try:
            if _cmp(kind, f, best) < 0:
                best = f
        except VersionError:
            continue
    return True, best
