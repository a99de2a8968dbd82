"""Harbor's Pluggable Scanner API v1.1, as a client: an operator adds Trivy
or Clair through their Harbor adapters (``[va] scanners``), and what they
report joins the Advisor's own findings, each labelled by who found it.

For one image and adapter: ``GET /api/v1/metadata`` (the scanner's name and
version, and that it produces ``application/vnd.security.vulnerability.report;
version=1.1``), ``POST /api/v1/scan`` naming the registry and the image with
a pull token Moorage mints for this one repository (minutes long, no
refresh), then ``GET /api/v1/scan/{id}/report`` until it is 200: a 302 says
to ask again after ``Refresh-After`` seconds, within a deadline. Every call
goes through ``egress.py``'s policy (an adapter on a private address only
where the operator allowed it; plain HTTP only when its URL says so and the
address is allowed), never follows redirects, and reads a bounded body.

An adapter that is down, slow or wrong gives a ``ScannerReport`` with an
``error`` and no findings: it never fails or delays Moorage's own report
past the deadline."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from moorage.auth.tokens import TokenService
from moorage.config import Settings
from moorage.egress import Egress, authority
from moorage.regions import PublicUrl, Target
from moorage.va.model import Finding, ImageContents, Package, Report, SeverityLevel

REPORT_V11 = "application/vnd.security.vulnerability.report; version=1.1"
SCAN_REQUEST = "application/vnd.scanner.adapter.scan.request+json; version=1.0"
MAX_BODY = 32 << 20
DEFAULT_DEADLINE = 600.0
TOKEN_LIFETIME = 300
TOKEN_SUBJECT = "moorage-va-scanner"
_SEVERITIES = {
    "Critical": SeverityLevel.CRITICAL,
    "High": SeverityLevel.HIGH,
    "Medium": SeverityLevel.MEDIUM,
    "Low": SeverityLevel.LOW,
    "Negligible": SeverityLevel.LOW,  # "technically a problem, theoretical in nature"
    "Unknown": SeverityLevel.UNKNOWN,
}


class ScannerError(Exception):
    """An adapter that could not be used; the message says why, in one line."""


@dataclass(frozen=True)
class ScannerInfo:
    url: str
    name: str
    vendor: str
    version: str

    @property
    def label(self) -> str:
        """How its findings are labelled: ``Trivy 0.50.1``."""
        return f"{self.name} {self.version}".strip()


@dataclass(frozen=True)
class ScanTarget:
    """The image an adapter is asked to scan: one platform's manifest."""

    target: Target  # the region and domain it is pulled from
    repository: str
    digest: str
    media_type: str
    account: str  # the account that owns the namespace: the token is valid for it only
    tag: str = ""


@dataclass(frozen=True)
class ScannerReport:
    scanner: str  # the label, or the adapter's URL when its metadata could not be read
    url: str
    findings: tuple[Finding, ...] = ()
    generated_at: str = ""
    error: str = ""


def egress_for(urls: Sequence[str], allow: Sequence[str] = ()) -> Egress:
    """The outbound policy for ``[va] scanners``: ``allow`` as ``[va]
    scanner_allow`` (CIDRs or host[:port] of private adapters); an adapter
    named with ``http://`` is spoken to in plain HTTP, which the policy still
    permits only to an allowed private address."""
    insecure = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme == "http" and parts.hostname:
            insecure.append(authority(parts.hostname, parts.port))
    return Egress.parse(allow, insecure, allow_option="[va] scanner_allow")


async def _read(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_BODY:
            raise ScannerError(f"the adapter's answer is over {MAX_BODY} bytes")
    return bytes(body)


async def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        document = json.loads(await _read(response))
    except (ValueError, RecursionError):
        raise ScannerError(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise ScannerError(f"{what} is not a JSON object")
    return document


def _text(value: Any, limit: int = 4096) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_report(
    document: dict[str, Any], label: str, contents: ImageContents | None = None
) -> tuple[Finding, ...]:
    """A v1.1 report's vulnerabilities as findings labelled ``label``. With
    ``contents``, a package the Advisor found too (same name and version)
    lends its purl and layer. Items without an id or package are skipped."""
    known: dict[tuple[str, str], Package] = {}
    for package in contents.packages if contents else ():
        known.setdefault((package.name, package.version), package)
    findings: list[Finding] = []
    items = document.get("vulnerabilities")
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        advisory, name = _text(item.get("id"), 200), _text(item.get("package"), 400)
        if not advisory or not name:
            continue
        installed = _text(item.get("version"), 200)
        fixed = _text(item.get("fix_version"), 200) or None
        cvss = item.get("preferred_cvss") if isinstance(item.get("preferred_cvss"), dict) else {}
        assert isinstance(cvss, dict)
        vector = _text(cvss.get("vector_v3"), 300) or _text(cvss.get("vector_v2"), 300)
        score = _number(cvss.get("score_v3"))
        if score is None:
            score = _number(cvss.get("score_v2"))
        match = known.get((name, installed))
        findings.append(
            Finding(
                advisory_id=advisory,
                aliases=(),
                summary=_text(item.get("description")),
                severity=_SEVERITIES.get(_text(item.get("severity")), SeverityLevel.UNKNOWN),
                cvss_vector=vector,
                cvss_score=score,
                package=name,
                purl=match.purl if match else "",
                installed=installed,
                fixed=fixed,
                fix=f"upgrade {name} to {fixed} or later" if fixed else "no fix is available yet",
                layer=match.layer if match else "",
                scanners=(label,),
            )
        )
    return tuple(findings)


class ScannerClient:
    """One adapter, at ``url`` (its base: the API is under ``/api/v1``)."""

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url.rstrip("/")
        self.client = client

    async def _get(self, path: str, accept: str) -> httpx.Response:
        request = self.client.build_request("GET", self.url + path, headers={"Accept": accept})
        return await self.client.send(request, stream=True)

    async def metadata(self) -> ScannerInfo:
        response = await self._get("/api/v1/metadata", "application/json, */*")
        try:
            if response.status_code != 200:
                raise ScannerError(f"GET /api/v1/metadata answered {response.status_code}")
            document = await _json(response, "the metadata")
        finally:
            await response.aclose()
        scanner = document.get("scanner") if isinstance(document.get("scanner"), dict) else {}
        assert isinstance(scanner, dict)
        capabilities = document.get("capabilities")
        produces = {
            str(m)
            for c in (capabilities if isinstance(capabilities, list) else [])
            if isinstance(c, dict)
            for m in (c.get("produces_mime_types") or [])
        }
        if REPORT_V11 not in produces:
            raise ScannerError(f"the adapter does not produce {REPORT_V11}")
        return ScannerInfo(
            self.url,
            _text(scanner.get("name"), 100) or "scanner",
            _text(scanner.get("vendor"), 100),
            _text(scanner.get("version"), 100),
        )

    async def request_scan(self, registry_url: str, token: str, image: ScanTarget) -> str:
        artifact = {
            "repository": image.repository,
            "digest": image.digest,
            "mime_type": image.media_type,
            **({"tag": image.tag} if image.tag else {}),
        }
        body = {
            "registry": {"url": registry_url, "authorization": f"Bearer {token}"},
            "artifact": artifact,
        }
        response = await self.client.post(
            self.url + "/api/v1/scan",
            content=json.dumps(body).encode(),
            headers={"Content-Type": SCAN_REQUEST, "Accept": "application/json, */*"},
        )
        if response.status_code != 202:
            raise ScannerError(f"POST /api/v1/scan answered {response.status_code}")
        try:
            scan_id = response.json().get("id")
        except (ValueError, AttributeError):
            scan_id = None
        if not isinstance(scan_id, str) or not scan_id or "/" in scan_id or len(scan_id) > 200:
            raise ScannerError("POST /api/v1/scan gave no usable scan id")
        return scan_id

    async def report(self, scan_id: str, deadline: float) -> dict[str, Any]:
        """Poll until the report is ready (200), as the adapter's Refresh-After
        says, until ``deadline`` (``time.monotonic()``)."""
        path = f"/api/v1/scan/{scan_id}/report"
        while True:
            response = await self._get(path, REPORT_V11)
            try:
                if response.status_code == 200:
                    return await _json(response, "the report")
                if response.status_code != 302:
                    raise ScannerError(f"GET {path} answered {response.status_code}")
                after = response.headers.get("Refresh-After", "")
            finally:
                await response.aclose()
            wait = float(after) if after.isdigit() else 1.0
            wait = min(max(wait, 0.2), 60.0)
            if time.monotonic() + wait > deadline:
                raise ScannerError("the report was not ready before the deadline")
            await asyncio.sleep(wait)


class Scanners:
    """The configured adapters. ``scan`` asks each at once and gives one
    ``ScannerReport`` per adapter, in the configured order."""

    def __init__(
        self,
        urls: Sequence[str],
        egress: Egress,
        tokens: TokenService,
        public_url: PublicUrl,
        deadline: float = DEFAULT_DEADLINE,
        token_lifetime: int = TOKEN_LIFETIME,
        timeout: float = 30.0,
    ) -> None:
        self.urls = tuple(urls)
        self.egress = egress
        self.tokens = tokens
        self.public_url = public_url
        self.deadline = deadline
        self.token_lifetime = token_lifetime
        self.timeout = timeout

    @classmethod
    def configured(cls, settings: Settings, tokens: TokenService) -> Scanners:
        """``[va] scanners`` and ``scanner_allow``; the adapters are told to pull
        from the registry's public URL (``public_url``)."""
        urls = settings.va_scanners
        return cls(
            urls,
            egress_for(urls, settings.va_scanner_allow),
            tokens,
            PublicUrl(settings.public_url_template),
        )

    async def scan(
        self, image: ScanTarget, contents: ImageContents | None = None
    ) -> list[ScannerReport]:
        """Every adapter's findings for ``image`` (for the indexer: call it for
        each platform manifest, beside Moorage's own assessment, and ``merge``)."""
        if not self.urls:
            return []
        token = self.tokens.issue_pull_only(
            image.target,
            image.repository,
            image.account,
            TOKEN_SUBJECT,
            min(self.token_lifetime, int(self.deadline) + 60),
        )
        registry_url = self.public_url.base(image.target)
        async with self.egress.async_client(timeout=self.timeout) as client:
            return list(
                await asyncio.gather(
                    *(
                        self._one(ScannerClient(url, client), registry_url, token, image, contents)
                        for url in self.urls
                    )
                )
            )

    async def _one(
        self,
        adapter: ScannerClient,
        registry_url: str,
        token: str,
        image: ScanTarget,
        contents: ImageContents | None,
    ) -> ScannerReport:
        label = adapter.url
        deadline = time.monotonic() + self.deadline
        try:
            async with asyncio.timeout(self.deadline):
                info = await adapter.metadata()
                label = info.label
                scan_id = await adapter.request_scan(registry_url, token, image)
                document = await adapter.report(scan_id, deadline)
        except TimeoutError:
            return ScannerReport(label, adapter.url, error=f"no report within {self.deadline:g} s")
        except (ScannerError, httpx.HTTPError) as exc:
            return ScannerReport(label, adapter.url, error=str(exc) or type(exc).__name__)
        return ScannerReport(
            label,
            adapter.url,
            parse_report(document, label, contents),
            _text(document.get("generated_at"), 64),
        )


def _key(finding: Finding) -> tuple[frozenset[str], str, str]:
    return (frozenset((finding.advisory_id, *finding.aliases)), finding.package, finding.installed)


def merge(report: Report, others: Sequence[ScannerReport]) -> Report:
    """Moorage's report with the adapters' findings joined in. A finding an
    adapter reports too (the same advisory, or one of its aliases, for the same
    package and installed version) stays Moorage's, with the adapter's label
    added to its ``scanners``; any other becomes a finding of its own, labelled
    by its scanner. Every adapter that answered is named in ``scanners``;
    the status is the assessor's to decide again (``assess``)."""
    findings = list(report.findings)
    for other in others:
        if other.error:
            continue
        for found in other.findings:
            ids = frozenset((found.advisory_id, *found.aliases))
            for n, mine in enumerate(findings):
                key = _key(mine)
                if key[1:] == (found.package, found.installed) and key[0] & ids:
                    if other.scanner not in mine.scanners:
                        findings[n] = replace(mine, scanners=(*mine.scanners, other.scanner))
                    break
            else:
                findings.append(found)
    labels = [*report.scanners, *(o.scanner for o in others if not o.error)]
    return replace(report, findings=tuple(findings), scanners=tuple(dict.fromkeys(labels)))


def kept(report: Report) -> list[ScannerReport]:
    """The adapters' findings of a stored report, grouped by scanner again,
    so a re-assessment from stored layer indexes (which asks no adapter)
    keeps what the adapters said at the last scan."""
    by_scanner: dict[str, list[Finding]] = {}
    for finding in report.findings:
        for label in finding.scanners:
            if label != "moorage":
                by_scanner.setdefault(label, []).append(finding)
    return [
        ScannerReport(label, "", tuple(replace(f, scanners=(label,)) for f in found))
        for label, found in by_scanner.items()
    ]
