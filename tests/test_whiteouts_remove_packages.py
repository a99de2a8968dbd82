"""Layers stacked as the runtime stacks them: upper files replace lower ones,
whiteouts delete a path and all under it, opaque directories hide what the
lower layers put in them (never what their own layer put there), and every
package names the lowest layer it survived from."""

from __future__ import annotations

import io
import tarfile

from moorage.va.layers import index_layer
from moorage.va.model import LayerIndex, LayerState
from moorage.va.overlay import overlay
from tests.va_layers import M, fixture, gz, member_data, tar

ALPINE = fixture("alpine-minirootfs-3.20.3-x86_64-db.tar.gz")
INSTALLED = "lib/apk/db/installed"


def layer(digest: str, *members: M) -> LayerIndex:
    return index_layer(io.BytesIO(gz(tar(*members))), digest)


def alpine_db() -> str:
    return member_data(ALPINE, f"./{INSTALLED}").decode()


def without(db: str, name: str) -> bytes:
    """The database as ``apk del name`` leaves it: that paragraph gone."""
    kept = [b for b in db.strip().split("\n\n") if f"\nP:{name}\n" not in f"\n{b}\n"]
    assert len(kept) < len(db.strip().split("\n\n"))
    return ("\n\n".join(kept) + "\n\n").encode()


def status(*packages: tuple[str, str]) -> bytes:
    return "".join(
        f"Package: {n}\nStatus: install ok installed\nVersion: {v}\n\n" for n, v in packages
    ).encode()


def names(contents) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {p.name: p.layer for p in contents.packages}


def test_a_whiteout_of_the_package_database_removes_its_packages() -> None:
    base = index_layer(io.BytesIO(ALPINE), "sha256:base")
    assert len(overlay([base]).packages) == 14
    gone = layer("sha256:rm", M("lib/apk/db/.wh.installed"))
    contents = overlay([base, gone])
    assert contents.packages == ()
    assert contents.os is not None and contents.os.id == "alpine"  # os-release untouched


def test_apk_del_in_an_upper_layer_removes_one_package_and_keeps_the_origin_of_others() -> None:
    base = index_layer(io.BytesIO(ALPINE), "sha256:base")
    upper = layer("sha256:del", M(INSTALLED, without(alpine_db(), "libssl3")))
    found = names(overlay([base, upper]))
    assert "libssl3" not in found and len(found) == 13
    assert set(found.values()) == {"sha256:base"}  # the rewrite brought none of them


def test_a_whiteout_of_a_directory_removes_everything_under_it() -> None:
    lower = layer(
        "sha256:l",
        M("var/lib/dpkg/status.d/curl", status(("curl", "7.88.1-10"))),
        M("var/lib/dpkg/status.d/zlib1g", status(("zlib1g", "1:1.2.13"))),
        M("usr/sbin/sshd", b"\x7fELF", mode=0o755),
    )
    upper = layer("sha256:u", M("var/lib/.wh.dpkg"), M("usr/sbin/.wh.sshd"))
    contents = overlay([lower, upper])
    assert contents.packages == () and contents.entries == ()
    # A whiteout of "var/lib/dpkg" is not one of "var/lib/dpkgx".
    other = layer("sha256:o", M("var/lib/.wh.dpk"))
    assert len(overlay([lower, other]).packages) == 2


def test_an_opaque_directory_hides_lower_contents_but_not_its_own() -> None:
    lower = layer(
        "sha256:l",
        M("var/lib/dpkg/status.d/curl", status(("curl", "7.88.1-10"))),
        M("var/lib/dpkg/status.d/zlib1g", status(("zlib1g", "1:1.2.13"))),
    )
    upper = layer(
        "sha256:u",
        M("var/lib/dpkg/status.d/.wh..wh..opq"),
        M("var/lib/dpkg/status.d/zlib1g", status(("zlib1g", "1:1.2.13"))),
    )
    assert names(overlay([lower, upper])) == {"zlib1g": "sha256:u"}


def test_a_layers_whiteout_never_removes_its_own_files() -> None:
    one = layer(
        "sha256:1", M("var/lib/dpkg/status", status(("curl", "1"))), M("var/lib/dpkg/.wh.status")
    )
    assert names(overlay([one])) == {"curl": "sha256:1"}


def test_each_package_names_the_lowest_layer_it_survived_from() -> None:
    l1 = layer("sha256:1", M("var/lib/dpkg/status", status(("curl", "1"), ("zlib1g", "1"))))
    l2 = layer(
        "sha256:2", M("var/lib/dpkg/status", status(("curl", "1"), ("zlib1g", "2"), ("jq", "1")))
    )
    assert names(overlay([l1, l2])) == {"curl": "sha256:1", "zlib1g": "sha256:2", "jq": "sha256:2"}
    l3 = layer("sha256:3", M("var/lib/dpkg/.wh.status"))
    l4 = layer("sha256:4", M("var/lib/dpkg/status", status(("curl", "1"))))
    # Deleted, then written again: it came back with the layer that wrote it.
    assert names(overlay([l1, l2, l3, l4])) == {"curl": "sha256:4"}


def test_os_release_through_a_symlink_in_another_layer() -> None:
    lib = layer(
        "sha256:lib",
        M("usr/lib/os-release", b'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'),
    )
    link = layer(
        "sha256:link",
        M("etc/os-release", kind=tarfile.SYMTYPE, linkname="../usr/lib/os-release"),
        M("var/lib/dpkg/status", status(("curl", "7.88.1-10+deb12u5"))),
    )
    contents = overlay([lib, link])
    assert contents.os is not None
    assert (contents.os.id, contents.os.version_id, contents.os.version_codename) == (
        "debian",
        "12",
        "bookworm",
    )
    assert contents.packages[0].purl == "pkg:deb/debian/curl@7.88.1-10%2Bdeb12u5?distro=debian-12"
    absolute = layer(
        "sha256:abs", M("etc/os-release", kind=tarfile.SYMTYPE, linkname="/usr/lib/os-release")
    )
    assert overlay([lib, absolute]).os == contents.os
    # Without etc/os-release, usr/lib/os-release; a symlink loop gives up.
    assert overlay([lib]).os == contents.os
    loop = layer("sha256:loop", M("etc/os-release", kind=tarfile.SYMTYPE, linkname="os-release"))
    assert overlay([loop]).os is None
    hard = layer(
        "sha256:hard",
        M("usr/lib/os-release", b"ID=alpine\nVERSION_ID=3.20.3\n"),
        M("etc/os-release", kind=tarfile.LNKTYPE, linkname="usr/lib/os-release"),
    )
    assert hard.state == LayerState.COMPLETE
    assert overlay([hard]).os.id == "alpine"  # type: ignore[union-attr]
    upgraded = layer("sha256:up", M("usr/lib/os-release", b'ID=debian\nVERSION_ID="13"\n'))
    assert overlay([lib, link, upgraded]).os.version_id == "13"  # type: ignore[union-attr]


def test_partial_layers_are_named() -> None:
    ok = layer("sha256:ok", M("etc/os-release", b"ID=alpine\nVERSION_ID=3.20.3\n"))
    bad = index_layer(io.BytesIO(b"not a tar at all" * 64), "sha256:bad")
    assert bad.state == LayerState.UNREADABLE
    assert overlay([ok, bad]).partial == ("sha256:bad",)
