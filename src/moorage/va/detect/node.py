"""npm packages: the ``package.json`` of every installed package and the
project's ``package-lock.json`` (lockfile versions 1, 2 and 3).

Installed packages are the ``package.json`` directly in
``node_modules/<name>/`` or ``node_modules/@scope/<name>/``. Other
``package.json`` files are not packages anyone installed: the application's
own (it is the image's code, not a dependency of it) and the stubs many
packages carry in subdirectories (``lib/esm/package.json`` with only
``"type"``).

In lock files, dependencies marked ``"dev": true`` are left out: a
production image is built with ``npm ci --omit=dev``, and where dev
dependencies were installed after all, their ``node_modules`` manifests
report them. ``node_modules/.package-lock.json`` (npm's record of that tree)
is skipped for the same reason: the manifests beside it say the same thing.
Links (workspace members) and entries without a registry version (git,
file: and tarball URLs) name nothing an advisory could match.

A scope becomes the purl namespace (``@babel`` + ``core``)."""

from __future__ import annotations

import json
from typing import Any

from moorage.va.detect import Detector
from moorage.va.model import Entry, FoundPackage, PackageType

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_LOCK_BYTES = 64 * 1024 * 1024
_MAX_DEPTH = 64  # nesting of lockfile v1 "dependencies"


def _package(full_name: Any, version: Any, path: str) -> FoundPackage | None:
    if not isinstance(full_name, str) or not isinstance(version, str) or not version:
        return None
    if version.startswith("npm:"):  # an alias: "npm:real-name@1.2.3"
        full_name, _, version = version[4:].rpartition("@")
    if ":" in version or "/" in version or not version:
        return None
    scope, _, name = full_name.rpartition("/") if full_name.startswith("@") else ("", "", full_name)
    if not name or (full_name.startswith("@") and not scope):
        return None
    return FoundPackage(PackageType.NPM, name, version, path, namespace=scope or None)


def _load(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def is_installed_manifest(path: str) -> bool:
    parts = path.split("/")
    if len(parts) >= 3 and parts[-3] == "node_modules":
        return not parts[-2].startswith("@") and not parts[-2].startswith(".")
    return len(parts) >= 4 and parts[-4] == "node_modules" and parts[-3].startswith("@")


class PackageJsonDetector:
    kind = "node"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return (
            path.endswith("/package.json")
            and size <= MAX_MANIFEST_BYTES
            and is_installed_manifest(path)
        )

    def parse(self, path: str, data: bytes) -> Entry | None:
        manifest = _load(data)
        if not isinstance(manifest, dict):
            return None
        found = _package(manifest.get("name"), manifest.get("version"), path)
        return Entry(path, self.kind, (found,)) if found else None


def _v1(dependencies: Any, path: str, depth: int = 0) -> list[FoundPackage | None]:
    if not isinstance(dependencies, dict) or depth > _MAX_DEPTH:
        return []
    found: list[FoundPackage | None] = []
    for name, info in dependencies.items():
        if not isinstance(info, dict) or info.get("dev") is True:
            continue
        found.append(_package(name, info.get("version"), path))
        found.extend(_v1(info.get("dependencies"), path, depth + 1))
    return found


def _v2(packages: dict[str, Any], path: str) -> list[FoundPackage | None]:
    found: list[FoundPackage | None] = []
    for key, info in packages.items():
        _, marker, name = key.rpartition("node_modules/")
        if (
            not marker
            or not isinstance(info, dict)
            or info.get("dev") is True
            or info.get("link") is True
        ):
            continue
        found.append(_package(info.get("name", name), info.get("version"), path))
    return found


class PackageLockDetector:
    kind = "node"

    def wants(self, path: str, mode: int, size: int) -> bool:
        named = path == "package-lock.json" or path.endswith("/package-lock.json")
        # A dependency's own lock file says what its authors tested with, not what is installed.
        return named and "node_modules/" not in path and size <= MAX_LOCK_BYTES

    def parse(self, path: str, data: bytes) -> Entry | None:
        lock = _load(data)
        if not isinstance(lock, dict):
            return None
        packages = lock.get("packages")
        # v2 carries both tables; "packages" is the complete one.
        found = (
            _v2(packages, path)
            if isinstance(packages, dict)
            else _v1(lock.get("dependencies"), path)
        )
        return Entry(path, self.kind, tuple(dict.fromkeys(p for p in found if p is not None)))


DETECTORS: list[Detector] = [PackageJsonDetector(), PackageLockDetector()]
