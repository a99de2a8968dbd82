"""Maven artifacts in Java archives (``.jar``, ``.war``, ``.ear`` and
Jenkins' ``.hpi``/``.jpi``): every ``META-INF/maven/**/pom.properties``
(groupId as the purl namespace, artifactId, version), in the archive and in
the archives nested in it (Spring Boot's ``BOOT-INF/lib/``, a war's
``WEB-INF/lib/``, an ear's modules), to a bounded depth and total size.

An archive without any ``pom.properties`` falls back to its
``META-INF/MANIFEST.MF``: the artifactId is the file name without its
version (or else ``Implementation-Title``, ``Bundle-SymbolicName``), the
version ``Implementation-Version`` (or ``Bundle-Version``), the namespace
``Implementation-Vendor-Id`` when given and none otherwise: a guessed group
would match advisories of another project.

Every read from an archive is bounded (a member is read only up to its
limit, whatever its header claims), so a zip bomb costs at most those
limits; past the total the entry says ``partial`` in its facts."""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field

from moorage.va.detect import Detector
from moorage.va.model import Entry, FoundPackage, PackageType

ARCHIVE_SUFFIXES = (".jar", ".war", ".ear", ".hpi", ".jpi")
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024  # the outer file; the layer budget still applies
MAX_NESTED_BYTES = 64 * 1024 * 1024  # one nested archive, decompressed
MAX_TOTAL_BYTES = 256 * 1024 * 1024  # all nested archives of one file, decompressed
MAX_DEPTH = 3  # outer archive = 0
MAX_TEXT_BYTES = 64 * 1024  # one pom.properties or MANIFEST.MF
MAX_MEMBERS = 100_000
_VERSIONED_NAME = re.compile(r"^(?P<name>.+?)-(?P<version>\d[\w.+-]*)$")


@dataclass
class _Budget:
    remaining: int = MAX_TOTAL_BYTES
    partial: list[str] = field(default_factory=list)


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes | None:
    """At most ``limit`` bytes of a member, ``None`` if it holds more.

    zipfile stops decompressing at the size the header declares, so checking
    that first bounds a lying member too. Jars use only stored and deflated
    members; bzip2 and lzma are refused, since zipfile inflates those a whole
    compressed chunk at a time, unbounded."""
    if info.file_size > limit or info.compress_type not in (
        zipfile.ZIP_STORED,
        zipfile.ZIP_DEFLATED,
    ):
        return None
    with archive.open(info) as member:
        data = member.read(limit + 1)
    return None if len(data) > limit else data


def _properties(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            key, sep, value = line.partition(":")
        values[key.strip()] = value.strip()
    return values


def _manifest(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    last = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith(" ") and last:  # a continuation line
            values[last] += line[1:]
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip()
            values[last] = value.strip()
    return values


def _from_manifest(manifest: dict[str, str], archive_name: str, path: str) -> FoundPackage | None:
    stem = archive_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    named = _VERSIONED_NAME.match(stem)
    version = manifest.get("Implementation-Version") or manifest.get("Bundle-Version") or ""
    if named and (not version or named["version"] == version):
        name, version = named["name"], named["version"]
    else:
        symbolic = manifest.get("Bundle-SymbolicName", "").split(";", 1)[0].strip()
        name = manifest.get("Implementation-Title") or symbolic or stem
    if not name or not version:
        return None
    group = manifest.get("Implementation-Vendor-Id") or None
    return FoundPackage(PackageType.MAVEN, name, version, path, namespace=group)


def _scan(data: bytes, name: str, path: str, depth: int, budget: _Budget) -> list[FoundPackage]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()[:MAX_MEMBERS]
    except Exception:  # BadZipFile, NotImplementedError (a made-up zip version), struct errors
        return []
    found: list[FoundPackage] = []
    manifest: dict[str, str] | None = None
    has_pom = False
    for info in members:
        member = info.filename
        lower = member.lower()
        try:
            if lower.startswith("meta-inf/maven/") and lower.endswith("/pom.properties"):
                has_pom = True
                raw = _read(archive, info, MAX_TEXT_BYTES)
                values = _properties(raw.decode("utf-8", "replace")) if raw else {}
                group, artifact, version = (
                    values.get(k) for k in ("groupId", "artifactId", "version")
                )
                if group and artifact and version:
                    found.append(
                        FoundPackage(PackageType.MAVEN, artifact, version, path, namespace=group)
                    )
            elif lower == "meta-inf/manifest.mf":
                raw = _read(archive, info, MAX_TEXT_BYTES)
                manifest = _manifest(raw.decode("utf-8", "replace")) if raw else None
            elif lower.endswith(ARCHIVE_SUFFIXES) and not info.is_dir():
                if depth + 1 > MAX_DEPTH:
                    budget.partial.append(f"{member}: nested deeper than {MAX_DEPTH}")
                    continue
                limit = min(MAX_NESTED_BYTES, budget.remaining)
                nested = _read(archive, info, limit)
                if nested is None:
                    budget.partial.append(
                        f"{member}: over {limit} bytes, or compressed other than by deflate"
                    )
                    continue
                budget.remaining -= len(nested)
                found.extend(_scan(nested, member, path, depth + 1, budget))
        except Exception:  # zipfile and zlib raise many types on crafted members
            budget.partial.append(f"{member}: unreadable")
    if not has_pom and manifest:
        own = _from_manifest(manifest, name, path)
        if own is not None:
            found.insert(0, own)
    return found


class JarDetector:
    kind = "java"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return path.lower().endswith(ARCHIVE_SUFFIXES) and size <= MAX_ARCHIVE_BYTES

    def parse(self, path: str, data: bytes) -> Entry | None:
        budget = _Budget()
        found = _scan(data, path, path, 0, budget)
        if not found and not budget.partial:
            return None
        facts = (("partial", "; ".join(budget.partial[:10])),) if budget.partial else ()
        return Entry(path, self.kind, tuple(dict.fromkeys(found)), facts)


DETECTORS: list[Detector] = [JarDetector()]
