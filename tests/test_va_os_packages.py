"""OS packages found in real package databases, compared with what the
package managers themselves report: dpkg-query on a debootstrap root, rpm
--dbpath on SQLite and Berkeley DB rpmdbs, and rpm's own listing (recorded by
go-rpmdb) for the NDB one rpm here cannot read. Parsers are fuzzed."""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moorage.va.detect.apk import Apk
from moorage.va.detect.config import LoginDefs
from moorage.va.detect.dpkg import Dpkg, stanzas
from moorage.va.detect.os_release import OSReleaseFile
from moorage.va.detect.rpm import NDBError, ndb_blobs
from moorage.va.layers import index_layer
from moorage.va.model import LayerState, PackageType
from moorage.va.overlay import overlay
from tests.conftest import require_tool
from tests.va_layers import DATA, M, debian_root, fixture, gz, member_data, root_layer, tar

FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require_tool("debootstrap")
    root = debian_root()
    return root, root_layer(root, tmp_path_factory.mktemp("debian") / "layer.tar")


def dpkg_query(root: Path) -> set[tuple[str, str, str, str, str]]:
    out = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={root}/var/lib/dpkg",
            "-W",
            "-f",
            "${db:Status-Status} ${Package} ${Version} ${Architecture} ${source:Package}"
            " ${source:Version}\n",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = (line.split(" ") for line in out.splitlines())
    return {(n, v, a, sn, sv) for state, n, v, a, sn, sv in rows if state == "installed"}


def test_debootstrap_root_as_one_layer_finds_every_package_dpkg_knows(debian) -> None:
    root, layer = debian
    expected = dpkg_query(root)
    with layer.open("rb") as f:
        started = time.perf_counter()
        index = index_layer(f, "sha256:debian")
        took = time.perf_counter() - started
    assert index.state == LayerState.COMPLETE, index.reason
    contents = overlay([index])
    found = {
        (p.name, p.version, p.found.arch, p.found.source_name, p.found.source_version)
        for p in contents.packages
    }
    assert found == expected
    assert len(expected) > 80
    assert contents.os is not None and (contents.os.id, contents.os.version_id) == ("debian", "12")
    assert all(p.layer == "sha256:debian" for p in contents.packages)
    curl_like = next(p for p in contents.packages if p.name == "libc6")
    assert (
        curl_like.purl.startswith("pkg:deb/debian/libc6@") and "distro=debian-12" in curl_like.purl
    )
    print(
        f"\nindexed the debootstrap root ({len(expected)} packages, "
        f"{index.bytes_read / 2**20:.0f} MiB tar) in {took:.2f} s"
    )


def test_distroless_status_d_stanzas_are_packages_too(debian) -> None:
    root, _ = debian
    status = (root / "var/lib/dpkg/status").read_text()
    files = []
    for block in status.strip().split("\n\n"):
        name = next(iter(stanzas(block)))["package"]
        files.append(M(f"var/lib/dpkg/status.d/{name}", block.encode()))
        files.append(
            M(f"var/lib/dpkg/status.d/{name}.md5sums", b"d41d8cd98f00b204e9800998ecf8427e  x\n")
        )
    contents = overlay([index_layer(io.BytesIO(tar(*files)), "sha256:d")])
    assert {
        (p.name, p.version, p.found.arch, p.found.source_name, p.found.source_version)
        for p in contents.packages
    } == dpkg_query(root)


def test_only_installed_dpkg_packages_count(debian) -> None:
    root, _ = debian
    status = (root / "var/lib/dpkg/status").read_text()
    removed = status.replace(
        "Package: mawk\nStatus: install ok installed",
        "Package: mawk\nStatus: deinstall ok config-files",
        1,
    )
    assert removed != status
    entry = Dpkg().parse("var/lib/dpkg/status", removed.encode())
    assert entry is not None
    names = {p.name for p in entry.packages}
    assert "mawk" not in names and "dpkg" in names


def test_source_package_with_its_own_version() -> None:
    stanza = (
        b"Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\n"
        b"Source: openssl (3.0.15-1~deb12u1)\nVersion: 3.0.15-1~deb12u1+b1\n"
        b"Description: x\n more\n"
    )
    entry = Dpkg().parse("var/lib/dpkg/status", stanza)
    assert entry is not None
    (p,) = entry.packages
    assert (p.source_name, p.source_version, p.version) == (
        "openssl",
        "3.0.15-1~deb12u1",
        "3.0.15-1~deb12u1+b1",
    )


def test_alpine_minirootfs_database() -> None:
    layer = fixture("alpine-minirootfs-3.20.3-x86_64-db.tar.gz")
    index = index_layer(io.BytesIO(layer), "sha256:alpine")
    assert index.state == LayerState.COMPLETE
    contents = overlay([index])
    assert contents.os is not None and (contents.os.id, contents.os.version_id) == (
        "alpine",
        "3.20.3",
    )
    text = member_data(layer, "./lib/apk/db/installed").decode()
    # Compared with the database's own P:/V:/o: lines, read independently.
    expected = set()
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if line[1:2] == ":")
        expected.add((fields["P"], fields["V"], fields["A"], fields["o"]))
    found = {(p.name, p.version, p.found.arch, p.found.source_name) for p in contents.packages}
    assert found == expected and len(found) == 14
    musl = next(p for p in contents.packages if p.name == "musl")
    assert musl.purl == "pkg:apk/alpine/musl@1.2.5-r0?arch=x86_64&distro=3.20.3"
    ssl = next(p for p in contents.packages if p.name == "libssl3")
    assert ssl.found.source_name == "openssl"


def rpm_query(dbpath: Path) -> set[tuple[str, str, str, str]]:
    out = subprocess.run(
        [
            "rpm",
            "--dbpath",
            str(dbpath),
            "-qa",
            "--qf",
            "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{ARCH} %{SOURCERPM}\n",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {tuple(line.split(" ")) for line in out.splitlines()}  # type: ignore[misc]


def rpm_found(path: str, data: bytes, os_release: bytes) -> set[tuple[str, str, str, str]]:
    layer = tar(M("etc/os-release", os_release), M(path, data))
    contents = overlay([index_layer(io.BytesIO(gz(layer)), "sha256:rpm")])
    found = set()
    for p in contents.packages:
        assert p.type == PackageType.RPM
        version = p.version if ":" in p.version else f"0:{p.version}"
        source = f"{p.found.source_name}-{p.found.source_version}.src.rpm"
        found.add((p.name, version, p.found.arch or "", source))
    return found


@pytest.mark.parametrize(
    ("fixture_name", "db_name", "path"),
    [
        ("cbl-mariner-2.0-rpmdb.sqlite.gz", "rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite"),
        ("centos8-libuuid-Packages.gz", "Packages", "var/lib/rpm/Packages"),
    ],
)
def test_rpm_databases_match_rpm(
    tmp_path: Path, fixture_name: str, db_name: str, path: str
) -> None:
    require_tool("rpm")
    data = fixture(fixture_name)
    (tmp_path / db_name).write_bytes(data)
    expected = rpm_query(tmp_path)
    assert expected
    assert rpm_found(path, data, b'ID="almalinux"\nVERSION_ID="9.4"\n') == expected


def test_ndb_database_matches_rpms_own_listing() -> None:
    expected = {
        tuple(line.split(" ")) for line in (DATA / "sle15-bci-rpm-qa.txt").read_text().splitlines()
    }
    data = fixture("sle15-bci-Packages.db.gz")
    found = rpm_found("usr/lib/sysimage/rpm/Packages.db", data, b"ID=sles\nVERSION_ID=15.3\n")
    assert found == expected and len(found) == 35


def test_rpm_purls_carry_epoch_and_distro() -> None:
    data = fixture("cbl-mariner-2.0-rpmdb.sqlite.gz")
    layer = tar(
        M("etc/os-release", b'ID="almalinux"\nVERSION_ID="9.4"\n'),
        M("var/lib/rpm/rpmdb.sqlite", data),
    )
    contents = overlay([index_layer(io.BytesIO(layer), "sha256:r")])
    ca = next(p for p in contents.packages if p.name == "ca-certificates-base")
    assert ca.version == "1:2.0.0-1.cm2"
    assert (
        ca.purl == "pkg:rpm/almalinux/ca-certificates-base@2.0.0-1.cm2"
        "?arch=noarch&distro=almalinux-9&epoch=1"
    )


def test_configuration_facts_from_a_real_root(debian) -> None:
    _, layer = debian
    with layer.open("rb") as f:
        contents = overlay([index_layer(f, "sha256:debian")])
    facts = {(e.kind, e.path): dict(e.facts) for e, _ in contents.entries}
    assert facts[("login.defs", "etc/login.defs")] == {
        "PASS_MAX_DAYS": "99999",
        "PASS_MIN_DAYS": "0",
    }
    assert ("sshd", "usr/sbin/sshd") not in facts
    assert not [k for k in facts if k[0] == "world-writable"]


def test_sshd_and_world_writable_come_from_headers_alone() -> None:
    layer = tar(
        M("usr/sbin/sshd", b"\x7fELF", mode=0o755),
        M("usr/local/bin/tool", b"x", mode=0o777),
        M("usr/share/open", kind=tarfile.DIRTYPE, mode=0o777),
        M("usr/share/sticky", kind=tarfile.DIRTYPE, mode=0o1777),
        M("tmp/anything", b"x", mode=0o666),
        M("bin/sh", kind=tarfile.SYMTYPE, linkname="busybox", mode=0o777),
    )
    contents = overlay([index_layer(io.BytesIO(layer), "sha256:c")])
    kinds = {(e.kind, e.path, dict(e.facts).get("type")) for e, _ in contents.entries}
    assert kinds == {
        ("sshd", "usr/sbin/sshd", None),
        ("world-writable", "usr/local/bin/tool", "file"),
        ("world-writable", "usr/share/open", "dir"),
    }


# --- fuzzing: hostile content never crashes a parser, and stays fast ---------------------

lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "Package: a",
                "Version: 1",
                "Status: install ok installed",
                "Source: b (",
                "Source: b (2)",
                "P:x",
                "V:1",
                "o:",
                "A:",
                "ID=x",
                'VERSION_ID="1',
                "",
                "PASS_MAX_DAYS",
                "PASS_MIN_LEN 5 # c",
                " continued",
                "\x00",
                "=\"'",
            ]
        ),
        st.text(max_size=40),
    ),
    max_size=40,
)


@FUZZ
@given(lines)
def test_text_parsers_never_fail(text_lines: list[str]) -> None:
    data = "\n".join(text_lines).encode("utf-8", "surrogatepass")
    for detector, path in (
        (Dpkg(), "var/lib/dpkg/status"),
        (Apk(), "lib/apk/db/installed"),
        (OSReleaseFile(), "etc/os-release"),
        (LoginDefs(), "etc/login.defs"),
    ):
        entry = detector.parse(path, data)
        assert entry is None or entry.path == path
        for p in entry.packages if entry else ():
            assert p.name and p.version


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    buf = bytearray(data[: max(cut, 0)] if cut < len(data) else data)
    for at, value in edits:
        if buf:
            buf[at % len(buf)] = value
    return bytes(buf)


NDB = fixture("sle15-bci-Packages.db.gz")
edits = st.lists(st.tuples(st.integers(0, 1 << 24), st.integers(0, 255)), max_size=20)


@FUZZ
@given(edits, st.integers(0, len(NDB) + 1))
def test_ndb_reader_raises_only_its_own_error(changes: list[tuple[int, int]], cut: int) -> None:
    try:
        for blob in ndb_blobs(mutate(NDB, changes, cut)):
            assert isinstance(blob, bytes)
    except NDBError:
        pass


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        [
            "cbl-mariner-2.0-rpmdb.sqlite.gz",
            "centos8-libuuid-Packages.gz",
            "sle15-bci-Packages.db.gz",
        ]
    ),
    edits,
    st.integers(0, 1 << 22),
)
def test_damaged_rpm_databases_make_a_partial_layer(
    name: str, changes: list[tuple[int, int]], cut: int
) -> None:
    """A damaged database gives what it still can; what it cannot makes the
    layer PARTIAL, never an exception out of the reader, and soon."""
    path = {"c": "var/lib/rpm/rpmdb.sqlite", "s": "var/lib/rpm/Packages.db"}.get(
        name[0], "var/lib/rpm/Packages"
    )
    damaged = mutate(fixture(name), changes, cut)
    index = index_layer(io.BytesIO(tar(M(path, damaged))), "sha256:damaged")
    assert index.state in (LayerState.COMPLETE, LayerState.PARTIAL)
    assert (index.state == LayerState.PARTIAL) == bool(index.reason)


def test_a_looping_sqlite_overflow_chain_ends_partial(tmp_path: Path) -> None:
    """dissect's SQLite reader follows overflow pages while they point on: a
    chain looping back would read for ever. The page budget stops it."""
    import sqlite3

    path = tmp_path / "rpmdb.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY, blob BLOB)")
        db.execute("INSERT INTO Packages VALUES (1, ?)", (b"A" * 20000,))
    db.close()
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[16:18], "big")
    chain = [i for i in range(1, len(data) // size) if data[i * size + 4 : i * size + 8] == b"AAAA"]
    assert len(chain) > 1
    data[chain[-1] * size : chain[-1] * size + 4] = (chain[0] + 1).to_bytes(4, "big")
    index = index_layer(io.BytesIO(tar(M("var/lib/rpm/rpmdb.sqlite", bytes(data)))), "sha256:loop")
    assert index.state == LayerState.PARTIAL and "page cycle" in index.reason


def test_a_looping_berkeley_overflow_page_ends_partial() -> None:
    data = bytearray(fixture("centos8-libuuid-Packages.gz"))
    size = int.from_bytes(data[20:24], "little")
    overflow = [i for i in range(len(data) // size) if data[i * size + 25] == 7]  # P_OVERFLOW
    assert overflow
    for page in overflow:  # each its own successor, holding nothing: the size never shrinks
        data[page * size + 16 : page * size + 20] = page.to_bytes(4, "little")
        data[page * size + 22 : page * size + 24] = b"\0\0"
    index = index_layer(io.BytesIO(tar(M("var/lib/rpm/Packages", bytes(data)))), "sha256:loop")
    assert index.state == LayerState.PARTIAL and "page cycle" in index.reason
