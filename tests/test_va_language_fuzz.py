"""A layer is attacker input: every language detector, given damaged real
artifacts (ELF binaries, jars, lock files) or arbitrary bytes and JSON,
returns ``None`` or an Entry, never raises, and finishes within the
deadline (no hang on a crafted length, pointer or nesting)."""

from __future__ import annotations

import functools
import io
import json
from datetime import timedelta
from typing import Any

from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moorage.va.detect.golang import GoBinaryDetector
from moorage.va.detect.java import JarDetector
from moorage.va.detect.node import PackageJsonDetector, PackageLockDetector
from moorage.va.detect.python import PythonDetector
from moorage.va.detect.rust import CargoAuditableDetector, CargoLockDetector
from moorage.va.model import Entry
from tests import va_lang_artifacts as artifacts

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DETECTORS = (
    GoBinaryDetector(),
    CargoAuditableDetector(),
    CargoLockDetector(),
    JarDetector(),
    PackageJsonDetector(),
    PackageLockDetector(),
    PythonDetector(),
)


@functools.cache
def seeds() -> dict[str, bytes]:
    go, rust, jars = artifacts.go_binaries(), artifacts.rust_binary(), artifacts.maven_jars()
    npm = artifacts.npm_project(3)
    return {
        "go": (go / "hello-stripped").read_bytes(),
        "rust": (rust / "vahello").read_bytes(),
        "lock": (rust / "Cargo.lock").read_bytes(),
        "jar": (jars / "gson-2.13.1.jar").read_bytes(),
        "npm": (npm / "package-lock.json").read_bytes(),
    }


def ok(result: Entry | None) -> None:
    assert result is None or isinstance(result, Entry)


@st.composite
def damaged(draw: st.DrawFn, seed: str) -> bytes:
    """A real artifact with some bytes overwritten (biased to the headers at its
    start and the directory at its end) and perhaps cut short."""
    data = bytearray(seeds()[seed])
    for _ in range(draw(st.integers(1, 16))):
        region = draw(st.sampled_from(["head", "tail", "any"]))
        span = min(len(data), 4096)
        if region == "head":
            at = draw(st.integers(0, span - 1))
        elif region == "tail":
            at = len(data) - 1 - draw(st.integers(0, span - 1))
        else:
            at = draw(st.integers(0, len(data) - 1))
        patch = draw(st.binary(min_size=1, max_size=8))
        data[at : at + len(patch)] = patch
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    for detector in DETECTORS:
        ok(detector.parse("x", data))
        ok(detector.parse("x", b"\x7fELF" + data))
        ok(detector.parse("x", b"PK\x03\x04" + data))


@FUZZ
@given(damaged("go"))
def test_damaged_go_binary(data: bytes) -> None:
    ok(GoBinaryDetector().parse("usr/bin/hello", data))
    ok(CargoAuditableDetector().parse("usr/bin/hello", data))


@functools.cache
def buildinfo_seeds() -> tuple[tuple[bytes, int], ...]:
    """Both build info layouts of a real binary, with the section's offset."""
    inline = (artifacts.go_binaries() / "hello").read_bytes()
    offset = ELFFile(io.BytesIO(inline)).get_section_by_name(".go.buildinfo")["sh_offset"]
    return (inline, offset), (artifacts.as_pointer_format(inline), offset)


@FUZZ
@given(
    st.integers(0, 1),
    st.lists(st.tuples(st.integers(14, 95), st.binary(min_size=1, max_size=8)), max_size=8),
)
def test_damaged_go_build_info(layout: int, patches: list[tuple[int, bytes]]) -> None:
    """Lengths, pointers and flags of the build info itself made up."""
    data, offset = buildinfo_seeds()[layout]
    damaged = bytearray(data)
    for at, patch in patches:
        damaged[offset + at : offset + at + len(patch)] = patch
    ok(GoBinaryDetector().parse("usr/bin/hello", bytes(damaged)))


@functools.cache
def fat_jar() -> bytes:
    gson = seeds()["jar"]
    inner = artifacts.fat_jar({"lib/gson.jar": gson})
    return artifacts.fat_jar({"BOOT-INF/lib/gson.jar": gson, "BOOT-INF/lib/inner.jar": inner})


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, 10**9), st.binary(min_size=1, max_size=8)), min_size=1, max_size=16
    )
)
def test_damaged_fat_jar(patches: list[tuple[int, bytes]]) -> None:
    damaged = bytearray(fat_jar())
    for at, patch in patches:
        at %= len(damaged)
        damaged[at : at + len(patch)] = patch
    ok(JarDetector().parse("app.jar", bytes(damaged)))


@FUZZ
@given(damaged("rust"))
def test_damaged_rust_binary(data: bytes) -> None:
    ok(CargoAuditableDetector().parse("usr/bin/vahello", data))
    ok(GoBinaryDetector().parse("usr/bin/vahello", data))


@FUZZ
@given(damaged("jar"))
def test_damaged_jar(data: bytes) -> None:
    ok(JarDetector().parse("app/gson.jar", data))


@FUZZ
@given(st.one_of(damaged("lock"), st.text(max_size=2000).map(str.encode)))
def test_damaged_cargo_lock(data: bytes) -> None:
    ok(CargoLockDetector().parse("Cargo.lock", data))


JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=40,
)
PACKAGE = st.fixed_dictionaries(
    {},
    optional={
        "name": JSON | st.sampled_from(["@s/n", "@", "@s/", "/x", "n"]),
        "version": JSON | st.sampled_from(["npm:", "npm:@", "npm:x@", "1.0.0", ""]),
        "dev": JSON,
        "link": JSON,
        "dependencies": JSON,
    },
)
LOCK = st.fixed_dictionaries(
    {},
    optional={
        "lockfileVersion": JSON,
        "packages": JSON
        | st.dictionaries(st.sampled_from(["", "node_modules/a", "x/node_modules/@s/b"]), PACKAGE),
        "dependencies": JSON | st.dictionaries(st.text(max_size=10), PACKAGE),
    },
)


@FUZZ
@given(st.one_of(JSON, LOCK, PACKAGE))
def test_odd_json_for_npm(document: Any) -> None:
    data = json.dumps(document).encode()
    ok(PackageLockDetector().parse("package-lock.json", data))
    ok(PackageJsonDetector().parse("node_modules/a/package.json", data))


@FUZZ
@given(damaged("npm"))
def test_damaged_package_lock(data: bytes) -> None:
    ok(PackageLockDetector().parse("package-lock.json", data))


def test_deeply_nested_json_does_not_raise() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    nested = (
        b'{"dependencies": '
        + b'{"a": {"version": "1", "dependencies": ' * 5000
        + b"{}"
        + b"}}" * 5000
        + b"}"
    )
    for data in (deep, nested):
        ok(PackageLockDetector().parse("package-lock.json", data))
        ok(PackageJsonDetector().parse("node_modules/a/package.json", data))


@FUZZ
@given(st.text(max_size=2000))
def test_odd_python_metadata(text: str) -> None:
    for data in (text.encode(), ("Name: x\nVersion: 1\n" + text).encode(), text.encode("utf-16")):
        ok(PythonDetector().parse("x.dist-info/METADATA", data))
