"""dpkg's database: ``var/lib/dpkg/status``, and the one-stanza-per-package
files of ``var/lib/dpkg/status.d/`` that distroless images carry instead.
Only installed packages count; ``Source:`` (with its own version in
parentheses when it differs) is what Debian and Ubuntu advisories name."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from moorage.va.detect import Detector
from moorage.va.model import Entry, FoundPackage, PackageType

KIND = "dpkg"
STATUS = "var/lib/dpkg/status"
STATUS_D = "var/lib/dpkg/status.d"

# dpkg's package states whose files are on disk. "half-installed" and
# "config-files" are not; "not-installed" is a forgotten selection.
_PRESENT = {"installed", "unpacked", "half-configured", "triggers-awaited", "triggers-pending"}


def stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs as field → first line (continuation lines, which only
    long fields such as Description have, are not needed)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
                fields = {}
            continue
        if line[0] in " \t" or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    if fields:
        yield fields


def package(fields: dict[str, str], path: str) -> FoundPackage | None:
    name, version = fields.get("package", ""), fields.get("version", "")
    if not name or not version:
        return None
    state = fields.get("status", "installed").split()  # distroless stanzas have none
    if not state or state[-1] not in _PRESENT:
        return None
    source_name, source_version = name, version
    if source := fields.get("source"):
        source_name, _, rest = source.partition(" ")
        rest = rest.strip()
        if rest.startswith("(") and rest.endswith(")"):
            source_version = rest[1:-1].strip() or version
    return FoundPackage(
        type=PackageType.DEB,
        name=name,
        version=version,
        path=path,
        source_name=source_name,
        source_version=source_version,
        arch=fields.get("architecture") or None,
    )


class Dpkg:
    kind = KIND

    def wants(self, path: str, mode: int, size: int) -> bool:
        if path == STATUS:
            return True
        directory, base = posixpath.split(path)
        return directory == STATUS_D and not base.endswith(".md5sums") and not base.startswith(".")

    def parse(self, path: str, data: bytes) -> Entry | None:
        text = data.decode("utf-8", "replace")
        found = tuple(p for f in stanzas(text) if (p := package(f, path)) is not None)
        return Entry(path=path, kind=KIND, packages=found)


DETECTORS: list[Detector] = [Dpkg()]
