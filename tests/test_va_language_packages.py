"""The language detectors find what the ecosystems' own tools installed or
built: Go binaries from ``go build`` (checked against ``go version -m``),
a ``cargo auditable`` binary and its Cargo.lock, wheels from ``pip install
--target`` (checked against importlib.metadata), an ``npm install`` tree
and its lock file in all three formats (checked against ``npm ls``), and
jars from Maven Central, alone and nested as Spring Boot nests them."""

from __future__ import annotations

import importlib.metadata
import io
import json
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from moorage.va.detect import detectors
from moorage.va.detect.golang import GoBinaryDetector, stdlib_version
from moorage.va.detect.java import JarDetector
from moorage.va.detect.node import PackageJsonDetector, PackageLockDetector
from moorage.va.detect.python import PythonDetector
from moorage.va.detect.rust import CargoAuditableDetector, CargoLockDetector
from moorage.va.model import Entry, FoundPackage, PackageType
from tests import va_lang_artifacts as artifacts

EXECUTABLE = 0o100755


def found(entry: Entry | None) -> set[tuple[str | None, str, str]]:
    assert entry is not None
    return {(p.namespace, p.name, p.version) for p in entry.packages}


def go_list(binary: Path) -> set[tuple[str | None, str, str]]:
    """What ``go version -m`` says the binary holds, as the detector names it."""
    out = subprocess.run(
        ["go", "version", "-m", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    lines = out.splitlines()
    modules: list[tuple[str, str]] = []
    for line in lines[1:]:
        fields = line.strip().split("\t")
        if fields[0] == "dep" or (fields[0] == "mod" and fields[2] != "(devel)"):
            modules.append((fields[1], fields[2]))
        elif fields[0] == "=>":
            modules[-1] = (fields[1], fields[2])
    go = lines[0].split(": ", 1)[1].strip()
    named = {
        (m.rpartition("/")[0] or None, m.rpartition("/")[2], v)
        for m, v in modules
        if v not in ("", "(devel)")
    }
    return named | {(None, "stdlib", "v" + go.removeprefix("go"))}


# --- Go ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hello", "hello-stripped"])
def test_go_binary_names_its_modules_replacements_and_toolchain(name: str) -> None:
    binary = artifacts.go_binaries() / name
    entry = GoBinaryDetector().parse(f"usr/local/bin/{name}", binary.read_bytes())
    assert found(entry) == go_list(binary)
    assert ("github.com/google", "uuid", "v1.6.0") in found(entry)
    assert ("golang.org/x", "text", "v0.13.0") in found(entry)  # the => replacement, not v0.14.0
    assert not any(p.name == "vahello" for p in entry.packages)  # main module is (devel)
    # Replaced by a local directory: no version to match, so left out.
    listed = subprocess.run(
        ["go", "version", "-m", str(binary)], capture_output=True, text=True
    ).stdout
    assert "=>\t./greet\t" in listed
    assert not any(p.name in ("greet", "./greet") for p in entry.packages)
    assert all(
        p.type is PackageType.GOLANG and p.path == f"usr/local/bin/{name}" for p in entry.packages
    )


def test_go_installed_binary_names_its_main_module() -> None:
    binary = artifacts.go_installed() / "hello"
    entry = GoBinaryDetector().parse("usr/local/bin/hello", binary.read_bytes())
    assert found(entry) == go_list(binary)
    version = artifacts.GO_INSTALLED.split("@")[1]
    assert ("golang.org/x/example", "hello", version) in found(entry)


def test_go_build_info_is_found_without_section_headers() -> None:
    """As after ``sstrip``: the section header table is gone, so the magic is
    searched for in the file."""
    data = bytearray((artifacts.go_binaries() / "hello-stripped").read_bytes())
    # ELF64 header: e_shoff at 0x28 (8 bytes), e_shnum at 0x3C, e_shstrndx at 0x3E.
    data[0x28:0x30] = bytes(8)
    data[0x3C:0x40] = bytes(4)
    entry = GoBinaryDetector().parse("app", bytes(data))
    assert ("github.com/google", "uuid", "v1.6.0") in found(entry)


def test_go_build_info_beside_the_magic_as_a_constant() -> None:
    """The go command links debug/buildinfo, so its rodata holds the magic too;
    without section headers the one that parses as build info is taken."""
    go = (
        Path(
            subprocess.run(
                [artifacts.tool("go"), "env", "GOROOT"], capture_output=True, text=True
            ).stdout.strip()
        )
        / "bin"
        / "go"
    )
    data = bytearray(go.read_bytes())
    assert data.count(b"\xff Go buildinf:") >= 2
    data[0x28:0x30] = bytes(8)
    data[0x3C:0x40] = bytes(4)
    assert found(GoBinaryDetector().parse("usr/local/go/bin/go", bytes(data))) == go_list(go)


def test_go_build_info_in_the_pre_1_18_pointer_format() -> None:
    binary = artifacts.go_binaries() / "hello"
    entry = GoBinaryDetector().parse("app", artifacts.as_pointer_format(binary.read_bytes()))
    assert found(entry) == go_list(binary)


def test_go_detector_wants_executables_under_the_cap_and_never_go_mod() -> None:
    detector = GoBinaryDetector()
    assert detector.wants("usr/bin/app", EXECUTABLE, 3_000_000)
    assert not detector.wants("usr/share/doc/x", 0o100644, 3_000_000)
    assert detector.wants("usr/bin/kubectl", EXECUTABLE, 105 * 1024 * 1024)
    assert not detector.wants("usr/bin/huge", EXECUTABLE, 257 * 1024 * 1024)
    assert not detector.wants("usr/bin/empty", EXECUTABLE, 0)
    # go.mod/go.sum in an image are source: no detector indexes them.
    assert not any(
        d.wants(p, 0o100644, 300) for d in detectors() for p in ("src/go.mod", "src/go.sum")
    )


def test_non_go_executables_give_nothing() -> None:
    rust = (artifacts.rust_binary() / "vahello").read_bytes()
    assert GoBinaryDetector().parse("usr/bin/vahello", rust) is None
    assert GoBinaryDetector().parse("usr/bin/script", b"#!/bin/sh\necho hi\n") is None


@pytest.mark.parametrize(
    ("go", "stdlib"),
    [
        ("go1.22.1", "v1.22.1"),
        ("go1.20", "v1.20.0"),
        ("go1.21rc2", "v1.21.0-rc.2"),
        ("go1.22.1 X:boringcrypto", "v1.22.1"),
        ("devel go1.23-abcdef", None),
    ],
)
def test_go_toolchain_versions_are_spelled_as_the_vulnerability_database_does(
    go: str, stdlib: str | None
) -> None:
    assert stdlib_version(go) == stdlib


# --- Rust -------------------------------------------------------------------


def test_cargo_auditable_binary_names_its_crates_not_itself() -> None:
    data = (artifacts.rust_binary() / "vahello").read_bytes()
    assert CargoAuditableDetector().wants("usr/bin/vahello", EXECUTABLE, len(data))
    assert found(CargoAuditableDetector().parse("usr/bin/vahello", data)) == {
        (None, "itoa", "1.0.11")
    }
    go = (artifacts.go_binaries() / "hello").read_bytes()
    assert CargoAuditableDetector().parse("usr/bin/hello", go) is None


def _older_lock(lock: str, version: int) -> str:
    """The lock file cargo wrote, in an older format's layout: v3 differs only in
    its header, v2 has none, v1 keeps checksums in a [metadata] table."""
    if version == 3:
        return lock.replace("version = 4", "version = 3")
    body = lock.replace("version = 4\n", "")
    if version == 2:
        return body
    sums = []
    lines = []
    for line in body.splitlines():
        if line.startswith("checksum = "):
            sums.append(line.split('"')[1])
            continue
        lines.append(line)
    source = "registry+https://github.com/rust-lang/crates.io-index"
    return "\n".join(lines) + f'\n[metadata]\n"checksum itoa 1.0.11 ({source})" = "{sums[0]}"\n'


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_cargo_lock_in_every_format_names_registry_crates(version: int) -> None:
    lock = (artifacts.rust_binary() / "Cargo.lock").read_text()
    assert "version = 4" in lock
    detector = CargoLockDetector()
    assert detector.wants("app/Cargo.lock", 0o100644, len(lock))
    assert not detector.wants("app/Cargo.toml", 0o100644, len(lock))
    entry = detector.parse("app/Cargo.lock", _older_lock(lock, version).encode())
    assert found(entry) == {(None, "itoa", "1.0.11")}  # vahello, the workspace crate, is left out


# --- Python -----------------------------------------------------------------


def _dist_infos(site: Path) -> list[Path]:
    return sorted(site.glob("*.dist-info/METADATA"))


def test_pip_installed_wheels_are_found_as_importlib_metadata_sees_them() -> None:
    site = artifacts.wheels() / "site"
    detector = PythonDetector()
    seen: set[tuple[str | None, str, str]] = set()
    for metadata in _dist_infos(site):
        path = f"usr/lib/python3/site-packages/{metadata.relative_to(site)}"
        assert detector.wants(path, 0o100644, metadata.stat().st_size)
        seen |= found(detector.parse(path, metadata.read_bytes()))
    expected = {
        (None, d.metadata["Name"], d.version)
        for d in importlib.metadata.distributions(path=[str(site)])
    }
    assert seen == expected
    assert {(None, "requests", "2.31.0"), (None, "PyYAML", "6.0.1")} <= seen  # as written
    assert len(seen) >= 6  # with urllib3, idna, certifi, charset-normalizer


def test_setuptools_egg_info_directory_and_file(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text(
        'from setuptools import setup\nsetup(name="Va_Example", version="1.0.post1")\n'
    )
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    pkg_info = (tmp_path / "Va_Example.egg-info" / "PKG-INFO").read_bytes()
    detector = PythonDetector()
    for path in (
        "usr/lib/python3/dist-packages/Va_Example.egg-info/PKG-INFO",
        "usr/lib/python3/Va_Example-1.0.egg-info",
    ):
        assert detector.wants(path, 0o100644, len(pkg_info))
        assert found(detector.parse(path, pkg_info)) == {
            (None, "Va-Example", "1.0.post1")
        }  # as PKG-INFO writes it
    for other in ("app/METADATA", "x.dist-info/RECORD", "src/PKG-INFO"):
        assert not detector.wants(other, 0o100644, 100)
    assert detector.wants("x.dist-info/METADATA", 0o100644, 9 * 1024 * 1024) is False


# --- Node -------------------------------------------------------------------


def _npm_ls(project: Path) -> set[tuple[str | None, str, str]]:
    out = subprocess.run(
        ["npm", "ls", "--all", "--omit=dev", "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names: set[tuple[str | None, str, str]] = set()

    def walk(deps: dict[str, dict[str, object]]) -> None:
        for name, info in deps.items():
            scope, _, bare = name.rpartition("/") if name.startswith("@") else ("", "", name)
            names.add((scope or None, bare, str(info["version"])))
            walk(info.get("dependencies", {}))  # type: ignore[arg-type]

    walk(json.loads(out)["dependencies"])
    return names


@pytest.mark.parametrize("lockfile_version", [1, 2, 3])
def test_package_lock_names_production_dependencies(lockfile_version: int) -> None:
    project = artifacts.npm_project(lockfile_version)
    lock = (project / "package-lock.json").read_bytes()
    assert json.loads(lock)["lockfileVersion"] == lockfile_version
    detector = PackageLockDetector()
    assert detector.wants("srv/app/package-lock.json", 0o100644, len(lock))
    entry = detector.parse("srv/app/package-lock.json", lock)
    assert found(entry) == _npm_ls(project)
    assert ("@types", "node", "20.11.0") in found(entry)
    assert not any(p.name == "is-number" for p in entry.packages)  # a dev dependency


def test_installed_package_manifests_name_every_package_npm_installed() -> None:
    project = artifacts.npm_project(3)
    detector = PackageJsonDetector()
    seen: set[tuple[str | None, str, str]] = set()
    for manifest in project.rglob("package.json"):
        path = f"srv/app/{manifest.relative_to(project)}"
        if detector.wants(path, 0o100644, manifest.stat().st_size):
            seen |= found(detector.parse(path, manifest.read_bytes()))
    # Installed dev dependencies are installed: the tree reports them.
    assert seen == _npm_ls(project) | {(None, "is-number", "7.0.0")}
    assert all(
        p.type is PackageType.NPM
        for p in detector.parse(
            "node_modules/@types/node/package.json",
            (project / "node_modules/@types/node/package.json").read_bytes(),
        ).packages
    )  # type: ignore[union-attr]


def test_package_json_files_that_are_not_installed_packages_are_not_wanted() -> None:
    detector = PackageJsonDetector()
    for path in (
        "srv/app/package.json",  # the application itself
        "srv/app/node_modules/ms/lib/package.json",  # a stub inside a package
        "srv/app/node_modules/@types/package.json",
    ):
        assert not detector.wants(path, 0o100644, 100), path
    assert not PackageLockDetector().wants("srv/app/node_modules/.package-lock.json", 0o100644, 100)
    assert not PackageLockDetector().wants(
        "srv/app/node_modules/x/package-lock.json", 0o100644, 100
    )
    assert detector.wants("usr/lib/node_modules/npm/package.json", 0o100644, 100)
    assert detector.wants("node_modules/@scope/name/package.json", 0o100644, 100)


def test_lock_entries_without_a_registry_version_are_left_out() -> None:
    lock = {
        "lockfileVersion": 3,
        "packages": {
            "": {"name": "app"},
            "node_modules/a": {"version": "git+ssh://git@example.com/a.git#abc"},
            "node_modules/b": {"version": "file:../b"},
            "node_modules/w": {"resolved": "packages/w", "link": True},
            "packages/w": {"name": "w", "version": "1.0.0"},
            "node_modules/alias": {"name": "real", "version": "2.0.0"},
        },
    }
    entry = PackageLockDetector().parse("package-lock.json", json.dumps(lock).encode())
    assert found(entry) == {(None, "real", "2.0.0")}


# --- Java -------------------------------------------------------------------


def test_maven_jars_name_their_group_artifact_and_version() -> None:
    jars = artifacts.maven_jars()
    detector = JarDetector()
    gson = jars / "gson-2.13.1.jar"
    assert detector.wants("app/lib/gson-2.13.1.jar", 0o100644, gson.stat().st_size)
    assert found(detector.parse("app/lib/gson-2.13.1.jar", gson.read_bytes())) == {
        ("com.google.code.gson", "gson", "2.13.1")
    }
    slf4j = (jars / "slf4j-api-2.0.13.jar").read_bytes()
    assert found(detector.parse("app/lib/slf4j-api-2.0.13.jar", slf4j)) == {
        ("org.slf4j", "slf4j-api", "2.0.13")
    }


def _without_poms(jar: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(jar)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if not info.filename.startswith("META-INF/maven/"):
                dst.writestr(info, src.read(info))
    return out.getvalue()


def test_nested_jars_and_the_manifest_fallback() -> None:
    jars = artifacts.maven_jars()
    gson = (jars / "gson-2.13.1.jar").read_bytes()
    slf4j = (jars / "slf4j-api-2.0.13.jar").read_bytes()
    fat = artifacts.fat_jar(
        {
            "BOOT-INF/lib/gson-2.13.1.jar": gson,
            "BOOT-INF/lib/slf4j-api-2.0.13.jar": _without_poms(slf4j),
        }
    )
    entry = JarDetector().parse("app/app.jar", fat)
    assert found(entry) == {
        ("com.example", "app", "1.2.3"),
        ("com.google.code.gson", "gson", "2.13.1"),
        (None, "slf4j-api", "2.0.13"),  # from its file name and manifest: no group guessed
    }
    assert entry is not None and entry.facts == ()
    assert all(p.path == "app/app.jar" for p in entry.packages)


def test_a_zip_bomb_in_a_jar_is_read_only_to_the_bounds() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as jar:
        jar.writestr("META-INF/maven/g/a/pom.properties", "groupId=g\nartifactId=a\nversion=1\n")
        with jar.open("BOOT-INF/lib/bomb.jar", "w", force_zip64=True) as bomb:
            chunk = bytes(1 << 20)
            for _ in range(300):  # 300 MiB of zeros, about 300 KiB compressed
                bomb.write(chunk)
    data = out.getvalue()
    assert len(data) < 2 * 1024 * 1024
    tracemalloc.start()
    try:
        entry = JarDetector().parse("app.jar", data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found(entry) == {("g", "a", "1")}
    assert entry is not None and "bomb.jar: over" in dict(entry.facts)["partial"]
    assert peak < 100 * 1024 * 1024  # one nested member's bound, not the bomb's 300 MiB


def test_nesting_stops_at_the_depth_bound() -> None:
    inner = artifacts.fat_jar({})
    for level in range(5):
        inner = artifacts.fat_jar({f"lib/level{level}.jar": inner})
    entry = JarDetector().parse("deep.jar", inner)
    assert found(entry) == {("com.example", "app", "1.2.3")}
    assert entry is not None and "nested deeper than 3" in dict(entry.facts)["partial"]


def test_every_language_detector_is_registered() -> None:
    kinds = {d.kind for d in detectors()}
    assert {"python", "node", "go", "java", "rust"} <= kinds
    assert FoundPackage  # the model the detectors return
