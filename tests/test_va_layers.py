"""Reading a layer: one pass, any of the registry's compressions, paths
normalised, links never followed, and whatever could not be read made
PARTIAL (or UNREADABLE) with a reason. A layer is attacker input: bombs,
huge files and headers, broken streams and random bytes neither crash the
reader nor grow its memory with the layer."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moorage.va.layers import Budget, index_layer, layer_from_json, layer_to_json, normalise
from moorage.va.model import Entry, FoundPackage, LayerIndex, LayerState, PackageType
from tests.va_layers import M, fixture, gz, tar, zst

STATUS = (
    b"Package: curl\nStatus: install ok installed\nVersion: 7.88.1-10+deb12u5\n"
    b"Architecture: amd64\n"
)
OS = b'ID=debian\nVERSION_ID="12"\n'


def packages(index: LayerIndex) -> list[str]:
    return [p.name for e in index.entries for p in e.packages]


def test_gzip_zstd_and_plain_layers_read_alike() -> None:
    layer = tar(M("etc/os-release", OS), M("var/lib/dpkg/status", STATUS))
    for blob in (layer, gz(layer), zst(layer)):
        index = index_layer(io.BytesIO(blob), "sha256:x")
        assert index.state == LayerState.COMPLETE, index.reason
        assert packages(index) == ["curl"]
        assert index.bytes_read <= len(blob)


def test_paths_are_normalised_and_escapes_refused() -> None:
    layer = tar(
        M("./var/lib/dpkg/status", STATUS),
        M("/etc//./os-release", OS),
        M("../../lib/apk/db/installed", b"P:x\nV:1\n"),
    )
    index = index_layer(io.BytesIO(layer), "sha256:x")
    assert sorted(e.path for e in index.entries) == ["etc/os-release", "var/lib/dpkg/status"]
    assert index.state == LayerState.PARTIAL and "climbs out of the root" in index.reason
    assert normalise("a/../b") == "b"
    assert normalise("a/../../b") is None
    assert normalise("./") == ""


def test_links_are_never_followed() -> None:
    layer = tar(
        M("etc/shadow", b"root:$6$secret"),
        M("var/lib/dpkg/status", kind=tarfile.SYMTYPE, linkname="/etc/shadow"),
        M("lib/apk/db/installed", kind=tarfile.LNKTYPE, linkname="etc/shadow"),
        M("etc/os-release", kind=tarfile.SYMTYPE, linkname="../usr/lib/os-release"),
    )
    index = index_layer(io.BytesIO(layer), "sha256:x")
    assert packages(index) == []
    assert [(e.path, e.facts) for e in index.entries] == [
        ("etc/os-release", (("symlink", "../usr/lib/os-release"),))
    ]
    # The hard link is a file a detector wanted and could not see: said so.
    assert index.state == LayerState.PARTIAL and "hard link" in index.reason


def test_whiteouts_and_opaque_dirs_are_recorded() -> None:
    layer = tar(
        M("var/lib/dpkg/.wh.status"),
        M("usr/lib/python3/.wh..wh..opq"),
        M("etc/.wh..wh.plnk", kind=tarfile.DIRTYPE),
    )
    index = index_layer(io.BytesIO(layer), "sha256:x")
    assert index.whiteouts == ("var/lib/dpkg/status",)
    assert index.opaque == ("usr/lib/python3",)
    assert index.state == LayerState.COMPLETE


def test_not_a_tar_is_unreadable() -> None:
    for blob in (
        b"",
        b"hello world" * 100,
        gz(b"\x01" * 5000),
        b"\xfd7zXZ\x00rest",
        zlib.compress(b"x"),
    ):
        index = index_layer(io.BytesIO(blob), "sha256:x")
        assert index.state == LayerState.UNREADABLE and index.reason


def test_a_broken_stream_is_partial_not_complete() -> None:
    layer = tar(
        M("etc/os-release", OS), M("usr/bin/big", b"x" * 100_000), M("var/lib/dpkg/status", STATUS)
    )
    truncated = index_layer(io.BytesIO(layer[:50_000]), "sha256:x")
    assert truncated.state == LayerState.PARTIAL and truncated.reason
    corrupt = bytearray(layer)
    at = layer.index(b"var/lib/dpkg/status") + 3
    corrupt[at] ^= 0xFF  # a header after the first one, its checksum now wrong
    damaged = index_layer(io.BytesIO(bytes(corrupt)), "sha256:x")
    assert damaged.state == LayerState.PARTIAL and "corrupt tar header" in damaged.reason
    cut_gzip = index_layer(io.BytesIO(gz(layer)[:-100]), "sha256:x")
    assert cut_gzip.state == LayerState.PARTIAL


def test_a_file_over_the_budget_is_partial_and_not_buffered() -> None:
    layer = tar(M("var/lib/dpkg/status", STATUS + b"X" * 5000), M("etc/os-release", OS))
    index = index_layer(io.BytesIO(layer), "sha256:x", Budget(max_file_bytes=1000))
    assert index.state == LayerState.PARTIAL and "var/lib/dpkg/status" in index.reason
    assert [e.path for e in index.entries] == ["etc/os-release"]


def test_size_time_and_entry_budgets_make_partial() -> None:
    bomb = gz(tar(M("bomb", b"\0" * (64 << 20))))  # 64 KiB of gzip, 64 MiB of tar
    layer = tar(M("etc/os-release", OS), M("big", b"\0" * (4 << 20)))
    over_size = index_layer(io.BytesIO(gz(layer)), "sha256:x", Budget(max_layer_bytes=1 << 20))
    assert over_size.state == LayerState.PARTIAL and "size budget" in over_size.reason
    assert index_layer(io.BytesIO(bomb), "sha256:x", Budget(max_layer_bytes=1 << 20)).state != (
        LayerState.COMPLETE
    )
    over_time = index_layer(io.BytesIO(layer), "sha256:x", Budget(max_seconds=0))
    assert over_time.state == LayerState.PARTIAL and "time budget" in over_time.reason
    many = tar(*(M(f"d/.wh.f{i}") for i in range(50)))
    over_entries = index_layer(io.BytesIO(many), "sha256:x", Budget(max_entries=10))
    assert over_entries.state == LayerState.PARTIAL and len(over_entries.whiteouts) <= 11


def test_huge_extended_headers_are_refused() -> None:
    long_name = "usr/" + "a" * (2 << 20)
    layer = tar(M("etc/os-release", OS), M(long_name, b"x"), fmt=tarfile.PAX_FORMAT)
    index = index_layer(io.BytesIO(layer), "sha256:x")
    assert index.state == LayerState.PARTIAL and "extended tar header" in index.reason
    gnu = tar(M("etc/os-release", OS), M(long_name, b"x"), fmt=tarfile.GNU_FORMAT)
    assert index_layer(io.BytesIO(gnu), "sha256:x").state == LayerState.PARTIAL


def test_deep_nesting_and_bad_utf8_names() -> None:
    deep = "/".join(["d"] * 2500) + "/var/lib/dpkg/status"
    layer = tar(M(deep, STATUS), M("etc/\udcffbad", b"x"), M("etc/os-release", OS))
    index = index_layer(io.BytesIO(layer), "sha256:x")
    assert index.state == LayerState.PARTIAL  # the 5000-character path is over PATH_MAX
    assert [e.path for e in index.entries] == ["etc/os-release"]
    json.dumps(layer_to_json(index)).encode("utf-8")


# --- fuzzing ------------------------------------------------------------------------

REAL = fixture("alpine-minirootfs-3.20.3-x86_64-db.tar.gz")
REAL_TAR = zlib.decompress(REAL, 31)
edits = st.lists(st.tuples(st.integers(0, len(REAL_TAR) - 1), st.integers(0, 255)), max_size=30)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([REAL_TAR, REAL, zst(REAL_TAR)]), edits, st.integers(0, len(REAL_TAR)))
def test_damaged_layers_never_crash_the_reader(
    base: bytes, changes: list[tuple[int, int]], cut: int
) -> None:
    blob = bytearray(base[:cut] if cut else base)
    for at, value in changes:
        if blob:
            blob[at % len(blob)] = value
    index = index_layer(io.BytesIO(bytes(blob)), "sha256:fuzz")
    assert (index.state == LayerState.COMPLETE) == (not index.reason)
    json.dumps(layer_to_json(index))


@settings(max_examples=200, deadline=2000)
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_the_reader(blob: bytes) -> None:
    index = index_layer(io.BytesIO(blob), "sha256:fuzz")
    assert index.state in (LayerState.UNREADABLE, LayerState.PARTIAL, LayerState.COMPLETE)


text = st.text(max_size=20)
found_packages = st.builds(
    FoundPackage,
    type=st.sampled_from(list(PackageType)),
    name=text,
    version=text,
    path=text,
    namespace=st.none() | text,
    source_name=st.none() | text,
    source_version=st.none() | text,
    arch=st.none() | text,
)
entries = st.builds(
    Entry,
    path=text,
    kind=text,
    packages=st.lists(found_packages, max_size=3).map(tuple),
    facts=st.lists(st.tuples(text, text), max_size=3).map(tuple),
)
layer_indexes = st.builds(
    LayerIndex,
    digest=text,
    indexer_version=st.integers(0, 1000),
    entries=st.lists(entries, max_size=4).map(tuple),
    whiteouts=st.lists(text, max_size=3).map(tuple),
    opaque=st.lists(text, max_size=3).map(tuple),
    state=st.sampled_from(list(LayerState)),
    reason=text,
    bytes_read=st.integers(0, 1 << 40),
)


@settings(max_examples=300)
@given(layer_indexes)
def test_layer_json_round_trips_exactly(index: LayerIndex) -> None:
    assert layer_from_json(layer_to_json(index)) == index
    assert layer_from_json(json.loads(json.dumps(layer_to_json(index)))) == index


# --- a 1 GiB layer: one pass, memory bounded ------------------------------------------

GIB_LAYER = r"""
import io, sys, tarfile, time
from moorage.va.layers import index_layer

class Layer(io.RawIOBase):
    '''A 1 GiB uncompressed layer made as it is read: 16 files of 64 MiB,
    one of them a 256 MiB dpkg status (over the file budget), then the
    os-release, never held whole.'''
    def __init__(self):
        self.parts = self.members()
        self.buf = memoryview(b"")
    def members(self):
        def header(name, size):
            info = tarfile.TarInfo(name); info.size = size
            return info.tobuf(tarfile.PAX_FORMAT)
        chunk = b"\0" * (1 << 20)
        files = [(f"usr/share/blob{i}", 64) for i in range(12)] + [("var/lib/dpkg/status", 256)]
        for name, mib in files:
            yield header(name, mib << 20)
            for _ in range(mib):
                yield chunk
        data = b'ID=debian\nVERSION_ID="12"\n'
        yield header("etc/os-release", len(data)) + data + b"\0" * (512 - len(data))
        yield b"\0" * 10240
    def readable(self): return True
    def readinto(self, b):
        while not self.buf:
            part = next(self.parts, None)
            if part is None:
                return 0
            self.buf = memoryview(part)
        n = min(len(b), len(self.buf)); b[:n] = self.buf[:n]; self.buf = self.buf[n:]
        return n

from moorage.va.detect import detectors, header_detectors
detectors(), header_detectors()  # imported before the baseline: code is not layer data
index_layer(io.BytesIO(b""), "sha256:warm")
def high_water_kib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

before = high_water_kib()
started = time.perf_counter()
index = index_layer(Layer(), "sha256:gib")
took = time.perf_counter() - started
peak = high_water_kib()
print(index.state.value, index.bytes_read, before, peak, round(took, 2), index.reason[:200])
"""


def test_a_gib_layer_is_read_in_bounded_memory() -> None:
    out = subprocess.run(
        [sys.executable, "-c", GIB_LAYER],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    ).stdout.split(" ", 5)
    state, read, before_kib, peak_kib, took = out[0], int(out[1]), int(out[2]), int(out[3]), out[4]
    assert read > 1 << 30
    assert (
        state == "partial" and "var/lib/dpkg/status" in out[5]
    )  # the 256 MiB status: not buffered
    assert peak_kib - before_kib < 48 * 1024, (before_kib, peak_kib)
    print(
        f"\n1 GiB layer: {took} s, peak RSS {peak_kib / 1024:.0f} MiB "
        f"(+{(peak_kib - before_kib) / 1024:.0f} MiB while indexing)"
    )
