"""Layers for the Advisor's tests: tar streams built member by member (as a
layer's tar is), compressed as registries carry them, and the real Debian
root that ``debootstrap`` builds, cached where scripts/install-test-deps.sh
builds it too."""

from __future__ import annotations

import fcntl
import functools
import gzip
import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zstandard

TOOLS = Path(os.environ.get("MOORAGE_TOOLS", "/var/cache/moorage-tools"))
DEBIAN_ROOT = TOOLS / "debootstrap-bookworm"
DATA = Path(__file__).parent / "data" / "va" / "os"


@dataclass(frozen=True)
class M:
    """One member of a test layer."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    mode: int = 0o644
    linkname: str = ""


def tar(*members: M, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.kind
            info.mode = m.mode
            info.linkname = m.linkname
            info.size = len(m.data) if m.kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(m.data) if m.kind == tarfile.REGTYPE else None)
    return out.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, 6, mtime=0)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


@functools.cache
def fixture(name: str) -> bytes:
    """A fixture of tests/data/va/os, ungzipped when it is a .gz of one file."""
    data = (DATA / name).read_bytes()
    if name.endswith(".gz") and not name.endswith(".tar.gz"):
        return gzip.decompress(data)
    return data


def debian_root() -> Path:
    """``debootstrap --variant=minbase bookworm``, built once (under a lock,
    into a temporary directory renamed into place) and reused."""
    status = DEBIAN_ROOT / "var/lib/dpkg/status"
    if status.exists():
        return DEBIAN_ROOT
    TOOLS.mkdir(parents=True, exist_ok=True)
    with open(TOOLS / "debootstrap-bookworm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not status.exists():
            work = TOOLS / "debootstrap-bookworm.tmp"
            shutil.rmtree(work, ignore_errors=True)
            subprocess.run(
                ["debootstrap", "--variant=minbase", "bookworm", str(work)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            work.rename(DEBIAN_ROOT)
    return DEBIAN_ROOT


def root_layer(root: Path, out: Path) -> Path:
    """The root file system as one uncompressed layer tar, as ``tar`` writes
    it (apt's downloaded .debs left out, as Debian's images leave them out)."""
    subprocess.run(
        [
            "tar",
            "--numeric-owner",
            "--exclude=./var/cache/apt/archives/*.deb",
            "-C",
            str(root),
            "-cf",
            str(out),
            ".",
        ],
        check=True,
    )
    return out


def member_data(layer: bytes, name: str) -> bytes:
    """One file of a (possibly gzipped) tar, read with tarfile itself."""
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()
