"""Detectors: one module per file format, chosen by the layer reader from
this registry, as storage drivers are chosen by name.

A detector decides from a tar member's header alone whether it wants the
file (``wants``), so the reader buffers only those; ``parse`` gets the whole
file (up to the budget) and returns what it declares, or ``None``.

Some facts need no file content (a symlink's target, a world-writable mode,
a binary's presence): a module may also export ``HEADER_DETECTORS``, which
see every member's header and never its data."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from moorage.va.model import Entry

MODULES = ("os_release", "dpkg", "apk", "rpm", "config", "python", "node", "golang", "java", "rust")


class Detector(Protocol):
    kind: str

    def wants(self, path: str, mode: int, size: int) -> bool:
        """``path`` without a leading "/", ``mode`` the tar member's mode bits."""

    def parse(self, path: str, data: bytes) -> Entry | None: ...


@dataclass(frozen=True)
class Member:
    """A tar member's header, its path already normalised (no leading "/")."""

    path: str
    kind: str  # "file", "dir", "symlink", "hardlink" or "other"
    mode: int  # permission bits, with set-id and sticky bits
    size: int
    linkname: str = ""  # a symlink's target as stored, a hard link's normalised target


class PartialRead(Exception):
    """Raised by ``parse`` when it could read only part of a file: the layer
    keeps ``entry`` and is marked PARTIAL with ``reason``."""

    def __init__(self, entry: Entry, reason: str) -> None:
        super().__init__(reason)
        self.entry = entry
        self.reason = reason


class HeaderDetector(Protocol):
    kind: str

    def header(self, member: Member) -> Entry | None: ...


def detectors() -> list[Detector]:
    found: list[Detector] = []
    for name in MODULES:
        module = importlib.import_module(f"moorage.va.detect.{name}")
        found.extend(module.DETECTORS)
    return found


def header_detectors() -> list[HeaderDetector]:
    found: list[HeaderDetector] = []
    for name in MODULES:
        module = importlib.import_module(f"moorage.va.detect.{name}")
        found.extend(getattr(module, "HEADER_DETECTORS", ()))
    return found
