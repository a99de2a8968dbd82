"""Values the Advisor's parts hand each other. They are frozen and hold only
strings, numbers and tuples, so they serialise to JSON for the store
(``to_json``/``from_json`` in ``layers.py`` and ``assess.py``) and never
carry ORM rows across layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# Bump when a detector changes what it finds: layers indexed under an older
# version are read again, once, by the next image that needs them.
INDEXER_VERSION = 1


class PackageType(StrEnum):
    """The purl type of a package (https://github.com/package-url/purl-spec)."""

    DEB = "deb"
    APK = "apk"
    RPM = "rpm"
    PYPI = "pypi"
    NPM = "npm"
    GOLANG = "golang"
    MAVEN = "maven"
    CARGO = "cargo"

    @property
    def is_os(self) -> bool:
        return self in (PackageType.DEB, PackageType.APK, PackageType.RPM)


@dataclass(frozen=True)
class FoundPackage:
    """A package as one file of one layer declares it. The operating system
    (and so the advisory ecosystem) is not known yet: os-release may be in
    another layer.

    ``version`` is the package manager's own full version: ``epoch:upstream-
    revision`` for deb, ``epoch:version-release`` for rpm (epoch omitted when
    none), apk's ``1.2.3-r4``, PEP 440 for Python, and so on.
    ``source_name``/``source_version`` are what distribution advisories
    name: deb ``Source:``, apk ``origin``, rpm source RPM name."""

    type: PackageType
    name: str
    version: str
    path: str  # the file that declared it, relative to the root, no leading "/"
    namespace: str | None = None  # purl namespace: Maven groupId, npm scope
    source_name: str | None = None
    source_version: str | None = None
    arch: str | None = None


@dataclass(frozen=True)
class Entry:
    """What one file of a layer contributed; the unit the overlay replaces
    and whiteouts remove, keyed by ``path``.

    ``kind`` names the detector (``os-release``, ``dpkg``, ``apk``, ``rpm``,
    ``python``, ``node``, ``go``, ``java``, ``rust``, ``login.defs``,
    ``sshd``, ``world-writable``); ``facts`` holds a detector's key/value
    findings (os-release fields, login.defs settings)."""

    path: str
    kind: str
    packages: tuple[FoundPackage, ...] = ()
    facts: tuple[tuple[str, str], ...] = ()


class LayerState(StrEnum):
    COMPLETE = "complete"
    PARTIAL = "partial"  # over the size or time budget, or a file could not be read
    UNREADABLE = "unreadable"  # not a tar stream of a known compression


@dataclass(frozen=True)
class LayerIndex:
    """Everything the detectors found in one layer, valid for any image that
    holds the layer: indexed by ``(digest, indexer_version)``.

    ``whiteouts`` are paths this layer deletes from the layers below
    (``.wh.<name>``), ``opaque`` directories whose lower contents it hides
    (``.wh..wh..opq``); both without a leading "/"."""

    digest: str
    indexer_version: int
    entries: tuple[Entry, ...]
    whiteouts: tuple[str, ...] = ()
    opaque: tuple[str, ...] = ()
    state: LayerState = LayerState.COMPLETE
    reason: str = ""  # why PARTIAL or UNREADABLE
    bytes_read: int = 0


@dataclass(frozen=True)
class OSRelease:
    id: str  # "debian", "ubuntu", "alpine", "almalinux", "rocky", "rhel", ...
    version_id: str  # "12", "22.04", "3.20.3", "9.4"
    pretty_name: str = ""
    id_like: tuple[str, ...] = ()
    version_codename: str = ""


@dataclass(frozen=True)
class Package:
    """A package of the image as the overlay leaves it, with the layer that
    brought it (the lowest layer from which this name and version at this
    path survived to the top)."""

    purl: str
    found: FoundPackage
    layer: str  # layer digest

    @property
    def type(self) -> PackageType:
        return self.found.type

    @property
    def name(self) -> str:
        return self.found.name

    @property
    def version(self) -> str:
        return self.found.version


@dataclass(frozen=True)
class ImageContents:
    """One platform of an image after the overlay."""

    os: OSRelease | None
    packages: tuple[Package, ...]
    entries: tuple[tuple[Entry, str], ...]  # surviving non-package entries and their layer
    partial: tuple[str, ...] = ()  # digests of layers that were PARTIAL or UNREADABLE


# --- advisory data ---------------------------------------------------------


@dataclass(frozen=True)
class RangeEvent:
    kind: str  # "introduced", "fixed", "last_affected", "limit"
    version: str


@dataclass(frozen=True)
class AffectedRange:
    type: str  # OSV: "ECOSYSTEM", "SEMVER", "GIT"
    events: tuple[RangeEvent, ...]


@dataclass(frozen=True)
class Affected:
    ecosystem: str  # OSV ecosystem, with its suffix: "Debian:12", "Alpine:v3.20", "PyPI"
    name: str
    ranges: tuple[AffectedRange, ...] = ()
    versions: tuple[str, ...] = ()
    severity: str = ""  # a per-package severity label the record gives, if any


@dataclass(frozen=True)
class Severity:
    type: str  # "CVSS_V3", "CVSS_V4", "CVSS_V2", "Ubuntu", ...
    score: str  # the vector (or label) as the record gives it


@dataclass(frozen=True)
class Advisory:
    id: str
    source: str  # where it was imported from (feed name and file)
    modified: str  # RFC 3339, as the record says
    aliases: tuple[str, ...] = ()
    summary: str = ""
    details: str = ""
    published: str = ""
    withdrawn: str = ""
    severity: tuple[Severity, ...] = ()
    affected: tuple[Affected, ...] = ()
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class Match:
    """A package an advisory names, in an affected version."""

    package: Package
    advisory: Advisory
    ecosystem: str
    fixed: str | None  # the lowest fixed version above the installed one, if any


# --- assessment --------------------------------------------------------------


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"  # only issues without a fix, or exempted ones
    FAIL = "FAIL"
    UNSUPPORTED = "UNSUPPORTED"  # an OS or format the Advisor cannot read
    PARTIAL = "PARTIAL"  # a layer over its budget: not every file was seen
    PENDING = "PENDING"  # not indexed yet


class SeverityLevel(StrEnum):
    CRITICAL = "Critical"
    HIGH = "High"
    MEDIUM = "Medium"
    LOW = "Low"
    NONE = "None"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Exemption:
    id: str
    account: str
    scope: str  # "*" (account), "ns", "ns/repo", "ns/repo:tag", "ns/repo@sha256:..."
    issue_type: str  # "cve" or "configuration"
    issue_id: str
    reason: str = ""
    expires: str = ""  # RFC 3339, empty for never
    created_by: str = ""
    region: str = ""  # the regional registry whose namespaces ``scope`` names


@dataclass(frozen=True)
class Finding:
    advisory_id: str
    aliases: tuple[str, ...]
    summary: str
    severity: SeverityLevel
    cvss_vector: str
    cvss_score: float | None
    package: str  # name
    purl: str
    installed: str
    fixed: str | None
    fix: str  # the OS- or ecosystem-specific command, or advice when no fix exists
    layer: str
    exempted_by: str = ""  # exemption id
    # Who found it: "moorage" and/or the pluggable scanners' labels ("Trivy 0.50.1").
    scanners: tuple[str, ...] = ("moorage",)


@dataclass(frozen=True)
class ConfigIssue:
    id: str  # "ssh_server", "pass_max_days", "pass_min_days", "pass_min_len", ...
    description: str
    fix: str
    path: str = ""
    exempted_by: str = ""


@dataclass(frozen=True)
class Report:
    """The Advisor's verdict on one platform of one image."""

    digest: str  # the platform's image manifest
    platform: str  # "linux/amd64", or "" for a single-platform image
    status: Status
    os: OSRelease | None
    findings: tuple[Finding, ...] = ()
    config_issues: tuple[ConfigIssue, ...] = ()
    snapshot: str = ""  # the advisory snapshot assessed against
    assessed_at: str = ""
    reason: str = ""  # why UNSUPPORTED, PARTIAL or PENDING
    scanners: tuple[str, ...] = field(default=("moorage",))
    queued_at: str = ""  # RFC 3339: when a PENDING platform was queued (for a grace period)
