"""Real language artifacts for the detector tests, built here with the
ecosystems' own tools (go, cargo auditable, pip, npm, mvn) from their
registries, and cached under $MOORAGE_TOOLS/va-lang/<recipe hash> so a
second run builds nothing. A tool that is not installed skips the test that
needs it (scripts/install-test-deps.sh installs them all)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from moorage.va.detect.golang import build_info

TOOLS = Path(os.environ.get("MOORAGE_TOOLS", "/var/cache/moorage-tools"))
CACHE = TOOLS / "va-lang"

GO_MOD = """module example.com/vahello

go 1.22

require (
\tgithub.com/google/uuid v1.6.0
\tgolang.org/x/text v0.14.0
)

replace golang.org/x/text => golang.org/x/text v0.13.0

require example.com/greet v0.1.0

replace example.com/greet => ./greet
"""
GO_GREET = 'package greet\n\nfunc Hello() string { return "hi" }\n'

GO_MAIN = """package main

import (
\t"fmt"

\t"example.com/greet"
\t"github.com/google/uuid"
\t"golang.org/x/text/language"
)

func main() { fmt.Println(greet.Hello(), uuid.NewString(), language.English) }
"""
CARGO_TOML = """[package]
name = "vahello"
version = "0.1.0"
edition = "2021"

[dependencies]
itoa = "=1.0.11"
"""
CARGO_MAIN = 'fn main() { let mut b = itoa::Buffer::new(); println!("{}", b.format(42)); }\n'
WHEELS = ("requests==2.31.0", "PyYAML==6.0.1")
NPM_PACKAGES = ("@types/node@20.11.0", "ms@2.1.3")
NPM_DEV_PACKAGES = ("is-number@7.0.0",)
MAVEN_ARTIFACTS = ("com.google.code.gson:gson:2.13.1", "org.slf4j:slf4j-api:2.0.13")


def tool(name: str) -> str:
    found = shutil.which(
        name, path=f"{TOOLS / 'bin'}:{TOOLS / 'cargo-auditable/bin'}:{os.environ.get('PATH', '')}"
    )
    if found is None:
        pytest.skip(f"{name} is not installed (scripts/install-test-deps.sh)")
    return found


def cached(name: str, recipe: str, build: Callable[[Path], None]) -> Path:
    """The directory ``build`` filled for this recipe, built once."""
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    done = CACHE / f"{name}-{key}"
    if done.is_dir():
        return done
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=CACHE))
    try:
        build(work)
        work.rename(done)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return done


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        args,
        cwd=cwd,
        check=True,
        env={**os.environ, **(env or {})},
        capture_output=True,
        timeout=900,
    )


def go_binaries() -> Path:
    """``hello`` (a plain ``go build``) and ``hello-stripped`` (``-trimpath
    -ldflags='-s -w'``) of a module requiring two modules from the proxy, one
    replaced by another version."""
    go = tool("go")
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout

    def build(out: Path) -> None:
        src = out / "src"
        src.mkdir()
        (src / "go.mod").write_text(GO_MOD)
        (src / "main.go").write_text(GO_MAIN)
        (src / "greet").mkdir()
        (src / "greet" / "go.mod").write_text("module example.com/greet\n\ngo 1.22\n")
        (src / "greet" / "greet.go").write_text(GO_GREET)
        env = {"GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
        _run([go, "mod", "tidy"], src, env)
        _run([go, "build", "-o", str(out / "hello"), "."], src, env)
        _run(
            [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "hello-stripped"), "."],
            src,
            env,
        )

    return cached("go", GO_MOD + GO_MAIN + GO_GREET + version, build)


GO_INSTALLED = "golang.org/x/example/hello@v0.0.0-20250915201037-7f05d217867b"


def go_installed() -> Path:
    """``hello`` as ``go install module@version`` builds it: the main module
    carries a real version."""
    go = tool("go")
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout

    def build(out: Path) -> None:
        env = {"GOBIN": str(out), "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
        _run([go, "install", GO_INSTALLED], out, env)

    return cached("go-install", GO_INSTALLED + version, build)


def rust_binary() -> Path:
    """``vahello``, built with ``cargo auditable build``, and its Cargo.lock."""
    cargo = tool("cargo")
    auditable = tool("cargo-auditable")

    def build(out: Path) -> None:
        (out / "src").mkdir()
        (out / "Cargo.toml").write_text(CARGO_TOML)
        (out / "src" / "main.rs").write_text(CARGO_MAIN)
        path = f"{Path(auditable).parent}:{os.environ.get('PATH', '')}"
        _run(
            [cargo, "auditable", "build", "--release"],
            out,
            {"PATH": path, "CARGO_TARGET_DIR": str(out / "target")},
        )
        shutil.copy(out / "target" / "release" / "vahello", out / "vahello")
        shutil.rmtree(out / "target")

    return cached("rust", CARGO_TOML + CARGO_MAIN, build)


def wheels() -> Path:
    """Real wheels installed with ``pip install --target`` (with their dependencies)."""

    def build(out: Path) -> None:
        _run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(out / "site"), *WHEELS],
            out,
        )

    return cached("wheels", " ".join(WHEELS), build)


def npm_project(lockfile_version: int) -> Path:
    """An application with a scoped and a plain dependency (and the scoped
    one's own dependency) and a dev dependency, installed by ``npm install``."""
    npm = tool("npm")

    def build(out: Path) -> None:
        (out / "package.json").write_text('{"name": "app", "version": "1.0.0", "private": true}\n')
        common = ["--no-audit", "--no-fund", f"--lockfile-version={lockfile_version}"]
        _run([npm, "install", *common, *NPM_PACKAGES], out)
        _run([npm, "install", *common, "--save-dev", *NPM_DEV_PACKAGES], out)

    recipe = f"{lockfile_version} {NPM_PACKAGES} {NPM_DEV_PACKAGES}"
    return cached(f"npm{lockfile_version}", recipe, build)


def maven_jars() -> Path:
    """Jars copied from Maven Central with ``mvn dependency:copy``."""
    mvn = tool("mvn")

    def build(out: Path) -> None:
        for artifact in MAVEN_ARTIFACTS:
            _run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "dependency:copy",
                    f"-Dartifact={artifact}",
                    f"-DoutputDirectory={out}",
                ],
                out,
            )

    return cached("maven", " ".join(MAVEN_ARTIFACTS), build)


def as_pointer_format(data: bytes) -> bytes:
    """The binary with its build info laid out as linkers before Go 1.18 did:
    pointers to Go string headers instead of inline strings. No older Go
    toolchain is to be had here, so a real binary is rewritten into that
    layout (it is only parsed, never run)."""
    version, modinfo = build_info(data) or ("", "")
    modinfo = "0123456789abcdef" + modinfo + "fedcba9876543210"  # the linker's 16-byte sentinels
    elf = ELFFile(io.BytesIO(data))
    info = elf.get_section_by_name(".go.buildinfo")
    rodata = elf.get_section_by_name(".rodata")
    out = bytearray(data)
    base, strings = info["sh_addr"], rodata["sh_addr"]
    text = version.encode() + modinfo.encode()
    out[rodata["sh_offset"] : rodata["sh_offset"] + len(text)] = text
    header = b"\xff Go buildinf:" + bytes([8, 0])
    header += struct.pack("<QQ", base + 32, base + 48)
    header += struct.pack("<QQ", strings, len(version.encode()))
    header += struct.pack("<QQ", strings + len(version.encode()), len(modinfo.encode()))
    out[info["sh_offset"] : info["sh_offset"] + len(header)] = header
    return bytes(out)


def fat_jar(members: dict[str, bytes]) -> bytes:
    """A Spring Boot layout: nested jars stored uncompressed under BOOT-INF/lib/."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nMain-Class: x.Launcher\r\n")
        jar.writestr(
            "META-INF/maven/com.example/app/pom.properties",
            "groupId=com.example\nartifactId=app\nversion=1.2.3\n",
        )
        for name, data in members.items():
            jar.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_STORED)
    return out.getvalue()
