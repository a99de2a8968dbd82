"""The Advisor through a real ``moorage serve`` with IAM: images pushed with
skopeo are indexed in the background and reported through the management
API, the registry extension (read with pull credentials) and ``moorage cr
va``; exemptions by role; another account sees nothing; a server killed
mid-index loses no work."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cvss import CVSS3

from tests.conftest import require_tool
from tests.helpers import wait_for
from tests.iam_helpers import ADMIN_KEY, Api, bearer, skopeo
from tests.oci_layout import write_layout
from tests.server import MOORAGE, MoorageServer, ensure_region_hosts
from tests.test_cli import moorage
from tests.va_images import (
    ALPINE_ADVISORY,
    ALPINE_LAYER,
    image,
    layer,
    write_advisories,
    write_index_layout,
)
from tests.va_layers import M

US = "us.localhost"


def start(tmp: Path, name: str, **env: str) -> MoorageServer:
    return MoorageServer(
        tmp / name,
        tmp / f"{name}.log",
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY, **env},
    ).start()


def import_advisories(server: MoorageServer, directory: Path) -> None:
    done = moorage(
        "va",
        "db",
        "import",
        str(write_advisories(directory)),
        "--data",
        str(server.data_dir),
        env=server.env,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    require_tool("skopeo")
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("va-api")
    started = start(tmp, "data")
    import_advisories(started, tmp / "advisories")
    admin = Api(started, ADMIN_KEY)
    admin.namespace("us-south", "va-team")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def admin(server: MoorageServer) -> Api:
    return Api(server, ADMIN_KEY)


def push(server: MoorageServer, layout: Path, target: str, key: str = ADMIN_KEY) -> None:
    pushed = skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"iamapikey:{key}",
        f"oci:{layout}:latest",
        f"docker://{server.host_for(US)}/{target}",
    )
    assert pushed.returncode == 0, pushed.stderr


def assessed(api: Api, image_ref: str, timeout: float = 60) -> dict[str, Any]:
    """The report once no platform is PENDING."""

    def ready() -> dict[str, Any] | None:
        r = api.request("GET", f"/cr/us-south/va/{image_ref}")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        waiting = [p for p in doc["platforms"] if p["status"] == "PENDING"]
        return None if waiting or doc["status"] == "PENDING" else doc

    return wait_for(ready, timeout, f"{image_ref} to be assessed")


@pytest.fixture(scope="module")
def alpine(server: MoorageServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    layout = write_layout(image([ALPINE_LAYER]), tmp_path_factory.mktemp("alpine") / "oci")
    push(server, layout, "va-team/alpine:3.20")
    return assessed(Api(server, ADMIN_KEY), "va-team/alpine:3.20")


def test_pushed_image_is_reported_with_fixes_from_its_own_layer(alpine: dict[str, Any]) -> None:
    assert alpine["status"] == "FAIL"
    (platform,) = alpine["platforms"]
    assert platform["os"]["id"] == "alpine" and platform["snapshot"]
    vector = ALPINE_ADVISORY["severity"][0]["score"]  # type: ignore[index]
    score = CVSS3(vector).scores()[0]
    by_package = {f["package"]: f for f in platform["findings"]}
    assert set(by_package) == {"libcrypto3", "libssl3"}  # both of openssl's binaries
    for name, finding in by_package.items():
        assert finding["id"] == "ALPINE-CVE-2024-9143" and finding["aliases"] == ["CVE-2024-9143"]
        assert (finding["installed"], finding["fixed"]) == ("3.3.2-r0", "3.3.2-r1")
        assert finding["fix"] == f"apk add --upgrade {name}"
        assert finding["cvss_vector"] == vector and finding["cvss_score"] == score
        assert finding["severity"] == "Medium"
        assert finding["layer"].startswith("sha256:") and finding["purl"].startswith("pkg:apk/")
    assert [i["id"] for i in platform["config_issues"]] == ["runs_as_root"]
    # Harbor's report fields beside Moorage's own.
    assert alpine["artifact"]["digest"] == alpine["digest"] and alpine["severity"] == "Medium"
    assert {v["package"] for v in alpine["vulnerabilities"]} == {"libcrypto3", "libssl3"}


def test_registry_extension_answers_pull_credentials_only(
    server: MoorageServer, admin: Api, alpine: dict[str, Any]
) -> None:
    reader = admin.service_key(
        "va-puller", "Reader", region="us-south", resource_type="namespace", resource="va-team"
    )
    url = f"http://{server.host_for(US)}/v2/va-team/alpine/_moorage/va/{alpine['digest']}"
    headers = bearer(server, US, reader, "repository:va-team/alpine:pull")
    got = requests.get(url, headers=headers, timeout=10)
    assert got.status_code == 200 and got.json()["status"] == "FAIL"
    harbor = requests.get(
        url,
        headers={**headers, "Accept": "application/vnd.security.vulnerability.report; version=1.1"},
        timeout=10,
    )
    assert harbor.headers["content-type"].startswith("application/vnd.security.vulnerability")
    assert set(harbor.json()) == {
        "generated_at",
        "artifact",
        "scanner",
        "severity",
        "vulnerabilities",
    }
    assert requests.get(url, timeout=10).status_code == 401  # no credentials, no report


def test_other_account_region_and_namespace_see_nothing(
    server: MoorageServer, admin: Api, alpine: dict[str, Any]
) -> None:
    created = admin.call(
        "POST", "/iam/accounts", {"name": "va-other", "admin_email": "a@va-other.test"}, expect=201
    )
    other = Api(server, created["apikey"])
    path = f"/cr/us-south/va/va-team/alpine@{alpine['digest']}"
    refused = other.request("GET", path)
    assert refused.status_code == 404 and "va-team" in refused.text and "FAIL" not in refused.text
    assert other.request("GET", "/cr/us-south/exemptions").json() == []
    # The same path in another region names another (absent) namespace.
    assert admin.request("GET", "/cr/eu-central/va/va-team/alpine:3.20").status_code == 404
    # A key limited to another namespace of the same account.
    admin.namespace("us-south", "va-elsewhere")
    narrow = Api(
        server,
        admin.service_key(
            "va-narrow",
            "Manager",
            region="us-south",
            resource_type="namespace",
            resource="va-elsewhere",
        ),
    )
    assert narrow.request("GET", path).status_code == 403
    assert (
        narrow.request(
            "POST",
            "/cr/us-south/exemptions",
            {"scope": "va-team", "issue_type": "cve", "issue_id": "CVE-2024-9143"},
        ).status_code
        == 403
    )


def test_reader_lists_but_cannot_add_exemptions_and_an_alias_exempts(
    server: MoorageServer, admin: Api, alpine: dict[str, Any]
) -> None:
    reader = Api(server, admin.service_key("va-reader", "Reader", region="us-south"))
    body = {"scope": "va-team/alpine", "issue_type": "cve", "issue_id": "CVE-2024-9143"}
    before = server.query("SELECT count(*) FROM va_exemptions")
    assert reader.request("POST", "/cr/us-south/exemptions", body).status_code == 403
    assert server.query("SELECT count(*) FROM va_exemptions") == before
    bad = admin.request("POST", "/cr/us-south/exemptions", {**body, "issue_type": "virus"})
    assert bad.status_code == 400 and "issue type" in bad.text
    assert (
        admin.request(
            "POST", "/cr/us-south/exemptions", {**body, "expires": "2001-01-01"}
        ).status_code
        == 400
    )

    created = admin.call(
        "POST", "/cr/us-south/exemptions", {**body, "reason": "no EC2M"}, expect=201
    )
    assert [e["id"] for e in reader.call("GET", "/cr/us-south/exemptions", expect=200)] == [
        created["id"]
    ]

    def status_is(wanted: str) -> dict[str, Any] | None:
        doc = admin.call("GET", f"/cr/us-south/va/va-team/alpine@{alpine['digest']}", expect=200)
        return doc if doc["status"] == wanted else None

    warned = wait_for(lambda: status_is("WARN"), 60, "the exemption to apply")
    assert {f["exempted_by"] for f in warned["platforms"][0]["findings"]} == {created["id"]}
    assert reader.request("DELETE", f"/cr/us-south/exemptions/{created['id']}").status_code == 403
    admin.call("DELETE", f"/cr/us-south/exemptions/{created['id']}", expect=204)
    wait_for(lambda: status_is("FAIL"), 60, "the exemption's removal to apply")


def test_multi_arch_index_pushed_with_skopeo_is_reported_per_platform(
    server: MoorageServer, admin: Api, tmp_path: Path
) -> None:
    amd = image([ALPINE_LAYER], arch="amd64")
    arm = image([ALPINE_LAYER, layer(M("etc/motd", b"hi"))], user="1000", arch="arm64")
    layout = write_index_layout({"linux/amd64": amd, "linux/arm64": arm}, tmp_path / "oci")
    push(server, layout, "va-team/multi:v1")
    doc = assessed(admin, "va-team/multi:v1")
    stored = admin.call("GET", "/cr/us-south/image?image=va-team/multi:v1", expect=200)["manifest"]
    children = [
        (f"{m['platform']['os']}/{m['platform']['architecture']}", m["digest"])
        for m in stored["manifests"]
    ]
    assert [(p["platform"], p["digest"]) for p in doc["platforms"]] == sorted(children)
    assert [c[0] for c in children] == ["linux/amd64", "linux/arm64"]
    assert all(p["status"] == "FAIL" for p in doc["platforms"])
    configs = {p["platform"]: [i["id"] for i in p["config_issues"]] for p in doc["platforms"]}
    assert configs == {"linux/amd64": ["runs_as_root"], "linux/arm64": []}


def cli(profile: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    result = subprocess.run(
        [str(MOORAGE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "MOORAGE_CONFIG_DIR": str(profile)},
    )
    assert (result.returncode == 0) == ok, f"moorage {' '.join(args)}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def test_cli_va_images_and_exemption_commands(
    server: MoorageServer, alpine: dict[str, Any], tmp_path: Path
) -> None:
    cli(tmp_path, "login", "--server", f"http://localhost:{server.port}", "--apikey", ADMIN_KEY)
    cli(tmp_path, "cr", "region-set", "us-south")
    table = cli(tmp_path, "cr", "va", f"{US}:{server.port}/va-team/alpine:3.20").stdout
    assert "Status: FAIL" in table and "apk add --upgrade libssl3" in table
    assert "runs_as_root" in table
    as_json = json.loads(
        cli(
            tmp_path, "cr", "vulnerability-assessment", "va-team/alpine:3.20", "--output", "json"
        ).stdout
    )
    assert as_json["digest"] == alpine["digest"]
    sarif = json.loads(cli(tmp_path, "cr", "va", "va-team/alpine:3.20", "--output", "sarif").stdout)
    assert sarif["version"] == "2.1.0"
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} >= {"ALPINE-CVE-2024-9143"}
    bad = cli(tmp_path, "cr", "va", "va-team/alpine:3.20", "--output", "xml", ok=False)
    assert bad.stderr.startswith("FAILED: ") and bad.returncode == 2

    images = json.loads(cli(tmp_path, "cr", "images", "--include-va", "--output", "json").stdout)
    row = next(r for r in images if r["repository"] == "va-team/alpine" and r["tag"] == "3.20")
    assert row["security_status"] == "FAIL" and row["va"]["fixable"] == 1
    listing = cli(tmp_path, "cr", "images").stdout
    assert "FAIL" in listing and "Not scanned" not in listing

    types = cli(tmp_path, "cr", "exemption-types").stdout
    assert "cve" in types and "configuration" in types
    added = cli(
        tmp_path,
        "cr",
        "exemption-add",
        "--scope",
        "va-team/alpine:3.20",
        "--issue-type",
        "configuration",
        "--issue-id",
        "runs_as_root",
        "--expires",
        "2999-01-01",
        "--reason",
        "a base image",
    ).stdout
    exemption_id = added.split()[2]
    listed = json.loads(cli(tmp_path, "cr", "exemption-list", "--output", "json").stdout)
    assert any(e["id"] == exemption_id and e["expires"].startswith("2999") for e in listed)
    wrong = cli(
        tmp_path,
        "cr",
        "exemption-add",
        "--scope",
        "va-team",
        "--issue-type",
        "bogus",
        "--issue-id",
        "x",
        ok=False,
    )
    assert wrong.stderr.startswith("FAILED: ") and "issue type" in wrong.stderr
    cli(tmp_path, "cr", "exemption-rm", exemption_id)
    assert exemption_id not in cli(tmp_path, "cr", "exemptions").stdout


def test_server_killed_mid_index_loses_no_work(tmp_path: Path) -> None:
    """SIGKILL while the worker holds an item: the item's lease runs out and
    the restarted server (another replica, as far as the queue knows) takes
    it and finishes it."""
    registry = start(tmp_path, "killed", MOORAGE_VA_LEASE="2")
    big = layer(M("usr/share/big.bin", os.urandom(48 * 1024 * 1024)))
    img = image([ALPINE_LAYER, big])
    Api(registry, ADMIN_KEY).namespace("us-south", "killed-ns")
    push(registry, write_layout(img, tmp_path / "oci"), "killed-ns/app:v1")

    def leased() -> bool:
        rows = registry.query("SELECT state FROM va_queue")
        return bool(rows) and rows[0][0] == "leased"

    wait_for(leased, 30, "the indexer to take the item")
    registry.kill9()
    assert registry.query("SELECT state, attempts FROM va_queue") == [("leased", 1)]
    assert registry.query("SELECT count(*) FROM va_reports") == [(0,)]

    registry.start()
    try:
        doc = assessed(Api(registry, ADMIN_KEY), "killed-ns/app:v1", timeout=120)
        assert doc["status"] != "PENDING"
        assert registry.query("SELECT state, attempts FROM va_queue") == [("done", 2)]
    finally:
        registry.stop()
