"""Detectors: one module per file format, chosen by the layer reader from
this registry, as storage drivers are chosen by name.

A detector decides from a tar member's header alone whether it wants the
file (``wants``), so the reader buffers only those; ``parse`` gets the whole
file (up to the budget) and returns what it declares, or ``None``."""

from __future__ import annotations

import importlib
from typing import Protocol

from moorage.va.model import Entry

MODULES = ("os_release", "dpkg", "apk", "rpm", "config", "python", "node", "golang", "java", "rust")


class Detector(Protocol):
    kind: str

    def wants(self, path: str, mode: int, size: int) -> bool:
        """``path`` without a leading "/", ``mode`` the tar member's mode bits."""

    def parse(self, path: str, data: bytes) -> Entry | None: ...


def detectors() -> list[Detector]:
    found: list[Detector] = []
    for name in MODULES:
        module = importlib.import_module(f"moorage.va.detect.{name}")
        found.extend(module.DETECTORS)
    return found
