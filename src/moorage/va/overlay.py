"""Layer indexes stacked into one image's contents, as the container runtime
stacks the layers: an upper layer's file replaces the lower one at its path,
a whiteout (``.wh.<name>``) deletes a path and everything under it, an opaque
directory (``.wh..wh..opq``) hides everything the lower layers put in it.
A layer's whiteouts apply to the layers below it, never to its own files.

Each package keeps the lowest layer from which its name and version at its
path survived to the top, so a finding names the layer that brought the
package, not the last one that rewrote the database around it."""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Sequence

from packageurl import PackageURL

from moorage.va.detect.os_release import KIND as OS_RELEASE
from moorage.va.detect.os_release import PATHS as OS_RELEASE_PATHS
from moorage.va.detect.os_release import SYMLINK
from moorage.va.model import (
    Entry,
    FoundPackage,
    ImageContents,
    LayerIndex,
    LayerState,
    OSRelease,
    Package,
    PackageType,
)

_MAX_SYMLINK_HOPS = 8
_DEFAULT_NAMESPACE = {PackageType.DEB: "debian", PackageType.APK: "alpine"}

_PackageKey = tuple[str, str | None, str, str, str | None]


def _key(p: FoundPackage) -> _PackageKey:
    return (p.type.value, p.namespace, p.name, p.version, p.arch)


def _ancestors(path: str) -> list[str]:
    """Every proper ancestor directory of ``path``: "a", "a/b" for "a/b/c"."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class _Stack:
    """The surviving entries by path (then kind), each with the layer that
    wrote it, and per path the layer each package first came from."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, tuple[Entry, str]]] = {}
        self.origins: dict[str, dict[_PackageKey, str]] = {}

    def delete(self, whiteouts: Sequence[str], opaque: Sequence[str]) -> None:
        if not whiteouts and not opaque:
            return
        gone, hidden = set(whiteouts), set(opaque)
        for path in list(self.entries):
            above = _ancestors(path)
            if path in gone or any(a in gone or a in hidden for a in above):
                del self.entries[path]
                self.origins.pop(path, None)

    def add(self, layer: LayerIndex) -> None:
        fresh: dict[str, dict[str, tuple[Entry, str]]] = {}
        for entry in layer.entries:
            fresh.setdefault(entry.path, {})[entry.kind] = (entry, layer.digest)
        for path, by_kind in fresh.items():
            before = self.origins.get(path, {})
            self.origins[path] = {
                _key(p): before.get(_key(p), layer.digest)
                for entry, _ in by_kind.values()
                for p in entry.packages
            }
            self.entries[path] = by_kind

    def find(self, path: str, kind: str) -> Entry | None:
        found = self.entries.get(path, {}).get(kind)
        return found[0] if found else None


def _os_release(stack: _Stack) -> OSRelease | None:
    """From ``etc/os-release``, else ``usr/lib/os-release``, following the
    symlinks the layers recorded (relative to the link, absolute to the root)."""
    for start in OS_RELEASE_PATHS:
        path = start
        for _ in range(_MAX_SYMLINK_HOPS):
            entry = stack.find(path, OS_RELEASE)
            if entry is None:
                break
            facts = dict(entry.facts)
            if SYMLINK in facts:
                target = posixpath.join(posixpath.dirname(path), facts[SYMLINK])
                path = posixpath.normpath("/" + target).lstrip("/")
                continue
            if not facts:
                break
            return OSRelease(
                id=facts.get("ID", "linux").lower(),
                version_id=facts.get("VERSION_ID", ""),
                pretty_name=facts.get("PRETTY_NAME", ""),
                id_like=tuple(facts.get("ID_LIKE", "").lower().split()),
                version_codename=facts.get("VERSION_CODENAME", ""),
            )
    return None


@functools.lru_cache(maxsize=1 << 16)
def purl(p: FoundPackage, os: OSRelease | None) -> str:
    """Cached: the same packages of the same base layers recur in every image
    that holds them, and building a purl is most of an overlay's time.

    The package URL (purl-spec types deb, apk, rpm with the distribution as
    namespace and ``distro`` qualifier; language types as their ecosystems
    name them). Raises ValueError for a package without a name."""
    qualifiers: dict[str, str] = {}
    namespace = p.namespace
    name, version = p.name, p.version
    if p.type.is_os:
        namespace = os.id if os else _DEFAULT_NAMESPACE.get(p.type)
        if p.arch:
            qualifiers["arch"] = p.arch
    if p.type == PackageType.DEB and os and os.version_id:
        qualifiers["distro"] = f"{os.id}-{os.version_id}"
    elif p.type == PackageType.APK and os and os.version_id:
        qualifiers["distro"] = os.version_id
    elif p.type == PackageType.RPM:
        epoch, colon, rest = version.partition(":")
        if colon and epoch.isdigit():
            qualifiers["epoch"], version = epoch, rest
        if os and os.version_id:
            qualifiers["distro"] = f"{os.id}-{os.version_id.split('.')[0]}"
    elif p.type == PackageType.GOLANG and namespace is None and "/" in name:
        namespace, name = name.rsplit("/", 1)
    try:
        return str(
            PackageURL(
                type=p.type.value,
                namespace=namespace,
                name=name,
                version=version,
                qualifiers=qualifiers or None,
            ).to_string()
        )
    except TypeError as exc:  # a name or version that normalises to nothing ("/", " ")
        raise ValueError(f"no package URL for {name!r} {version!r}") from exc


def overlay(layers: Sequence[LayerIndex]) -> ImageContents:
    """``layers`` bottom first, as the manifest lists them."""
    stack = _Stack()
    partial: list[str] = []
    for layer in layers:
        if layer.state != LayerState.COMPLETE:
            partial.append(layer.digest)
        stack.delete(layer.whiteouts, layer.opaque)
        stack.add(layer)
    os = _os_release(stack)
    packages: list[Package] = []
    entries: list[tuple[Entry, str]] = []
    for path in sorted(stack.entries):
        origins = stack.origins.get(path, {})
        for entry, digest in stack.entries[path].values():
            if not entry.packages:
                entries.append((entry, digest))
            for found in entry.packages:
                try:
                    url = purl(found, os)
                except ValueError:
                    continue  # no detector yields a nameless package; never fail the image on one
                packages.append(
                    Package(purl=url, found=found, layer=origins.get(_key(found), digest))
                )
    return ImageContents(
        os=os, packages=tuple(packages), entries=tuple(entries), partial=tuple(partial)
    )
