"""The Advisor's labelled image set: real package databases in real layers,
paired with real advisory records newer than the packages, and the findings
each image must have written down by hand (``tests/data/va/labelled/
labels.yaml``, with the reason for each), so precision and recall are
measured against labels rather than against any scanner's output.

Images are OCI layouts built here (``tests/oci_layout.py``); the Debian
root comes from ``debootstrap`` (cached, as the other Advisor tests keep
it), the Go binary from the module proxy (cached by Go)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.oci_layout import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Image, descriptor
from tests.va_layers import debian_root, root_layer

DATA = Path(__file__).parent / "data" / "va" / "labelled"
TOOLS = Path(os.environ.get("MOORAGE_TOOLS", "/var/cache/moorage-tools"))
CACHE = TOOLS / "va-labelled"
# The one package the Debian image holds at an older security update: real
# dpkg installs it over the current one, as an image built in July 2025 has it.
OLD_GNUTLS = (
    "http://deb.debian.org/debian-security/pool/updates/main/g/gnutls28/"
    "libgnutls30_3.7.9-2+deb12u5_amd64.deb"
)


@dataclass(frozen=True)
class Expected:
    """One finding an image must have: an advisory naming a package."""

    advisory: str
    package: str
    installed: str
    fixed: str | None
    reason: str


@dataclass(frozen=True)
class Labelled:
    name: str
    image: Image
    expected: tuple[Expected, ...]
    absent: tuple[Expected, ...]  # advisories in the feed that must not match (and why)

    def finding_keys(self) -> set[tuple[str, str]]:
        return {(e.advisory, e.package) for e in self.expected}


# -- layers --------------------------------------------------------------------


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def tar_tree(root: Path, members: Iterable[str] | None = None) -> bytes:
    """A gzip (level 0) layer of a directory tree, or of the named paths in it,
    keeping symlinks, modes and directories as a real layer does."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        names = sorted(members) if members is not None else None
        if names is None:
            for path in sorted(root.rglob("*")):
                tar.add(path, path.relative_to(root).as_posix(), recursive=False, filter=_reset)
        else:
            for name in names:
                tar.add(root / name, name, recursive=False, filter=_reset)
    return gzip.compress(raw.getvalue(), compresslevel=0, mtime=0)


def tar_files(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A layer of regular files (content, mode), parent directories included."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name in sorted(files):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                parent = "/".join(parts[:i])
                if parent not in dirs:
                    dirs.add(parent)
                    info = tarfile.TarInfo(parent)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            content, mode = files[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), compresslevel=0, mtime=0)


def image(layers: list[bytes], user: str = "") -> Image:
    diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest() for layer in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], **({"User": user} if user else {})},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
        }
    ).encode()
    return Image(layers, config, manifest)


# -- the real inputs -----------------------------------------------------------


def _download(url: str) -> Path:
    target = CACHE / url.rsplit("/", 1)[1]
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        subprocess.run(["curl", "-fsSL", "-o", str(partial), url], check=True)
        partial.rename(target)
    return target


def _cached(name: str, build: Callable[[Path], None]) -> bytes:
    target = CACHE / name
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        build(partial)
        partial.rename(target)
    return target.read_bytes()


def debian_base_layer(root: Path) -> bytes:
    """The debootstrap root as one gzip layer, written by GNU tar (as
    ``tests/va_layers.root_layer`` writes it) and kept beside the root."""

    def build(out: Path) -> None:
        plain = out.with_suffix(".tar")
        root_layer(root, plain)
        with plain.open("rb") as source, gzip.open(out, "wb", compresslevel=1) as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        plain.unlink()

    return _cached(f"debian-base-{_stamp(root)}.tar.gz", build)


def _stamp(root: Path) -> str:
    return hashlib.sha256((root / "var/lib/dpkg/status").read_bytes()).hexdigest()[:12]


def gnutls_downgrade_layer(base: Path) -> bytes:
    """The layer `dpkg -i libgnutls30_3.7.9-2+deb12u5` leaves over the base:
    the package's files and dpkg's database, written by real dpkg."""

    def build(out: Path) -> None:
        out.write_bytes(_gnutls_layer(base))

    return _cached(f"debian-gnutls-u5-{_stamp(base)}.tar.gz", build)


def _gnutls_layer(base: Path) -> bytes:
    deb = _download(OLD_GNUTLS)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root"
        subprocess.run(["cp", "-a", str(base), str(root)], check=True)
        subprocess.run(
            [
                "dpkg",
                f"--root={root}",
                "--force-downgrade",
                "--force-not-root",
                "--no-triggers",
                "-i",
                str(deb),
            ],
            check=True,
            capture_output=True,
        )
        listing = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(listing)) as tar:
            names = {m.name.removeprefix("./") for m in tar.getmembers() if not m.isdir()}
        names = {n for n in names if n and ((root / n).exists() or (root / n).is_symlink())}
        info = root / "var/lib/dpkg/info"
        names |= {f"var/lib/dpkg/info/{p.name}" for p in info.glob("libgnutls30:amd64.*")}
        names.add("var/lib/dpkg/status")
        return tar_tree(root, names)


def go_binary() -> bytes:
    """A Go program built against golang.org/x/text v0.3.6 (its build info
    names the module; the detectors read it from the ELF section)."""
    target = CACHE / "go-app-x-text-0.3.6"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "CGO_ENABLED": "0",
            "GOFLAGS": "-mod=mod",
            "GOPATH": os.environ.get("GOPATH", str(TOOLS / "gopath")),
            "GOCACHE": os.environ.get("GOCACHE", str(TOOLS / "gocache")),
        }
        with tempfile.TemporaryDirectory() as scratch:
            shutil.copytree(DATA / "go-app", scratch, dirs_exist_ok=True)
            out = Path(scratch) / "app"
            subprocess.run(
                ["go", "build", "-trimpath", "-ldflags=-s", "-o", str(out), "."],
                cwd=scratch,
                env=env,
                check=True,
                capture_output=True,
            )
            shutil.copy(out, target.with_name(f"{target.name}.{os.getpid()}.partial"))
            target.with_name(f"{target.name}.{os.getpid()}.partial").rename(target)
    return target.read_bytes()


def alpine_layer() -> bytes:
    root = DATA / "rootfs" / "alpine-3.7.3"
    return tar_files(
        {
            "etc/os-release": ((root / "etc/os-release").read_bytes(), 0o644),
            "lib/apk/db/installed": ((root / "lib/apk/db/installed").read_bytes(), 0o644),
        }
    )


def app_layer() -> bytes:
    """A Python package and a Go program, as an application layer adds them."""
    metadata = DATA / "rootfs/python/requests-2.25.1.dist-info/METADATA"
    site = "usr/lib/python3.12/site-packages/requests-2.25.1.dist-info"
    return tar_files(
        {
            f"{site}/METADATA": (metadata.read_bytes(), 0o644),
            "usr/local/bin/app": (go_binary(), 0o755),
        }
    )


# -- labels --------------------------------------------------------------------


def _expected(rows: list[dict[str, Any]]) -> tuple[Expected, ...]:
    return tuple(
        Expected(
            advisory=row["advisory"],
            package=row["package"],
            installed=str(row["installed"]),
            fixed=None if row.get("fixed") is None else str(row["fixed"]),
            reason=" ".join(str(row["reason"]).split()),
        )
        for row in rows
    )


def labels() -> dict[str, dict[str, Any]]:
    loaded: dict[str, dict[str, Any]] = yaml.safe_load((DATA / "labels.yaml").read_text())
    return loaded


def labelled_images() -> list[Labelled]:
    """Every labelled image, built (Debian and Go parts cached on disk)."""
    built = {
        "alpine-3.7": image([alpine_layer()]),
        "alpine-3.7-app": image([alpine_layer(), app_layer()]),
    }
    root = debian_root()
    built["debian-12"] = image([debian_base_layer(root), gnutls_downgrade_layer(root)])
    found = []
    for name, spec in labels().items():
        found.append(
            Labelled(
                name, built[name], _expected(spec["expected"]), _expected(spec.get("absent", []))
            )
        )
    return found


# -- advisories ----------------------------------------------------------------


def osv_records() -> Iterator[tuple[str, dict[str, Any]]]:
    """The OSV records of the set, with the file each came from."""
    for path in sorted((DATA / "advisories" / "osv").rglob("*")):
        if path.suffix == ".json":
            yield str(path), json.loads(path.read_text())
        elif path.suffix == ".yaml":
            yield str(path), yaml.safe_load(path.read_text())


def secdb_records() -> Iterator[tuple[str, dict[str, Any]]]:
    """The Alpine secdb files of the set as OSV records, converted as
    ``moorage va db import`` does (one ``ALPINE-<CVE>`` per identifier), so
    the oracle, which reads OSV only, sees the same advisories."""
    from moorage.va.feeds import secdb_advisories

    for path in sorted((DATA / "advisories" / "alpine-secdb").rglob("*.yaml")):
        feed = yaml.safe_load(path.read_text())
        for record in secdb_advisories(feed, str(path), "2020-06-08T00:00:00Z"):
            yield str(path), record


def all_records() -> list[tuple[str, dict[str, Any]]]:
    return [*osv_records(), *secdb_records()]


def write_osv_db(directory: Path) -> Path:
    """``<directory>/osv-scalibr/<Ecosystem>/all.zip`` for every ecosystem of
    the set: where osv-scanner v2.6.0's offline mode (osv-scalibr's local
    matcher) reads them under ``--local-db-path``."""
    by_ecosystem: dict[str, list[dict[str, Any]]] = {}
    records = [record for _, record in all_records()]
    for record in records:
        for ecosystem in {a["package"]["ecosystem"].split(":", 1)[0] for a in record["affected"]}:
            by_ecosystem.setdefault(ecosystem, []).append(record)
    for ecosystem, group in by_ecosystem.items():
        target = directory / "osv-scalibr" / ecosystem
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target / "all.zip", "w") as archive:
            for record in group:
                archive.writestr(f"{record['id']}.json", json.dumps(record))
    return directory
