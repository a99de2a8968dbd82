"""Go modules compiled into an executable, from the build information the Go
linker writes into it (what ``go version -m`` prints).

The build info is found by its magic in the ``.go.buildinfo`` section (or,
when section headers were stripped, anywhere in the file). Go 1.18 and
later store the two strings inline after the 32-byte header; older linkers
store pointers to Go string headers, resolved through the loaded segments.

Found: the main module (unless ``(devel)``: a local build names no version
an advisory could match), every ``dep`` line with its ``=>`` replacement
applied (a replacement by a local directory has no version and is left
out), and the toolchain as ``stdlib`` at ``v1.22.1`` for ``go1.22.1``, since
Go's advisories name the standard library so. Module paths become purl
namespace and name (``github.com/google`` + ``uuid``) as the purl spec has
them; the OSV name is the two joined by "/".

``go.mod`` and ``go.sum`` are not indexed: in an image they are source (the
Go distribution alone ships dozens, under ``src/`` and the module cache),
and what a program runs is what its binary's build info says."""

from __future__ import annotations

import re
from typing import Literal

from moorage.va.detect import Detector
from moorage.va.detect.elf import Elf, section_names, wants_executable
from moorage.va.model import Entry, FoundPackage, PackageType

BUILDINFO_MAGIC = b"\xff Go buildinf:"
_HEADER = 32
_MAX_STRING = 4 * 1024 * 1024
_GO_RELEASE = re.compile(r"go1\.(\d+)(?:\.(\d+))?(?:(rc|beta)(\d+))?$")


def _uvarint(data: memoryview, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


def _inline_strings(blob: memoryview) -> tuple[str, str] | None:
    found: list[str] = []
    pos = _HEADER
    for _ in range(2):
        decoded = _uvarint(blob, pos)
        if decoded is None:
            return None
        length, pos = decoded
        if length > _MAX_STRING or pos + length > len(blob):
            return None
        found.append(bytes(blob[pos : pos + length]).decode("utf-8", "replace"))
        pos += length
    return found[0], found[1]


def _pointer_strings(elf: Elf, blob: memoryview) -> tuple[str, str] | None:
    size = blob[14]
    if size not in (4, 8) or len(blob) < 16 + 2 * size:
        return None
    order: Literal["little", "big"] = "big" if blob[15] & 1 else "little"

    def word(raw: bytes | memoryview, at: int) -> int:
        return int.from_bytes(raw[at : at + size], order)

    found: list[str] = []
    for at in (16, 16 + size):
        header = elf.read(word(blob, at), 2 * size)
        if header is None:
            return None
        length = word(header, size)
        if length > _MAX_STRING:
            return None
        text = elf.read(word(header, 0), length) if length else b""
        if text is None:
            return None
        found.append(text.decode("utf-8", "replace"))
    return found[0], found[1]


def build_info(data: bytes) -> tuple[str, str] | None:
    """The Go version and module information of an ELF executable, or ``None``."""
    # Most executables of an image are not Go's: a look at the section names
    # turns them away before pyelftools is asked. Without section headers
    # (sstrip) the magic is searched for instead.
    names = section_names(data)
    candidate = b".go.buildinfo\0" in names if names else BUILDINFO_MAGIC in data
    if not candidate:
        return None
    elf = Elf.open(data)
    if elf is None:
        return None
    section = elf.section(".go.buildinfo")
    haystack = section if section is not None and section.startswith(BUILDINFO_MAGIC) else data
    # Without the section, the magic may also be a constant in rodata (a
    # program that links debug/buildinfo): take the first that parses.
    at = haystack.find(BUILDINFO_MAGIC)
    strings = None
    while at >= 0 and strings is None:
        blob = memoryview(haystack)[at:]  # no copy per candidate
        if len(blob) >= _HEADER:
            strings = _inline_strings(blob) if blob[15] & 2 else _pointer_strings(elf, blob)
        at = haystack.find(BUILDINFO_MAGIC, at + 1)
    if strings is None:
        return None
    version, modinfo = strings
    # The linker brackets the module text with 16-byte sentinels.
    if len(modinfo) >= 33 and modinfo[-17] == "\n":
        modinfo = modinfo[16:-16]
    return version, modinfo


def stdlib_version(go: str) -> str | None:
    """``go1.22.1`` -> ``v1.22.1``, ``go1.20`` -> ``v1.20.0``, ``go1.21rc2`` ->
    ``v1.21.0-rc.2`` (as Go's vulnerability database spells them); ``None``
    for a development toolchain."""
    words = go.split()
    match = _GO_RELEASE.match(words[0]) if words else None
    if match is None:
        return None
    minor, patch, pre, pre_n = match.groups()
    version = f"v1.{minor}.{patch or 0}"
    return f"{version}-{pre}.{pre_n}" if pre else version


def _package(module: str, version: str, path: str) -> FoundPackage:
    namespace, _, name = module.rpartition("/")
    return FoundPackage(PackageType.GOLANG, name, version, path, namespace=namespace or None)


def _modules(modinfo: str) -> list[tuple[str, str]]:
    modules: list[list[str]] = []
    for line in modinfo.splitlines():
        fields = line.split("\t")
        if fields[0] in ("mod", "dep") and len(fields) >= 3:
            modules.append([fields[1], fields[2]])
        elif fields[0] == "=>" and len(fields) >= 3 and modules:
            modules[-1] = [fields[1], fields[2]]
    return [(m, v) for m, v in modules if m and v and v != "(devel)"]


class GoBinaryDetector:
    kind = "go"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return wants_executable(mode, size)

    def parse(self, path: str, data: bytes) -> Entry | None:
        info = build_info(data)
        if info is None:
            return None
        go, modinfo = info
        packages = [_package(module, version, path) for module, version in _modules(modinfo)]
        stdlib = stdlib_version(go)
        if stdlib is not None:
            packages.append(FoundPackage(PackageType.GOLANG, "stdlib", stdlib, path))
        facts = (("go", go),) if go else ()
        return Entry(path, self.kind, tuple(packages), facts)


DETECTORS: list[Detector] = [GoBinaryDetector()]
