"""Rust crates: ``Cargo.lock`` files (format versions 1 to 4 share the
``[[package]]`` table) and the dependency list ``cargo auditable`` embeds in
executables (the ``.dep-v0`` ELF section: zlib-compressed JSON).

Left out, in both: the workspace's own crates (no ``source`` in a lock file,
``"source": "local"`` in auditable data), which are the program itself and
would only collide with unrelated crates.io names; and, in auditable data,
build-only dependencies (``"kind": "build"``), which ran when the binary was
built and are not in it."""

from __future__ import annotations

import json
import tomllib
import zlib
from typing import Any

from moorage.va.detect import Detector
from moorage.va.detect.elf import Elf, section_names, wants_executable
from moorage.va.model import Entry, FoundPackage, PackageType

AUDIT_SECTION = ".dep-v0"
MAX_LOCK_BYTES = 16 * 1024 * 1024
# Decompressed auditable data is a few bytes per crate; this bounds a bomb.
MAX_AUDIT_JSON_BYTES = 16 * 1024 * 1024


def _crate(name: Any, version: Any, path: str) -> FoundPackage | None:
    if isinstance(name, str) and isinstance(version, str) and name and version:
        return FoundPackage(PackageType.CARGO, name, version, path)
    return None


def _entry(path: str, kind: str, packages: list[FoundPackage | None]) -> Entry:
    return Entry(path, kind, tuple(dict.fromkeys(p for p in packages if p is not None)))


class CargoLockDetector:
    kind = "rust"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return path.rsplit("/", 1)[-1] == "Cargo.lock" and size <= MAX_LOCK_BYTES

    def parse(self, path: str, data: bytes) -> Entry | None:
        try:
            lock = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
            return None
        listed = lock.get("package")
        if not isinstance(listed, list):
            return None
        return _entry(
            path,
            self.kind,
            [
                _crate(p.get("name"), p.get("version"), path)
                for p in listed
                if isinstance(p, dict) and isinstance(p.get("source"), str)
            ],
        )


def audit_data(data: bytes) -> Any:
    """The decoded JSON of an executable's ``.dep-v0`` section, or ``None``."""
    if AUDIT_SECTION.encode() + b"\0" not in section_names(data):  # cheap, before pyelftools
        return None
    elf = Elf.open(data)
    section = elf.section(AUDIT_SECTION) if elf is not None else None
    if not section:
        return None
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(section, MAX_AUDIT_JSON_BYTES)
        return json.loads(text)
    except (zlib.error, ValueError, RecursionError):
        return None  # corrupt, truncated by the bound, or not JSON


class CargoAuditableDetector:
    kind = "rust"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return wants_executable(mode, size)

    def parse(self, path: str, data: bytes) -> Entry | None:
        audit = audit_data(data)
        listed = audit.get("packages") if isinstance(audit, dict) else None
        if not isinstance(listed, list):
            return None
        return _entry(
            path,
            self.kind,
            [
                _crate(p.get("name"), p.get("version"), path)
                for p in listed
                if isinstance(p, dict)
                and p.get("source", "crates.io") != "local"
                and p.get("kind") != "build"
            ],
        )


DETECTORS: list[Detector] = [CargoLockDetector(), CargoAuditableDetector()]
