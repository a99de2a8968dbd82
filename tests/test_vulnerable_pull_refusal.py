"""``[va] block_pulls``: the registry refuses manifest GETs of images the
Advisor calls FAIL, except HEAD requests and automation (service IDs and
tokens that may push), and names the advisories.

The rule is tested on the Advisor's own ``Report`` values; end to end, a
real ``moorage serve`` with the option on, an image with a known advisory
pushed with skopeo, and pulls by a Reader's and a Writer's service ID."""

from __future__ import annotations

import importlib.util
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from moorage.config import load_settings
from moorage.va.model import ConfigIssue, Finding, OSRelease, Report, SeverityLevel, Status
from moorage.va.pulls import open_issues, refusal
from tests.iam_helpers import ADMIN_KEY, Api, bearer
from tests.server import MoorageServer, ensure_region_hosts
from tests.va_vulnerable import ADVISORY, exempt, import_advisories, vulnerable_image

DEBIAN = OSRelease("debian", "11")
OPENSSL = Finding(
    advisory_id="DSA-5343-1",
    aliases=("CVE-2023-0286",),
    summary="openssl security update",
    severity=SeverityLevel.HIGH,
    cvss_vector="CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:H",
    cvss_score=7.4,
    package="openssl",
    purl="pkg:deb/debian/openssl@1.1.1n-0%2Bdeb11u3?distro=debian-11",
    installed="1.1.1n-0+deb11u3",
    fixed="1.1.1n-0+deb11u4",
    fix="apt-get install --only-upgrade openssl=1.1.1n-0+deb11u4",
    layer="sha256:" + "1" * 64,
)
AMD64, ARM64 = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def report(status: Status, *findings: Finding, platform: str = "", digest: str = AMD64) -> Report:
    return Report(digest, platform, status, DEBIAN, findings=findings)


def test_a_fail_report_is_refused_naming_its_advisories() -> None:
    refused = refusal([report(Status.FAIL, OPENSSL)])
    assert refused is not None
    message, detail = refused
    assert "reports FAIL for this image" in message and "DSA-5343-1" in message
    assert "moorage cr exemption-add" in message
    assert detail == [{"platform": "", "digest": AMD64, "status": "FAIL", "issues": ["DSA-5343-1"]}]


def test_ok_warn_pending_and_unsupported_are_served() -> None:
    for status in (Status.OK, Status.WARN, Status.PENDING, Status.UNSUPPORTED, Status.PARTIAL):
        assert refusal([report(status, OPENSSL)]) is None
    assert refusal([]) is None  # no report: nothing known against it


def test_an_exempted_fail_is_served() -> None:
    exempted = Finding(**{**OPENSSL.__dict__, "exempted_by": "exm-1"})
    assert open_issues(report(Status.FAIL, exempted)) == []
    assert refusal([report(Status.FAIL, exempted)]) is None


def test_configuration_issues_count_and_fixable_findings_come_first() -> None:
    unfixed = Finding(**{**OPENSSL.__dict__, "advisory_id": "CVE-2024-0001", "fixed": None})
    failing = Report(
        AMD64,
        "",
        Status.FAIL,
        DEBIAN,
        findings=(unfixed, OPENSSL),
        config_issues=(ConfigIssue("ssh_server", "an SSH server is installed", "remove it"),),
    )
    assert open_issues(failing) == ["DSA-5343-1", "ssh_server"]


def test_one_failing_platform_refuses_the_index() -> None:
    refused = refusal(
        [
            report(Status.OK, platform="linux/amd64", digest=AMD64),
            report(Status.FAIL, OPENSSL, platform="linux/arm64", digest=ARM64),
        ]
    )
    assert refused is not None and "(linux/arm64)" in refused[0]
    assert [d["digest"] for d in refused[1]] == [ARM64]


def test_the_option_is_off_by_default_and_read_from_va_block_pulls(tmp_path: Path) -> None:
    assert load_settings().va_block_pulls is False
    config = tmp_path / "moorage.toml"
    config.write_text("[va]\nblock_pulls = true\n")
    assert load_settings(config).va_block_pulls is True


# -- end to end ------------------------------------------------------------------------

ADVISOR = ("moorage.va.indexer", "moorage.va.assess", "moorage.va.overlay", "moorage.va.match")
MISSING = [m for m in ADVISOR if importlib.util.find_spec(m) is None]
needs_advisor = pytest.mark.skipif(
    bool(MISSING),
    reason="the Advisor is not merged here yet (missing "
    + ", ".join(MISSING)
    + "): va-index's store and indexer, va-os's layer index, va-feeds' import",
)
US = "us.localhost"


@pytest.fixture(scope="module")
def blocking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MoorageServer, Any]]:
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("block-pulls")
    server = MoorageServer(
        tmp / "data",
        tmp / "server.log",
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY, "MOORAGE_VA_BLOCK_PULLS": "true"},
    ).start()
    try:
        yield server, tmp
    finally:
        server.stop()


@needs_advisor
def test_a_fail_image_is_refused_to_a_reader_and_served_to_head_and_automation(
    blocking: tuple[MoorageServer, Any],
) -> None:
    server, tmp = blocking
    vulnerable = vulnerable_image(tmp / "vulnerable")
    admin = Api(server, ADMIN_KEY)
    admin.namespace("us-south", "pulls")
    writer = admin.service_key("pulls-writer", "Writer", region="us-south")
    reader = admin.service_key("pulls-reader", "Reader", region="us-south")
    import_advisories(server)
    host = server.host_for(US)
    pushed = subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            f"iamapikey:{writer}",
            f"oci:{vulnerable.layout}:latest",
            f"docker://{host}/pulls/vulnerable:v1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pushed.returncode == 0, pushed.stderr
    url = f"http://{host}/v2/pulls/vulnerable/manifests/v1"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}

    def pull(key: str, method: str = "GET") -> requests.Response:
        headers = {**accept, **bearer(server, US, key, "repository:pulls/vulnerable:pull")}
        return requests.request(method, url, headers=headers, timeout=10)

    deadline = time.monotonic() + 120
    answer = pull(reader)
    while answer.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.5)  # indexed in the background: refused once its report is FAIL
        answer = pull(reader)
    assert answer.status_code == 403, answer.text
    error = answer.json()["errors"][0]
    assert error["code"] == "DENIED" and ADVISORY in error["message"]
    assert error["detail"][0]["issues"] == [ADVISORY]
    assert pull(reader, "HEAD").status_code == 200
    assert pull(writer).status_code == 200  # a pipeline that may push still reads it
    assert pull(ADMIN_KEY).status_code == 403  # a person, whatever their role

    exempt(server, ADMIN_KEY, "pulls/vulnerable", ADVISORY)
    deadline = time.monotonic() + 60
    while pull(reader).status_code == 403 and time.monotonic() < deadline:
        time.sleep(0.2)  # the exemption re-assesses the image in the background
    assert pull(reader).status_code == 200
