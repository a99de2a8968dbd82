"""os-release (``etc/os-release``, else ``usr/lib/os-release``): the
distribution, which decides the advisory ecosystem. ``etc/os-release`` is
usually a symlink to ``../usr/lib/os-release``; the header detector records
the target so the overlay can follow it across layers."""

from __future__ import annotations

import shlex

from moorage.va.detect import Detector, HeaderDetector, Member
from moorage.va.model import Entry

KIND = "os-release"
PATHS = ("etc/os-release", "usr/lib/os-release")
SYMLINK = "symlink"  # the fact naming a symlink's target
_MAX_BYTES = 64 * 1024


def parse_fields(text: str) -> tuple[tuple[str, str], ...]:
    """``KEY=value`` lines with shell quoting, as os-release(5) defines them;
    a line that does not parse is skipped, as systemd skips it."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        if not key.replace("_", "").isalnum() or not key.isascii():
            continue
        try:
            words = shlex.split(raw, posix=True)
        except ValueError:
            continue
        fields[key] = " ".join(words)
    return tuple(fields.items())


class OSReleaseFile:
    kind = KIND

    def wants(self, path: str, mode: int, size: int) -> bool:
        return path in PATHS and size <= _MAX_BYTES

    def parse(self, path: str, data: bytes) -> Entry | None:
        return Entry(path=path, kind=KIND, facts=parse_fields(data.decode("utf-8", "replace")))


class OSReleaseLink:
    kind = KIND

    def header(self, member: Member) -> Entry | None:
        if member.path not in PATHS:
            return None
        if member.kind == "symlink":
            return Entry(path=member.path, kind=KIND, facts=((SYMLINK, member.linkname),))
        if member.kind == "hardlink" and member.linkname:
            # The same file as another path of this layer: followed like a
            # symlink to it, from the root.
            return Entry(path=member.path, kind=KIND, facts=((SYMLINK, "/" + member.linkname),))
        return None


DETECTORS: list[Detector] = [OSReleaseFile()]
HEADER_DETECTORS: list[HeaderDetector] = [OSReleaseLink()]
