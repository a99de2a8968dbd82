"""Which OSV ecosystem, and which name in it, a package is matched in.

OS packages are matched only in their distribution's own ecosystem, never in
an upstream one: a distribution backports fixes without moving the upstream
version, so upstream ranges would flag fixed packages. Debian and Ubuntu
advisories name the source package, Alpine's the origin (aport), and the
rpm distributions list binary packages (as AlmaLinux's ALSA records do)."""

from __future__ import annotations

import re

from moorage.va.model import OSRelease, Package, PackageType

_LANGUAGE = {
    PackageType.PYPI: "PyPI",
    PackageType.NPM: "npm",
    PackageType.GOLANG: "Go",
    PackageType.MAVEN: "Maven",
    PackageType.CARGO: "crates.io",
}

_FAMILY = {
    "debian": PackageType.DEB,
    "ubuntu": PackageType.DEB,
    "alpine": PackageType.APK,
    "almalinux": PackageType.RPM,
    "rocky": PackageType.RPM,
    "rhel": PackageType.RPM,
}


def _major(version_id: str) -> str | None:
    m = re.match(r"(\d+)", version_id)
    return m.group(1) if m else None


def os_ecosystem(os: OSRelease | None) -> str | None:
    """The OSV ecosystem of a release: "Debian:12", "Ubuntu:22.04:LTS",
    "Ubuntu:24.10", "Alpine:v3.20", "AlmaLinux:9", "Rocky Linux:9", "Red Hat:9"
    (the last our own key for Red Hat's CPE-scoped ecosystems, see
    ``index_key``). None when the release is not one we hold advisories for."""
    if os is None:
        return None
    vid = os.version_id.strip()
    if os.id == "debian":
        major = _major(vid)
        return f"Debian:{major}" if major else None  # sid/testing have no VERSION_ID
    if os.id == "ubuntu":
        m = re.fullmatch(r"(\d\d)\.(\d\d)", vid)
        if not m:
            return None
        lts = int(m.group(1)) % 2 == 0 and m.group(2) == "04"
        return f"Ubuntu:{vid}:LTS" if lts else f"Ubuntu:{vid}"
    if os.id == "alpine":
        m = re.match(r"(\d+)\.(\d+)", vid)
        return f"Alpine:v{m.group(1)}.{m.group(2)}" if m else None
    names = {"almalinux": "AlmaLinux", "rocky": "Rocky Linux", "rhel": "Red Hat"}
    if os.id in names:
        major = _major(vid)
        return f"{names[os.id]}:{major}" if major else None
    return None


def supported_os(os: OSRelease | None) -> bool:
    """Whether images of this release can be assessed (its packages matched)."""
    return os_ecosystem(os) is not None


def ecosystem(package: Package, os: OSRelease | None) -> str | None:
    """The ecosystem to match ``package`` in; None when there is none (an OS
    package of an unsupported or mismatched distribution)."""
    kind = package.type
    if kind in _LANGUAGE:
        return _LANGUAGE[kind]
    if os is None or _FAMILY.get(os.id) != kind:
        return None
    return os_ecosystem(os)


def package_name(package: Package) -> str:
    """The name the package's advisories use for it."""
    found = package.found
    if found.type in (PackageType.DEB, PackageType.APK):
        return found.source_name or found.name
    ns = found.namespace
    if found.type == PackageType.MAVEN and ns:
        return f"{ns}:{found.name}"
    if found.type == PackageType.NPM and ns:
        return f"{ns if ns.startswith('@') else '@' + ns}/{found.name}"
    if found.type == PackageType.GOLANG and ns:
        return f"{ns}/{found.name}"
    return found.name


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def index_key(ecosystem: str, name: str) -> tuple[str, str]:
    """The (ecosystem, name) an advisory's affected entry is stored under and
    looked up by: PyPI names normalised (PEP 503), Red Hat's CPE-scoped
    ecosystems ("Red Hat:enterprise_linux:9::appstream") reduced to the
    major release, everything else exact."""
    if ecosystem == "PyPI":
        return ecosystem, _pep503(name)
    if ecosystem.startswith("Red Hat:"):
        m = re.search(r"(?:enterprise_linux|rhel)[^:]*:(\d+)", ecosystem)
        if m:
            return f"Red Hat:{m.group(1)}", name
    return ecosystem, name
