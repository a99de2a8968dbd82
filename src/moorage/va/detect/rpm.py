"""rpm's database in its three forms: SQLite ``rpmdb.sqlite`` (RHEL 9,
Fedora, CBL-Mariner), Berkeley DB ``Packages`` (RHEL 7/8, CentOS) and NDB
``Packages.db`` (SUSE). All three hold the same header blobs; dissect.database
reads the first two (and the blobs) in pure Python from memory, so no temp
file is needed; NDB is a plain slot table, read here.

The source RPM's name is what distribution advisories name."""

from __future__ import annotations

import io
import posixpath
import struct
from collections.abc import Iterator
from typing import Any

from dissect.database.bsd.db import DB
from dissect.database.bsd.tools.c_rpm import c_rpm
from dissect.database.bsd.tools.rpm import HeaderBlob
from dissect.database.sqlite3 import SQLite3

from moorage.va.detect import Detector, PartialRead
from moorage.va.model import Entry, FoundPackage, PackageType

KIND = "rpm"
DIRECTORIES = ("var/lib/rpm", "usr/lib/sysimage/rpm")
SQLITE, BERKELEY, NDB = "rpmdb.sqlite", "Packages", "Packages.db"

_TAG = c_rpm.rpmTag


class NDBError(ValueError):
    pass


# NDB (rpm's lib/backend/ndb/rpmpkg.c): a 32-byte header ("RpmP", version 0,
# generation, slot page count), slot pages of 16-byte slots ("Slot", package
# index, block offset, block count; the header takes the first two), and each
# package's blob in 16-byte blocks behind a 16-byte blob header ("BlbS",
# package index, checksum, length). All little-endian.
_NDB_MAGIC = b"RpmP"
_SLOT_MAGIC = b"Slot"
_BLOB_MAGIC = b"BlbS"
_NDB_BLOCK = 16
_NDB_PAGE = 4096
_NDB_MAX_PAGES = 2048  # 524,288 slots: far above any real database


def ndb_blobs(data: bytes) -> Iterator[bytes]:
    """Each package's header blob, in slot order. Bounds are checked against
    ``data`` throughout: a hostile file raises NDBError, never reads past it."""
    if len(data) < 32 or data[:4] != _NDB_MAGIC:
        raise NDBError("not an NDB Packages.db")
    version, _generation, pages = struct.unpack_from("<III", data, 4)
    if version != 0:
        raise NDBError(f"NDB version {version} is not supported")
    if not 0 < pages <= _NDB_MAX_PAGES or pages * _NDB_PAGE > len(data):
        raise NDBError(f"NDB slot page count {pages} does not fit the file")
    for offset in range(32, pages * _NDB_PAGE, 16):
        magic, index, block, _count = struct.unpack_from("<4sIII", data, offset)
        if magic != _SLOT_MAGIC:
            raise NDBError(f"bad NDB slot at {offset}")
        if index == 0:
            continue
        start = block * _NDB_BLOCK
        if start + 16 > len(data):
            raise NDBError(f"NDB slot {index} points past the end")
        blob_magic, blob_index, _checksum, length = struct.unpack_from("<4sIII", data, start)
        if blob_magic != _BLOB_MAGIC or blob_index != index:
            raise NDBError(f"NDB blob of package {index} is missing")
        if start + 16 + length > len(data):
            raise NDBError(f"NDB blob of package {index} runs past the end")
        yield data[start + 16 : start + 16 + length]


class PageBudgetError(ValueError):
    pass


def _count_pages(db: Any, names: tuple[str, ...], pages: int) -> None:
    """Counts every page fetch of a dissect database (cached or not) and stops
    the read past a few times the file's page count: a crafted overflow chain
    that loops back makes dissect's readers loop for ever, growing memory."""
    limit = 8 * pages + 1024
    reads = 0
    for name in names:
        fetch = getattr(db, name)

        def counted(num: int, fetch: Any = fetch) -> Any:
            nonlocal reads
            reads += 1
            if reads > limit:
                raise PageBudgetError(f"over {limit} page reads: a page cycle")
            return fetch(num)

        setattr(db, name, counted)


def sqlite_blobs(data: bytes) -> Iterator[bytes]:
    db = SQLite3(io.BytesIO(data))
    _count_pages(db, ("page", "raw_page"), len(data) // max(db.page_size, 512))
    table = db.table("Packages")
    if table is None:
        raise ValueError("no Packages table")
    for row in table.rows():
        blob = row.get("blob")
        if isinstance(blob, bytes):
            yield blob


def berkeley_blobs(data: bytes) -> Iterator[bytes]:
    db = DB(io.BytesIO(data))
    _count_pages(db, ("page",), len(data) // max(db.page_size, 512))
    for _, blob in db.records():
        if len(blob) > 4:  # record 0 holds a counter, not a header
            yield blob


def _text(blob: HeaderBlob, tag: c_rpm.rpmTag) -> str | None:
    if tag not in blob:
        return None
    value = blob.value(tag)
    return value if isinstance(value, str) else None


def header_package(blob_bytes: bytes, path: str) -> FoundPackage | None:
    """The package one header blob describes; None for rpm's pseudo-packages
    (imported signing keys) and headers without a name or version."""
    blob = HeaderBlob(blob_bytes)
    name, version, release = (
        _text(blob, t) for t in (_TAG.RPMTAG_NAME, _TAG.RPMTAG_VERSION, _TAG.RPMTAG_RELEASE)
    )
    if not name or not version or name == "gpg-pubkey":
        return None
    epoch = blob.value(_TAG.RPMTAG_EPOCH) if _TAG.RPMTAG_EPOCH in blob else None
    full = f"{version}-{release}" if release else version
    if isinstance(epoch, int) and epoch:
        full = f"{epoch}:{full}"
    source_name, source_version = name, full
    if sourcerpm := _text(blob, _TAG.RPMTAG_SOURCERPM):
        stem = sourcerpm.removesuffix(".rpm").removesuffix(".src").removesuffix(".nosrc")
        parts = stem.rsplit("-", 2)
        if len(parts) == 3 and all(parts):
            source_name, source_version = parts[0], f"{parts[1]}-{parts[2]}"
    return FoundPackage(
        type=PackageType.RPM,
        name=name,
        version=full,
        path=path,
        source_name=source_name,
        source_version=source_version,
        arch=_text(blob, _TAG.RPMTAG_ARCH),
    )


class Rpm:
    kind = KIND

    def wants(self, path: str, mode: int, size: int) -> bool:
        directory, base = posixpath.split(path)
        return directory in DIRECTORIES and base in (SQLITE, BERKELEY, NDB)

    def parse(self, path: str, data: bytes) -> Entry | None:
        base = posixpath.basename(path)
        blobs = {SQLITE: sqlite_blobs, BERKELEY: berkeley_blobs, NDB: ndb_blobs}[base](data)
        found: list[FoundPackage] = []
        bad = 0
        problem = ""
        try:
            for blob in blobs:
                try:
                    package = header_package(blob, path)
                except Exception as e:  # one bad header costs one package, not the database
                    bad += 1
                    problem = problem or repr(e)
                    continue
                if package is not None:
                    found.append(package)
        except Exception as e:
            if not found and not bad:
                raise
            problem = problem or repr(e)
            bad += 1
        entry = Entry(path=path, kind=KIND, packages=tuple(found))
        if bad:
            raise PartialRead(entry, f"{bad} rpm headers unreadable ({problem})")
        return entry


DETECTORS: list[Detector] = [Rpm()]
