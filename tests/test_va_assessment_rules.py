"""The verdict on an image from its contents, matches and exemptions:
statuses, severities from CVSS vectors, each package manager's fix,
configuration checks at their thresholds, exemption scopes, aliases and
expiry, and the JSON, Harbor and SARIF renderings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cvss import CVSS2, CVSS3, CVSS4

from moorage.va.assess import (
    assess,
    fix_command,
    harbor_report,
    in_scope,
    manifest_report_json,
    report_from_json,
    report_to_json,
    sarif,
    severity,
)
from moorage.va.model import (
    Advisory,
    Affected,
    Entry,
    Exemption,
    FoundPackage,
    ImageContents,
    Match,
    OSRelease,
    Package,
    PackageType,
    Severity,
    SeverityLevel,
    Status,
)

DEBIAN = OSRelease("debian", "12", "Debian GNU/Linux 12 (bookworm)")
LAYER = "sha256:" + "a" * 64
DIGEST = "sha256:" + "b" * 64
V3 = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
V4 = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"
V2 = "AV:N/AC:L/Au:N/C:P/I:P/A:P"


def package(kind: PackageType, name: str, version: str, namespace: str | None = None) -> Package:
    found = FoundPackage(kind, name, version, "var/lib/dpkg/status", namespace=namespace)
    return Package(f"pkg:{kind.value}/{name}@{version}", found, LAYER)


def advisory(
    id_: str = "DSA-5000-1", aliases: tuple[str, ...] = ("CVE-2024-0001",), *sev: Severity
) -> Advisory:
    return Advisory(
        id=id_,
        source="test",
        modified="2024-01-01T00:00:00Z",
        aliases=aliases,
        summary="a flaw",
        severity=sev,
        affected=(Affected("Debian:12", "openssl"),),
    )


def contents(*packages: Package, entries: tuple[Entry, ...] = (), **kw: object) -> ImageContents:
    return ImageContents(
        kw.get("os", DEBIAN),  # type: ignore[arg-type]
        packages,
        tuple((e, LAYER) for e in entries),
        partial=kw.get("partial", ()),  # type: ignore[arg-type]
    )


OPENSSL = package(PackageType.DEB, "openssl", "3.0.11-1~deb12u1")
NON_ROOT = {"User": "app"}


def verdict(c: ImageContents, matches: list[Match], exemptions: list[Exemption] = [], **kw: object):  # type: ignore[no-untyped-def]  # noqa: B006
    return assess(
        c,
        matches,
        exemptions,
        kw.pop("config", NON_ROOT),  # type: ignore[arg-type]
        digest=DIGEST,
        repository="team/app",
        tags=("v1",),
        **kw,  # type: ignore[arg-type]
    )


def test_status_follows_fixes_exemptions_and_what_was_seen() -> None:
    fixable = Match(OPENSSL, advisory(), "Debian:12", "3.0.13-1~deb12u1")
    unfixed = Match(OPENSSL, advisory("DSA-5001-1", ("CVE-2024-0002",)), "Debian:12", None)
    assert verdict(contents(OPENSSL), [fixable]).status is Status.FAIL
    assert verdict(contents(OPENSSL), [unfixed]).status is Status.WARN
    assert verdict(contents(OPENSSL), []).status is Status.OK
    exempt = Exemption("e1", "acct", "team/app", "cve", "cve-2024-0001")  # any alias, any case
    exempted = verdict(contents(OPENSSL), [fixable], [exempt])
    assert exempted.status is Status.WARN and exempted.findings[0].exempted_by == "e1"
    partial = verdict(contents(OPENSSL, partial=(LAYER,)), [])
    assert partial.status is Status.PARTIAL and LAYER in partial.reason
    assert verdict(contents(OPENSSL, partial=(LAYER,)), [fixable]).status is Status.FAIL
    unsupported = verdict(contents(OPENSSL), [], supported=False)
    assert unsupported.status is Status.UNSUPPORTED and "bookworm" in unsupported.reason
    empty = verdict(contents(os=None), [])
    assert empty.status is Status.UNSUPPORTED and "no operating system" in empty.reason


def test_severity_from_each_cvss_version_else_the_records_label() -> None:
    assert severity(advisory("A", (), Severity("CVSS_V3", V3))) == (
        SeverityLevel.CRITICAL,
        V3,
        CVSS3(V3).scores()[0],
    )
    level, _, score = severity(advisory("B", (), Severity("CVSS_V4", V4)))
    assert score == CVSS4(V4).base_score and level is SeverityLevel.CRITICAL
    level, _, score = severity(advisory("C", (), Severity("CVSS_V2", V2)))
    assert score == CVSS2(V2).scores()[0] == 7.5 and level is SeverityLevel.HIGH
    assert severity(advisory("D", (), Severity("CVSS_V3", "CVSS:3.1/garbage")))[0] is (
        SeverityLevel.UNKNOWN
    )
    assert severity(advisory("E", (), Severity("Ubuntu", "medium")))[0] is SeverityLevel.MEDIUM
    labelled = Advisory("F", "t", "", affected=(Affected("Debian:12", "x", severity="HIGH"),))
    assert severity(labelled) == (SeverityLevel.HIGH, "", None)
    # Scale boundaries of CVSS v3.1, section 5.
    for vector, expected in [
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", SeverityLevel.NONE),
        ("CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N", SeverityLevel.LOW),
    ]:
        assert severity(advisory("G", (), Severity("CVSS_V3", vector)))[0] is expected


@pytest.mark.parametrize(
    ("kind", "name", "namespace", "fixed", "command"),
    [
        (
            PackageType.DEB,
            "openssl",
            None,
            "3.0.13-1",
            "apt-get install --only-upgrade openssl=3.0.13-1",
        ),
        (PackageType.APK, "libssl3", None, "3.3.2-r1", "apk add --upgrade libssl3"),
        (PackageType.RPM, "openssl-libs", None, "1:3.0.7-27.el9", "dnf update openssl-libs"),
        (PackageType.PYPI, "jinja2", None, "3.1.4", "pip install 'jinja2>=3.1.4'"),
        (PackageType.NPM, "core", "@babel", "7.23.2", "npm install @babel/core@7.23.2"),
        (PackageType.GOLANG, "net", "golang.org/x", "0.23.0", "go get golang.org/x/net@v0.23.0"),
        (PackageType.CARGO, "h2", None, "0.3.26", "cargo update -p h2 --precise 0.3.26"),
    ],
)
def test_fix_is_the_package_managers_own_command(
    kind: PackageType, name: str, namespace: str | None, fixed: str, command: str
) -> None:
    assert fix_command(package(kind, name, "0", namespace), fixed) == command


def test_maven_fix_and_no_fix_advice() -> None:
    jackson = package(PackageType.MAVEN, "jackson-databind", "2.9.0", "com.fasterxml.jackson.core")
    assert "-Dincludes=com.fasterxml.jackson.core:jackson-databind" in fix_command(
        jackson, "2.9.10"
    )
    assert "no fixed version" in fix_command(OPENSSL, None)


def test_configuration_checks_at_their_thresholds() -> None:
    def ids(facts: dict[str, str], config: dict[str, str] = NON_ROOT) -> set[str]:
        entry = Entry("etc/login.defs", "login.defs", facts=tuple(facts.items()))
        return {i.id for i in verdict(contents(entries=(entry,)), [], config=config).config_issues}

    debian = {"PASS_MAX_DAYS": "99999", "PASS_MIN_DAYS": "0"}  # Debian's own login.defs
    assert ids(debian) == {"pass_max_days", "pass_min_days"}
    assert ids({"PASS_MAX_DAYS": "90", "PASS_MIN_DAYS": "1", "PASS_MIN_LEN": "8"}) == set()
    assert ids({"PASS_MAX_DAYS": "91", "PASS_MIN_DAYS": "1", "PASS_MIN_LEN": "7"}) == {
        "pass_max_days",
        "pass_min_len",
    }
    assert "runs_as_root" in ids({"PASS_MAX_DAYS": "30", "PASS_MIN_DAYS": "7"}, {})
    for user in ("root", "0", "0:0", "root:wheel", ""):
        assert "runs_as_root" in ids({"PASS_MAX_DAYS": "30", "PASS_MIN_DAYS": "7"}, {"User": user})
    sshd = Entry("usr/sbin/sshd", "sshd")
    writable = Entry("etc/cron.d/job", "world-writable", facts=(("mode", "0666"),))
    found = verdict(contents(entries=(sshd, writable)), []).config_issues
    assert {i.id for i in found} == {"ssh_server", "world_writable"}
    assert verdict(contents(entries=(sshd,)), []).status is Status.WARN  # warns, never fails
    exempt = Exemption("e2", "acct", "team", "configuration", "ssh_server")
    assert verdict(contents(entries=(sshd,)), [], [exempt]).config_issues[0].exempted_by == "e2"


def test_exemption_scopes_and_expiry() -> None:
    def ex(scope: str, expires: str = "") -> Exemption:
        return Exemption("x", "acct", scope, "cve", "CVE-1", expires=expires)

    digest = "sha256:" + "c" * 64
    assert in_scope(ex("*"), "team/app", (), ())
    assert in_scope(ex("team"), "team/app", (), ()) and not in_scope(ex("tea"), "team/app", (), ())
    assert in_scope(ex("team/app"), "team/app", (), ()) and not in_scope(
        ex("team/ap"), "team/app", (), ()
    )
    assert in_scope(ex("team/app:v1"), "team/app", ("v1",), ())
    assert not in_scope(ex("team/app:v2"), "team/app", ("v1",), ())
    assert in_scope(ex(f"team/app@{digest}"), "team/app", (), (digest,))
    assert not in_scope(ex(f"team/other@{digest}"), "team/app", (), (digest,))
    fixable = Match(OPENSSL, advisory("DSA-1", ("CVE-1",)), "Debian:12", "9")
    now = datetime(2027, 1, 1, tzinfo=UTC)
    past = (now - timedelta(days=1)).isoformat()
    future = (now + timedelta(days=1)).isoformat()
    assert verdict(contents(OPENSSL), [fixable], [ex("team", past)], now=now).status is Status.FAIL
    assert (
        verdict(contents(OPENSSL), [fixable], [ex("team", future)], now=now).status is Status.WARN
    )


def test_report_json_round_trips_and_renders_for_harbor_and_sarif() -> None:
    fixable = Match(
        OPENSSL,
        advisory("DSA-5000-1", ("CVE-2024-0001",), Severity("CVSS_V3", V3)),
        "Debian:12",
        "3.0.13-1",
    )
    sshd = Entry("usr/sbin/sshd", "sshd")
    report = verdict(contents(OPENSSL, entries=(sshd,)), [fixable], platform="linux/amd64")
    assert report_from_json(report_to_json(report)) == report
    doc = manifest_report_json(
        "team/app", DIGEST, "application/vnd.oci.image.index.v1+json", [report]
    )
    assert doc["status"] == "FAIL" and doc["platforms"][0]["platform"] == "linux/amd64"
    harbor = harbor_report("team/app", DIGEST, "m", [report])
    (vuln,) = harbor["vulnerabilities"]
    assert vuln["fix_version"] == "3.0.13-1" and vuln["severity"] == "Critical"
    assert harbor["severity"] == "Critical" and vuln["layer"] == {"digest": LAYER}
    rendered = sarif(doc)
    assert rendered["version"] == "2.1.0"
    results = rendered["runs"][0]["results"]
    assert [(r["ruleId"], r["level"]) for r in results] == [
        ("DSA-5000-1", "error"),
        ("ssh_server", "warning"),
    ]
    rules = {r["id"] for r in rendered["runs"][0]["tool"]["driver"]["rules"]}
    assert rules == {"DSA-5000-1", "ssh_server"}
