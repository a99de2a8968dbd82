"""Installed Python distributions: ``*.dist-info/METADATA`` (wheels, pip),
``*.egg-info/PKG-INFO`` (setuptools, ``pip install -e``) and a bare
``*.egg-info`` file (distutils installs, as Debian's python3 packages still
ship some). The name is kept as written; the purl normalises it.

Only the header block is parsed (up to the first blank line): the body is
the long description, often most of the file, and never names a version."""

from __future__ import annotations

import email.parser
import email.policy

from moorage.va.detect import Detector
from moorage.va.model import Entry, FoundPackage, PackageType

MAX_METADATA_BYTES = 8 * 1024 * 1024


def _headers(data: bytes) -> bytes:
    data = data.replace(b"\r\n", b"\n")
    end = data.find(b"\n\n")
    return data if end < 0 else data[: end + 1]


class PythonDetector:
    kind = "python"

    def wants(self, path: str, mode: int, size: int) -> bool:
        if size > MAX_METADATA_BYTES:
            return False
        directory, _, base = path.rpartition("/")
        return (
            (base == "METADATA" and directory.endswith(".dist-info"))
            or (base == "PKG-INFO" and directory.endswith(".egg-info"))
            or base.endswith(".egg-info")
        )

    def parse(self, path: str, data: bytes) -> Entry | None:
        text = _headers(data).decode("utf-8", "replace")
        message = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text)
        name, version = message.get("Name"), message.get("Version")
        if not isinstance(name, str) or not isinstance(version, str):
            return None
        name, version = name.strip(), version.strip()
        if not name or not version:
            return None
        return Entry(path, self.kind, (FoundPackage(PackageType.PYPI, name, version, path),))


DETECTORS: list[Detector] = [PythonDetector()]
