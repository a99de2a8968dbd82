"""Packages of an image matched to advisories imported from real feeds: OS
packages only on their distribution's own advisories (by source package for
Debian, by origin for Alpine, by binary name for rpm distributions), and the
fixed version reported is the lowest above the installed one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.metadata.advisory_store import AdvisoryStore
from moorage.va.ecosystems import ecosystem, supported_os
from moorage.va.feeds import import_locations
from moorage.va.match import match
from moorage.va.model import FoundPackage, ImageContents, OSRelease, Package, PackageType
from tests.va_feeds_helpers import FEEDS, make_store

BOOKWORM = OSRelease("debian", "12", version_codename="bookworm")
ALPINE = OSRelease("alpine", "3.11.6")
ALMA9 = OSRelease("almalinux", "9.4")


@pytest.fixture
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AdvisoryStore]:
    yield from make_store(tmp_path, request.node.nodeid)


def pkg(kind: PackageType, name: str, version: str, **extra: Any) -> Package:
    found = FoundPackage(kind, name, version, "var/lib/x", **extra)
    return Package(f"pkg:{kind.value}/{name}@{version}", found, "sha256:" + "a" * 64)


def image(os: OSRelease | None, *packages: Package) -> ImageContents:
    return ImageContents(os, packages, ())


def _record(id_: str, ecosystem_: str, name: str, *events: dict[str, str]) -> dict[str, Any]:
    return {
        "id": id_,
        "modified": "2026-02-01T00:00:00Z",
        "aliases": ["CVE-2026-0001"],
        "affected": [
            {
                "package": {"ecosystem": ecosystem_, "name": name},
                "ranges": [{"type": "ECOSYSTEM", "events": list(events)}],
            }
        ],
    }


def _debian_feed(tmp_path: Path) -> Path:
    """Debian's advisory (the fix backported as 1.2.3-1+deb12u1) beside an
    upstream record whose range (fixed in 1.2.4) would flag the backport."""
    feed = tmp_path / "debian"
    feed.mkdir()
    dsa = _record(
        "DSA-9999-1", "Debian:12", "openssl", {"introduced": "0"}, {"fixed": "1.2.3-1+deb12u1"}
    )
    upstream = _record("OSV-2026-1", "OSS-Fuzz", "openssl", {"introduced": "0"}, {"fixed": "1.2.4"})
    (feed / "DSA-9999-1.json").write_text(json.dumps(dsa))
    (feed / "OSV-2026-1.json").write_text(json.dumps(upstream))
    return feed


def test_a_backported_debian_fix_is_not_flagged_by_upstream_ranges(
    store: AdvisoryStore, tmp_path: Path
) -> None:
    snapshot = import_locations(store, [str(_debian_feed(tmp_path))])
    lookup = store.lookup(snapshot.id)
    fixed = pkg(PackageType.DEB, "libssl3", "1.2.3-1+deb12u1", source_name="openssl")
    assert match(image(BOOKWORM, fixed), lookup) == []
    before = pkg(PackageType.DEB, "libssl3", "1.2.3-1", source_name="openssl")
    [found] = match(image(BOOKWORM, before), lookup)
    assert (found.advisory.id, found.ecosystem, found.fixed) == (
        "DSA-9999-1",
        "Debian:12",
        "1.2.3-1+deb12u1",
    )


def test_debian_matches_on_the_source_package_never_the_binary_name(
    store: AdvisoryStore, tmp_path: Path
) -> None:
    feed = _debian_feed(tmp_path)
    decoy = _record("DSA-9998-1", "Debian:12", "libssl3", {"introduced": "0"}, {"fixed": "9.9-1"})
    (feed / "DSA-9998-1.json").write_text(json.dumps(decoy))
    lookup = store.lookup(import_locations(store, [str(feed)]).id)
    binary = pkg(PackageType.DEB, "libssl3", "1.2.3-1", source_name="openssl")
    assert [m.advisory.id for m in match(image(BOOKWORM, binary), lookup)] == ["DSA-9999-1"]
    # The same package on Debian 11, or with no OS known, matches nothing.
    assert match(image(OSRelease("debian", "11"), binary), lookup) == []
    assert match(image(None, binary), lookup) == []


def test_alpine_matches_on_the_origin_with_the_lowest_fix_above_installed(
    store: AdvisoryStore,
) -> None:
    lookup = store.lookup(import_locations(store, [str(FEEDS / "alpine-secdb")]).id)
    libcrypto = pkg(PackageType.APK, "libcrypto1.1", "1.1.1d-r2", source_name="openssl")
    found = {m.advisory.aliases[0]: m.fixed for m in match(image(ALPINE, libcrypto), lookup)}
    assert found == {"CVE-2019-1551": "1.1.1d-r3"}
    older = pkg(PackageType.APK, "libcrypto1.1", "1.1.1a-r1", source_name="openssl")
    found = {m.advisory.aliases[0]: m.fixed for m in match(image(ALPINE, older), lookup)}
    assert found == {
        "CVE-2019-1543": "1.1.1b-r1",
        "CVE-2019-1547": "1.1.1d-r1",
        "CVE-2019-1549": "1.1.1d-r1",
        "CVE-2019-1563": "1.1.1d-r1",
        "CVE-2019-1551": "1.1.1d-r3",
    }
    # Another branch's advisories do not apply.
    assert match(image(OSRelease("alpine", "3.20.3"), older), lookup) == []


def test_almalinux_matches_binary_rpms_once_per_advisory(store: AdvisoryStore) -> None:
    lookup = store.lookup(import_locations(store, [str(FEEDS / "almalinux")]).id)
    java = pkg(PackageType.RPM, "java-1.8.0-openjdk", "1:1.8.0.392.b08-4.el9")
    [found] = [m for m in match(image(ALMA9, java), lookup) if m.advisory.id == "ALSA-2024:0265"]
    assert found.fixed == "1:1.8.0.402.b06-2.el9" and found.ecosystem == "AlmaLinux:9"
    current = pkg(PackageType.RPM, "java-1.8.0-openjdk", "1:1.8.0.402.b06-2.el9")
    assert [
        m for m in match(image(ALMA9, current), lookup) if m.advisory.id == "ALSA-2024:0265"
    ] == []


def test_language_packages_match_their_ecosystem_whatever_the_os(store: AdvisoryStore) -> None:
    lookup = store.lookup(import_locations(store, [str(FEEDS / "pypa"), str(FEEDS / "go")]).id)
    django = pkg(PackageType.PYPI, "Django", "1.0.2")
    ids = {m.advisory.id for m in match(image(ALPINE, django), lookup)}
    assert "PYSEC-2008-1" in ids
    go = json.loads((FEEDS / "go" / "GO-2024-2701.json").read_text())
    entry = go["affected"][0]
    module = entry["package"]["name"]
    events = entry["ranges"][0]["events"]
    fixed = next(e["fixed"] for e in events if "fixed" in e)
    introduced = next(e["introduced"] for e in events if "introduced" in e)
    namespace, _, name = module.rpartition("/")
    gomod = pkg(PackageType.GOLANG, name, "v" + introduced, namespace=namespace)
    [found] = [m for m in match(image(None, gomod), lookup) if m.advisory.id == go["id"]]
    assert found.fixed == fixed and found.ecosystem == "Go"


def test_ecosystems_of_each_release() -> None:
    deb = pkg(PackageType.DEB, "x", "1")
    assert ecosystem(deb, BOOKWORM) == "Debian:12"
    assert ecosystem(deb, OSRelease("ubuntu", "22.04")) == "Ubuntu:22.04:LTS"
    assert ecosystem(deb, OSRelease("ubuntu", "24.10")) == "Ubuntu:24.10"
    assert (
        ecosystem(pkg(PackageType.APK, "x", "1"), OSRelease("alpine", "3.20.3")) == "Alpine:v3.20"
    )
    rpm = pkg(PackageType.RPM, "x", "1")
    assert ecosystem(rpm, OSRelease("rocky", "9.3")) == "Rocky Linux:9"
    assert ecosystem(rpm, BOOKWORM) is None  # an rpm database on Debian has no advisories
    assert not supported_os(OSRelease("debian", ""))  # sid
    assert not supported_os(OSRelease("gentoo", "2.15")) and not supported_os(None)
