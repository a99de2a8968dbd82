"""apk's database, ``lib/apk/db/installed``: one paragraph per package of
single-letter fields (``P`` name, ``V`` version, ``A`` arch, ``o`` origin,
which Alpine's secdb names)."""

from __future__ import annotations

from moorage.va.detect import Detector
from moorage.va.model import Entry, FoundPackage, PackageType

KIND = "apk"
INSTALLED = "lib/apk/db/installed"


def packages(text: str, path: str) -> tuple[FoundPackage, ...]:
    found: list[FoundPackage] = []
    fields: dict[str, str] = {}

    def flush() -> None:
        name, version = fields.get("P", ""), fields.get("V", "")
        if name and version:
            found.append(
                FoundPackage(
                    type=PackageType.APK,
                    name=name,
                    version=version,
                    path=path,
                    source_name=fields.get("o") or name,
                    source_version=version,
                    arch=fields.get("A") or None,
                )
            )
        fields.clear()

    for line in text.splitlines():
        if not line.strip():
            flush()
        elif len(line) >= 2 and line[1] == ":" and line[0] in "PVAo":
            fields.setdefault(line[0], line[2:].strip())
    flush()
    return tuple(found)


class Apk:
    kind = KIND

    def wants(self, path: str, mode: int, size: int) -> bool:
        return path == INSTALLED

    def parse(self, path: str, data: bytes) -> Entry | None:
        return Entry(path=path, kind=KIND, packages=packages(data.decode("utf-8", "replace"), path))


DETECTORS: list[Detector] = [Apk()]
