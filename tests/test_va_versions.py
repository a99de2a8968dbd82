"""Versions compare as dpkg and rpm themselves compare them, and OSV ranges
are evaluated as the OSV specification says."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moorage.va.model import Affected, AffectedRange, RangeEvent
from moorage.va.versions import affected, compare
from tests.conftest import require_tool

_alnum = st.text("0123456789abcz", min_size=1, max_size=4)
_num = st.text("0123456789", min_size=1, max_size=3)


@st.composite
def deb_versions(draw: st.DrawFn) -> str:
    epoch = draw(st.sampled_from(["", "1:", "2:"]))
    upstream = draw(_num) + "".join(
        draw(st.lists(st.tuples(st.sampled_from(".+~"), _alnum).map("".join), max_size=3))
    )
    revision = draw(st.sampled_from(["", "-1", "-2", "-1+deb12u1", "-0ubuntu1.5", "-1~bpo1"]))
    return epoch + upstream + revision


@st.composite
def rpm_versions(draw: st.DrawFn) -> str:
    version = draw(_num) + "".join(
        draw(st.lists(st.tuples(st.sampled_from(".~^_"), _alnum).map("".join), max_size=3))
    )
    release = draw(st.sampled_from(["1", "2.el9", "1.el9_4", "10.el8", "1.fc40"]))
    return f"{version}-{release}"


def _dpkg(a: str, b: str) -> int:
    for op, result in (("lt", -1), ("eq", 0)):
        if subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0:
            return result
    return 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deb_versions(), deb_versions())
def test_deb_versions_order_as_dpkg_orders_them(a: str, b: str) -> None:
    require_tool("dpkg")
    assert compare("Debian:12", a, b) == _dpkg(a, b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rpm_versions(), rpm_versions())
def test_rpm_versions_order_as_rpm_orders_them(a: str, b: str) -> None:
    require_tool("rpm")
    out = subprocess.run(
        ["rpm", "--eval", f'%{{lua: print(rpm.vercmp("{a}", "{b}"))}}'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert compare("AlmaLinux:9", a, b) == int(out.stdout.strip())


@pytest.mark.parametrize(
    ("ecosystem", "older", "newer"),
    [
        ("Debian:12", "1.2.3-1", "1.2.3-1+deb12u1"),
        ("Debian:12", "1.0", "1:0.9"),
        ("Ubuntu:22.04:LTS", "3.0.2-0ubuntu1.10", "3.0.2-0ubuntu1.12"),
        ("AlmaLinux:9", "1.8.0.392.b08-4.el8", "1:1.8.0.402.b06-2.el8"),
        ("Alpine:v3.20", "1.2.3-r9", "1.2.3-r10"),
        ("Alpine:v3.20", "1.2.3_rc1-r0", "1.2.3-r0"),
        ("PyPI", "1.0rc1", "1.0"),
        ("PyPI", "1.0", "1.0.post1"),
        ("npm", "1.0.0-beta.2", "1.0.0"),
        ("crates.io", "0.9.9", "0.10.0"),
        ("Go", "v1.2.3", "1.2.10"),
        ("Go", "v0.0.0-20210101000000-abcdefabcdef", "v0.1.0"),
        ("Maven", "1.0-SNAPSHOT", "1.0"),
        ("Maven", "2.9", "2.10"),
    ],
)
def test_each_ecosystem_orders_versions_as_its_package_manager(
    ecosystem: str, older: str, newer: str
) -> None:
    assert compare(ecosystem, older, newer) == -1
    assert compare(ecosystem, newer, older) == 1


def _entry(*events: tuple[str, str], versions: tuple[str, ...] = ()) -> Affected:
    return Affected(
        "PyPI",
        "x",
        (AffectedRange("ECOSYSTEM", tuple(RangeEvent(k, v) for k, v in events)),),
        versions,
    )


def test_ranges_follow_osv_semantics_in_any_event_order() -> None:
    # Two ranges in one: [1.0, 1.5) and [2.0, 2.5), events deliberately unsorted.
    entry = _entry(("fixed", "2.5"), ("introduced", "2.0"), ("fixed", "1.5"), ("introduced", "1.0"))
    assert affected("PyPI", "0.9", entry) == (False, None)
    assert affected("PyPI", "1.0", entry) == (True, "1.5")
    assert affected("PyPI", "1.7", entry) == (False, None)
    assert affected("PyPI", "2.1", entry) == (True, "2.5")
    assert affected("PyPI", "2.5", entry) == (False, None)


def test_introduced_zero_last_affected_limit_and_versions() -> None:
    assert affected("PyPI", "0.1", _entry(("introduced", "0"), ("fixed", "1.0"))) == (True, "1.0")
    last = _entry(("introduced", "0"), ("last_affected", "1.2"))
    assert affected("PyPI", "1.2", last) == (True, None)
    assert affected("PyPI", "1.3", last) == (False, None)
    limited = _entry(("introduced", "1.0"), ("limit", "2.0"))
    assert affected("PyPI", "1.9", limited) == (True, None)
    assert affected("PyPI", "2.0", limited) == (False, None)
    listed = Affected("PyPI", "x", (), ("3.1",))
    assert affected("PyPI", "3.1", listed) == (True, None)
    assert affected("PyPI", "3.2", listed) == (False, None)


def test_an_unreadable_version_in_a_record_never_raises() -> None:
    entry = Affected(
        "Debian:12", "x", (AffectedRange("ECOSYSTEM", (RangeEvent("introduced", "!!bad"),)),)
    )
    assert affected("Debian:12", "1.0-1", entry) == (False, None)
