"""Harbor's Pluggable Scanner API, with Moorage as the client: the adapter is
asked to scan an image in a real ``moorage serve``, pulls it back from there
with the pull-only token Moorage minted for it, and its report joins
Moorage's own, each finding labelled by who found it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import tarfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web

from moorage.auth.tokens import TokenService
from moorage.config import load_settings
from moorage.regions import PublicUrl, Target
from moorage.server import _key_ring, open_registry, regions_of
from moorage.va.model import (
    Finding,
    FoundPackage,
    ImageContents,
    Package,
    PackageType,
    Report,
    SeverityLevel,
    Status,
)
from moorage.va.scanners import REPORT_V11, Scanners, ScanTarget, egress_for, merge
from tests.helpers import wait_for
from tests.iam_helpers import ADMIN_KEY, Api, push_image_with
from tests.oci_layout import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Image, descriptor, tar_layer
from tests.server import MoorageServer, ensure_region_hosts, local_server

PACKAGES = b"openssl 3.0.11-1~deb12u2\nzlib1g 1:1.2.13.dfsg-1\n"


@dataclass
class StandInAdapter:
    """A stand-in for a Harbor scanner adapter (Trivy's or Clair's), which
    cannot run here: both need a vulnerability database from the internet.
    It speaks the adapter side of the spec (v1.1) as those do: it pulls the
    image from the registry named in the scan request with the Authorization
    it was given, and reports a made-up advisory for each ``name version``
    line of ``etc/stand-in-packages`` in the image's layers, so a report can
    only be right if the pull worked. It also tries what a leaked token must
    not allow (another repository, a push) and records the answers.

    ``mode``: "ok", "slow" (never ready) or "garbage" (a report that is not JSON)."""

    mode: str = "ok"
    requests: list[dict[str, Any]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/metadata", self.metadata)
        app.router.add_post("/api/v1/scan", self.scan)
        app.router.add_get("/api/v1/scan/{id}/report", self.report)
        return app

    async def metadata(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "scanner": {"name": "Stand-in", "vendor": "Moorage tests", "version": "1.0"},
                "capabilities": [
                    {
                        "consumes_mime_types": [OCI_MANIFEST],
                        "produces_mime_types": [REPORT_V11],
                    }
                ],
            }
        )

    async def scan(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"content_type": request.headers["Content-Type"], **body})
        scan_id = uuid.uuid4().hex
        self.reports[scan_id] = None
        asyncio.get_running_loop().create_task(self._pull_and_scan(scan_id, body))
        return web.json_response({"id": scan_id}, status=202)

    async def report(self, request: web.Request) -> web.Response:
        assert request.headers["Accept"] == REPORT_V11
        found = self.reports.get(request.match_info["id"])
        if request.match_info["id"] not in self.reports:
            return web.Response(status=404)
        if found is None or self.mode == "slow":
            return web.Response(status=302, headers={"Refresh-After": "1"})
        if self.mode == "garbage":
            return web.Response(body=b"{not json", content_type="application/json")
        return web.json_response(found, content_type=REPORT_V11.split(";")[0])

    async def _pull_and_scan(self, scan_id: str, body: dict[str, Any]) -> None:
        registry = body["registry"]["url"]
        auth = {"Authorization": body["registry"]["authorization"]}
        artifact = body["artifact"]
        repo = artifact["repository"]
        async with httpx.AsyncClient(base_url=registry, headers=auth, timeout=30) as client:
            other = await client.get("/v2/shop/other/manifests/v1")
            self.attempts["other repository"] = other.status_code
            push = await client.post(f"/v2/{repo}/blobs/uploads/")
            self.attempts["push"] = push.status_code
            manifest = await client.get(
                f"/v2/{repo}/manifests/{artifact['digest']}", headers={"Accept": OCI_MANIFEST}
            )
            self.attempts["manifest"] = manifest.status_code
            lines: list[str] = []
            for layer in manifest.json()["layers"]:
                blob = await client.get(f"/v2/{repo}/blobs/{layer['digest']}")
                with tarfile.open(fileobj=io.BytesIO(blob.content)) as tar:
                    member = tar.extractfile("etc/stand-in-packages")
                    lines += member.read().decode().split("\n") if member else []
        vulnerabilities = [
            {
                "id": f"CVE-2099-{n:04d}",
                "package": name,
                "version": version,
                "fix_version": version + "+fixed",
                "severity": ("Critical", "Negligible")[n % 2],
                "description": f"a made-up advisory for {name}",
                "preferred_cvss": {"score_v3": 9.8, "vector_v3": "CVSS:3.1/AV:N/AC:L"},
            }
            for n, (name, version) in enumerate(x.split(" ", 1) for x in lines if x)
        ]
        self.reports[scan_id] = {
            "generated_at": "2026-01-01T00:00:00Z",
            "artifact": artifact,
            "scanner": {"name": "Stand-in", "vendor": "Moorage tests", "version": "1.0"},
            "severity": "Critical",
            "vulnerabilities": vulnerabilities,
        }


@asynccontextmanager
async def serving(adapter: StandInAdapter) -> AsyncIterator[str]:
    runner = web.AppRunner(adapter.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@dataclass
class Setup:
    server: MoorageServer
    tokens: TokenService
    target: Target
    public_url: PublicUrl
    image: ScanTarget
    contents: ImageContents


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("scanner")
    server = local_server(tmp, auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}).start()
    admin = Api(server, ADMIN_KEY)
    admin.namespace("us-south", "shop")
    account = admin.call("GET", "/iam/me")["account_id"]
    layer = tar_layer({"etc/stand-in-packages": PACKAGES})
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}'
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
        }
    ).encode()
    image = Image([layer], config, manifest)
    token = httpx.get(
        f"http://{server.host_for('us.localhost')}/oauth/token",
        params={"service": "us.localhost", "scope": "repository:shop/web:pull,push"},
        auth=("iamapikey", ADMIN_KEY),
    ).json()["token"]
    pushed = push_image_with(
        server, "us.localhost", "shop/web", "v1", image, {"Authorization": f"Bearer {token}"}
    )
    assert pushed.status_code == 201, pushed.text

    settings = load_settings(data_dir=str(server.data_dir), database_url=server.database_url)
    parts = open_registry(settings, prepare=False, processes_share_sqlite=True)
    tokens = TokenService(_key_ring(parts, settings), parts.iam)
    target = regions_of(settings).resolve("us.localhost")
    openssl = FoundPackage(PackageType.DEB, "openssl", "3.0.11-1~deb12u2", "var/lib/dpkg/status")
    layer_digest = descriptor(OCI_LAYER, layer)["digest"]
    contents = ImageContents(
        None,
        (Package("pkg:deb/debian/openssl@3.0.11-1~deb12u2", openssl, str(layer_digest)),),
        (),
    )
    yield Setup(
        server,
        tokens,
        target,
        PublicUrl(f"http://{{domain}}:{server.port}"),
        ScanTarget(target, "shop/web", image.manifest_digest, OCI_MANIFEST, account, "v1"),
        contents,
    )
    parts.db.shutdown()
    parts.metadata.engine.dispose()
    server.stop()


def scanners(setup: Setup, url: str, allow: tuple[str, ...] = ("127.0.0.1",), **kw: Any) -> Any:
    return Scanners([url], egress_for([url], allow), setup.tokens, setup.public_url, **kw)


def test_adapter_pulls_with_its_token_and_its_findings_join_the_report(setup: Setup) -> None:
    adapter = StandInAdapter()

    async def go() -> Any:
        async with serving(adapter) as url:
            return await scanners(setup, url).scan(setup.image, setup.contents)

    [report] = asyncio.run(go())
    assert report.error == "" and report.scanner == "Stand-in 1.0"
    [sent] = adapter.requests
    assert sent["content_type"].startswith("application/vnd.scanner.adapter.scan.request+json")
    assert sent["registry"]["url"] == f"http://us.localhost:{setup.server.port}"
    assert sent["artifact"] == {
        "repository": "shop/web",
        "digest": setup.image.digest,
        "mime_type": OCI_MANIFEST,
        "tag": "v1",
    }
    # What a leaked token could do: pull this one image, for minutes, nothing else.
    scheme, token = sent["registry"]["authorization"].split(" ")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert scheme == "Bearer" and claims["exp"] - claims["iat"] <= 300
    assert claims["access"] == [{"type": "repository", "name": "shop/web", "actions": ["pull"]}]
    assert adapter.attempts == {"other repository": 401, "push": 401, "manifest": 200}

    by_package = {f.package: f for f in report.findings}
    assert set(by_package) == {"openssl", "zlib1g"}  # read from the pulled layer
    openssl = by_package["openssl"]
    assert openssl.severity == SeverityLevel.CRITICAL and openssl.cvss_score == 9.8
    assert openssl.fixed == "3.0.11-1~deb12u2+fixed" and openssl.scanners == ("Stand-in 1.0",)
    assert openssl.purl == setup.contents.packages[0].purl  # the Advisor found it too
    assert openssl.layer == setup.contents.packages[0].layer
    assert by_package["zlib1g"].severity == SeverityLevel.LOW and by_package["zlib1g"].purl == ""

    mine = Finding(
        "DSA-9999-1", ("CVE-2099-0000",), "", SeverityLevel.HIGH, "", None, "openssl",
        openssl.purl, openssl.installed, "3.0.11-1~deb12u3", "apt-get install ...", openssl.layer,
    )  # fmt: skip
    merged = merge(Report(setup.image.digest, "", Status.FAIL, None, (mine,)), [report])
    assert merged.scanners == ("moorage", "Stand-in 1.0")
    assert [f.advisory_id for f in merged.findings] == ["DSA-9999-1", "CVE-2099-0001"]
    assert merged.findings[0].scanners == ("moorage", "Stand-in 1.0")
    assert merged.findings[1].scanners == ("Stand-in 1.0",)


def test_an_adapter_on_a_private_address_needs_the_operators_allowance(setup: Setup) -> None:
    adapter = StandInAdapter()

    async def go() -> Any:
        async with serving(adapter) as url:
            return await scanners(setup, url, allow=()).scan(setup.image)

    [report] = asyncio.run(go())
    assert "loopback" in report.error and "[va] scanner_allow" in report.error
    assert report.findings == () and adapter.requests == []
    untouched = merge(Report(setup.image.digest, "", Status.OK, None), [report])
    assert untouched.scanners == ("moorage",)


def test_a_report_never_ready_ends_at_the_deadline(setup: Setup) -> None:
    adapter = StandInAdapter(mode="slow")

    async def go() -> Any:
        async with serving(adapter) as url:
            return await scanners(setup, url, deadline=2).scan(setup.image)

    [report] = asyncio.run(go())
    assert "deadline" in report.error or "within" in report.error
    assert report.findings == ()


def test_a_report_that_is_not_json_is_an_error_not_a_crash(setup: Setup) -> None:
    adapter = StandInAdapter(mode="garbage")

    async def go() -> Any:
        async with serving(adapter) as url:
            return await scanners(setup, url).scan(setup.image)

    [report] = asyncio.run(go())
    assert report.error == "the report is not JSON" and report.scanner == "Stand-in 1.0"


def test_scanners_and_signing_keys_come_from_the_va_table(tmp_path: Path) -> None:
    config = tmp_path / "moorage.toml"
    config.write_text(
        "[va]\n"
        'scanners = ["https://trivy-adapter:8080/", "http://clair:8081"]\n'
        'scanner_allow = ["10.96.0.0/12"]\n'
        'sbom_signing_keys = { "team" = "/keys/team.pem", "us-south/ops" = "/keys/ops.pem" }\n'
    )
    settings = load_settings(config)
    assert settings.va_scanners == ("https://trivy-adapter:8080", "http://clair:8081")
    assert settings.va_scanner_allow == ("10.96.0.0/12",)
    assert dict(settings.sbom_signing_keys) == {
        "team": "/keys/team.pem",
        "us-south/ops": "/keys/ops.pem",
    }
    config.write_text('[va]\nscanners = ["ftp://x"]\n')
    with pytest.raises(ValueError, match="scanners"):
        load_settings(config)


@contextmanager
def adapter_in_thread(adapter: StandInAdapter) -> Iterator[str]:
    """The stand-in adapter on a loop of its own, for a server in another process."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[str] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def main() -> None:
        async with serving(adapter) as url:
            started.set_result(url)
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield started.result(timeout=30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)


def test_the_indexer_asks_the_configured_adapters_and_attaches_the_sbom(
    tmp_path: Path,
) -> None:
    """End to end: ``[va] scanners`` on a real server. The indexer asks the
    adapter about a pushed image, the stored report holds the adapter's
    findings labelled by it (and decides its status over them), and the
    image's CycloneDX SBOM is attached as a referrer."""
    adapter = StandInAdapter()
    with adapter_in_thread(adapter) as url:
        config = tmp_path / "moorage.toml"
        config.write_text(f'[va]\nscanners = ["{url}"]\nscanner_allow = ["127.0.0.1"]\n')
        server = MoorageServer(
            tmp_path / "data",
            tmp_path / "server.log",
            extra_args=("--config", str(config)),
            auth="token",
            env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY, "MOORAGE_VA_ATTACH_SBOMS": "1"},
        ).start()
        try:
            admin = Api(server, ADMIN_KEY)
            admin.namespace("us-south", "shop")
            layer = tar_layer({"etc/stand-in-packages": PACKAGES})
            config_blob = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}'
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": descriptor(OCI_CONFIG, config_blob),
                    "layers": [descriptor(OCI_LAYER, layer)],
                }
            ).encode()
            image = Image([layer], config_blob, manifest)
            token = httpx.get(
                f"http://{server.host_for('us.localhost')}/oauth/token",
                params={"service": "us.localhost", "scope": "repository:shop/web:pull,push"},
                auth=("iamapikey", ADMIN_KEY),
            ).json()["token"]
            bearer = {"Authorization": f"Bearer {token}"}
            pushed = push_image_with(server, "us.localhost", "shop/web", "v1", image, bearer)
            assert pushed.status_code == 201, pushed.text
            base = f"http://{server.host_for('us.localhost')}/v2/shop/web"

            def report() -> dict[str, Any] | None:
                got = httpx.get(f"{base}/_moorage/va/{image.manifest_digest}", headers=bearer)
                doc: dict[str, Any] = got.json()
                done = got.status_code == 200 and doc["platforms"][0]["status"] != "PENDING"
                return doc if done else None

            doc = wait_for(report, timeout=120)
            [platform] = doc["platforms"]
            labels = {f["package"]: f["scanners"] for f in platform["findings"]}
            assert labels == {"openssl": ["Stand-in 1.0"], "zlib1g": ["Stand-in 1.0"]}
            assert platform["status"] == "FAIL"  # the adapter's openssl finding has a fix
            assert "Stand-in 1.0" in platform["scanners"]
            assert len(adapter.requests) == 1

            def sbom() -> list[Any] | None:
                got = httpx.get(
                    f"{base}/referrers/{image.manifest_digest}",
                    params={"artifactType": "application/vnd.cyclonedx+json"},
                    headers=bearer,
                )
                found: list[Any] = got.json().get("manifests") or []
                return found or None

            [referrer] = wait_for(sbom, timeout=60)
            assert referrer["artifactType"] == "application/vnd.cyclonedx+json"
        finally:
            server.stop()
