"""The verdict on one platform of an image: findings with severities and the
command that fixes each, configuration checks, exemptions, and the status.

Statuses:

- FAIL: a vulnerability that has a fix and is not exempted.
- WARN: only vulnerabilities without a fix yet, exempted issues, or
  configuration issues. Configuration issues warn rather than fail: Debian's
  and Ubuntu's own ``login.defs`` leave ``PASS_MAX_DAYS`` at 99999 and most
  base images run as root, so failing on them would make FAIL (and the
  enforcement that denies it) mean nothing.
- PARTIAL: a layer was over its budget or unreadable, so what was not seen
  may hide a package (a FAIL still says FAIL).
- UNSUPPORTED: an operating system without advisory data here, or neither an
  operating system nor any package found (a FAIL still says FAIL).
- OK: nothing found. PENDING is the indexer's (not indexed yet).

Severity is computed from the CVSS vector with the ``cvss`` library (v3
first, then v4, then v2) and labelled by the CVSS v3.1 qualitative scale
(https://www.first.org/cvss/v3.1/specification-document, section 5); a record
without a vector gives its own label."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from moorage.va.model import (
    Advisory,
    ConfigIssue,
    Entry,
    Exemption,
    Finding,
    ImageContents,
    Match,
    OSRelease,
    Package,
    PackageType,
    Report,
    SeverityLevel,
    Status,
)

HARBOR_REPORT = "application/vnd.security.vulnerability.report; version=1.1"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
ISSUE_TYPES = {
    "cve": "a vulnerability, by advisory ID or any alias (CVE, GHSA, DSA, ALSA, ...)",
    "configuration": "a configuration issue, by check ID ("
    "ssh_server, pass_max_days, pass_min_days, pass_min_len, world_writable, runs_as_root)",
}

# Thresholds of the configuration checks, as IBM Cloud's Vulnerability
# Advisor had them (its "security practices" checks), which follow PCI DSS
# v3.2.1: passwords changed at least every 90 days (8.2.4), at least one day
# between changes so a user cannot cycle back to the old one at once (the CIS
# Linux benchmarks' "minimum days between password changes", 5.4.1.2), and
# at least 8 characters (NIST SP 800-63B, 5.1.1.2).
PASS_MAX_DAYS = 90
PASS_MIN_DAYS = 1
PASS_MIN_LEN = 8
# Packages that put an SSH server in the image.
SSH_SERVERS = frozenset({"openssh-server", "openssh-server-pam", "dropbear", "tinyssh"})

_LABELS = {
    "critical": SeverityLevel.CRITICAL,
    "important": SeverityLevel.HIGH,
    "high": SeverityLevel.HIGH,
    "moderate": SeverityLevel.MEDIUM,
    "medium": SeverityLevel.MEDIUM,
    "low": SeverityLevel.LOW,
    "negligible": SeverityLevel.LOW,
    "unimportant": SeverityLevel.LOW,
    "none": SeverityLevel.NONE,
}
_RANK = {
    SeverityLevel.CRITICAL: 5,
    SeverityLevel.HIGH: 4,
    SeverityLevel.MEDIUM: 3,
    SeverityLevel.LOW: 2,
    SeverityLevel.NONE: 1,
    SeverityLevel.UNKNOWN: 0,
}


def label(score: float) -> SeverityLevel:
    """The CVSS v3.1 qualitative rating of a base score."""
    if score >= 9.0:
        return SeverityLevel.CRITICAL
    if score >= 7.0:
        return SeverityLevel.HIGH
    if score >= 4.0:
        return SeverityLevel.MEDIUM
    if score > 0.0:
        return SeverityLevel.LOW
    return SeverityLevel.NONE


def _score(kind: str, vector: str) -> float | None:
    from cvss import CVSS2, CVSS3, CVSS4
    from cvss.exceptions import CVSSError

    try:
        if kind == "CVSS_V3":
            return float(CVSS3(vector).scores()[0])
        if kind == "CVSS_V4":
            return float(CVSS4(vector).base_score)
        if kind == "CVSS_V2":
            return float(CVSS2(vector).scores()[0])
    except (CVSSError, ValueError, KeyError, IndexError):
        return None
    return None


def severity(advisory: Advisory, ecosystem: str = "") -> tuple[SeverityLevel, str, float | None]:
    """(label, vector, score) of an advisory: from its CVSS vector when it
    has one that parses, else the label the record gives."""
    by_type = {s.type: s.score for s in advisory.severity}
    for kind in ("CVSS_V3", "CVSS_V4", "CVSS_V2"):
        vector = by_type.get(kind)
        if vector:
            score = _score(kind, vector)
            if score is not None:
                return label(score), vector, score
    labels = [s.score for s in advisory.severity if not s.type.startswith("CVSS")]
    labels += [a.severity for a in advisory.affected if a.severity and a.ecosystem == ecosystem]
    labels += [a.severity for a in advisory.affected if a.severity]
    for text in labels:
        level = _LABELS.get(text.strip().lower())
        if level is not None:
            return level, "", None
    return SeverityLevel.UNKNOWN, "", None


def fix_command(package: Package, fixed: str | None) -> str:
    """How to fix one package with its own package manager."""
    name = package.name
    found = package.found
    if fixed is None:
        return (
            f"no fixed version of {name} is published yet; remove it if the image does "
            "not need it, or exempt the issue while you wait"
        )
    match package.type:
        case PackageType.DEB:
            return f"apt-get install --only-upgrade {name}={fixed}"
        case PackageType.APK:
            return f"apk add --upgrade {name}"
        case PackageType.RPM:
            return f"dnf update {name}"
        case PackageType.PYPI:
            return f"pip install '{name}>={fixed}'"
        case PackageType.NPM:
            scoped = f"{found.namespace}/{name}" if found.namespace else name
            return f"npm install {scoped}@{fixed}"
        case PackageType.GOLANG:
            module = f"{found.namespace}/{name}" if found.namespace else name
            version = fixed if fixed.startswith("v") else f"v{fixed}"
            return f"go get {module}@{version}"
        case PackageType.MAVEN:
            coordinates = f"{found.namespace}:{name}" if found.namespace else name
            return (
                f"mvn versions:use-dep-version -Dincludes={coordinates} -DdepVersion={fixed}"
                " -DforceVersion=true"
            )
        case PackageType.CARGO:
            return f"cargo update -p {name} --precise {fixed}"
    return f"upgrade {name} to {fixed}"  # pragma: no cover - every type is handled above


# -- configuration checks ----------------------------------------------------


def _int(value: str) -> int | None:
    try:
        return int(value.strip().split()[0])
    except (ValueError, IndexError):
        return None


def _runs_as_root(image_config: Mapping[str, Any]) -> bool:
    config = image_config.get("config") if "config" in image_config else image_config
    user = str((config or {}).get("User") or "").strip()
    name = user.split(":", 1)[0]
    return name in ("", "root", "0")


def config_issues(contents: ImageContents, image_config: Mapping[str, Any]) -> list[ConfigIssue]:
    """The configuration checks, on the facts the ``config`` detector
    recorded (entries of kind ``login.defs``, ``sshd``, ``world-writable``)."""
    issues: list[ConfigIssue] = []
    entries: list[Entry] = [e for e, _ in contents.entries]
    ssh = [e.path for e in entries if e.kind == "sshd"]
    ssh += [p.found.path for p in contents.packages if p.name in SSH_SERVERS]
    if ssh:
        issues.append(
            ConfigIssue(
                "ssh_server",
                "an SSH server is installed; containers are reached with exec, not SSH",
                "remove the SSH server package from the image",
                ssh[0],
            )
        )
    for entry in entries:
        if entry.kind != "login.defs":
            continue
        facts = dict(entry.facts)
        max_days = _int(facts.get("PASS_MAX_DAYS", "99999"))
        if max_days is None or max_days > PASS_MAX_DAYS or max_days < 0:
            issues.append(
                ConfigIssue(
                    "pass_max_days",
                    f"PASS_MAX_DAYS is {facts.get('PASS_MAX_DAYS', 'unset')}: passwords must "
                    f"change at least every {PASS_MAX_DAYS} days",
                    f"set PASS_MAX_DAYS {PASS_MAX_DAYS} in /{entry.path}",
                    entry.path,
                )
            )
        min_days = _int(facts.get("PASS_MIN_DAYS", "0"))
        if min_days is None or min_days < PASS_MIN_DAYS:
            issues.append(
                ConfigIssue(
                    "pass_min_days",
                    f"PASS_MIN_DAYS is {facts.get('PASS_MIN_DAYS', 'unset')}: at least "
                    f"{PASS_MIN_DAYS} day must pass between password changes",
                    f"set PASS_MIN_DAYS {PASS_MIN_DAYS} in /{entry.path}",
                    entry.path,
                )
            )
        if "PASS_MIN_LEN" in facts:
            min_len = _int(facts["PASS_MIN_LEN"])
            if min_len is None or min_len < PASS_MIN_LEN:
                issues.append(
                    ConfigIssue(
                        "pass_min_len",
                        f"PASS_MIN_LEN is {facts['PASS_MIN_LEN']}: passwords need at least "
                        f"{PASS_MIN_LEN} characters",
                        f"set PASS_MIN_LEN {PASS_MIN_LEN} in /{entry.path}",
                        entry.path,
                    )
                )
    writable = sorted(e.path for e in entries if e.kind == "world-writable")
    if writable:
        shown = ", ".join("/" + p for p in writable[:5])
        more = f" and {len(writable) - 5} more" if len(writable) > 5 else ""
        issues.append(
            ConfigIssue(
                "world_writable",
                f"files in system paths anyone may write: {shown}{more}",
                "chmod o-w " + " ".join("/" + p for p in writable[:20]),
                writable[0],
            )
        )
    if _runs_as_root(image_config):
        issues.append(
            ConfigIssue(
                "runs_as_root",
                "the image runs as root by default (its config sets no other User)",
                "add a USER instruction naming an unprivileged user (or set "
                "runAsNonRoot in the pod's securityContext)",
            )
        )
    return issues


# -- exemptions --------------------------------------------------------------


def _expired(exemption: Exemption, now: datetime) -> bool:
    if not exemption.expires:
        return False
    try:
        until = datetime.fromisoformat(exemption.expires.replace("Z", "+00:00"))
    except ValueError:
        return True  # an expiry that cannot be read exempts nothing
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    return until <= now


def in_scope(
    exemption: Exemption, repository: str, tags: Iterable[str], digests: Iterable[str]
) -> bool:
    """Whether an exemption's scope covers an image: ``*`` (the account),
    ``ns``, ``ns/repo``, ``ns/repo:tag`` or ``ns/repo@sha256:...``."""
    scope = exemption.scope
    if scope == "*":
        return True
    if "@" in scope:
        name, _, digest = scope.partition("@")
        return name == repository and digest in set(digests)
    last = scope.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = scope.rpartition(":")
        return name == repository and tag in set(tags)
    if "/" in scope:
        return scope == repository
    return repository.split("/", 1)[0] == scope


def _exempting(
    exemptions: Sequence[Exemption], issue_type: str, ids: Iterable[str], now: datetime
) -> str:
    wanted = {i.lower() for i in ids}
    for exemption in exemptions:
        if exemption.issue_type != issue_type or _expired(exemption, now):
            continue
        if exemption.issue_id.lower() in wanted:
            return exemption.id
    return ""


# -- the verdict -------------------------------------------------------------


def assess(
    contents: ImageContents,
    matches: Sequence[Match],
    exemptions: Sequence[Exemption],
    image_config: Mapping[str, Any],
    *,
    digest: str,
    platform: str = "",
    repository: str = "",
    tags: Sequence[str] = (),
    manifest_digest: str = "",
    snapshot: str = "",
    supported: bool = True,
    now: datetime | None = None,
) -> Report:
    """One platform's report. ``exemptions`` are the account's; those whose
    scope covers this image (by ``repository``, ``tags``, ``digest`` or
    ``manifest_digest``) and that have not expired apply. ``supported``: the
    advisory data covers the image's operating system (``supported_os``)."""
    now = now or datetime.now(UTC)
    applying = [
        e
        for e in exemptions
        if in_scope(e, repository, tags, (digest, manifest_digest)) and not _expired(e, now)
    ]
    findings: list[Finding] = []
    seen: set[tuple[str, str, str]] = set()
    for match in matches:
        advisory, package = match.advisory, match.package
        key = (advisory.id, package.purl, package.found.path)
        if key in seen:
            continue
        seen.add(key)
        level, vector, score = severity(advisory, match.ecosystem)
        findings.append(
            Finding(
                advisory_id=advisory.id,
                aliases=advisory.aliases,
                summary=advisory.summary,
                severity=level,
                cvss_vector=vector,
                cvss_score=score,
                package=package.name,
                purl=package.purl,
                installed=package.version,
                fixed=match.fixed,
                fix=fix_command(package, match.fixed),
                layer=package.layer,
                exempted_by=_exempting(applying, "cve", (advisory.id, *advisory.aliases), now),
            )
        )
    findings.sort(key=_finding_order)
    issues = [
        ConfigIssue(
            i.id, i.description, i.fix, i.path, _exempting(applying, "configuration", (i.id,), now)
        )
        for i in config_issues(contents, image_config)
    ]
    status, reason = _status(contents, findings, issues, supported)
    return Report(
        digest=digest,
        platform=platform,
        status=status,
        os=contents.os,
        findings=tuple(findings),
        config_issues=tuple(issues),
        snapshot=snapshot,
        assessed_at=now.isoformat(timespec="seconds"),
        reason=reason,
    )


def _finding_order(finding: Finding) -> tuple[int, str, str]:
    return (-_RANK[finding.severity], finding.package, finding.advisory_id)


def rejudge(
    report: Report,
    contents: ImageContents,
    exemptions: Sequence[Exemption],
    *,
    repository: str = "",
    tags: Sequence[str] = (),
    manifest_digest: str = "",
    supported: bool = True,
    now: datetime | None = None,
) -> Report:
    """``report`` after findings were joined in from elsewhere (a scanner
    adapter's, ``scanners.merge``): exemptions applied to the joined findings
    too, and the status decided again over all of them."""
    now = now or datetime.now(UTC)
    applying = [
        e
        for e in exemptions
        if in_scope(e, repository, tags, (report.digest, manifest_digest)) and not _expired(e, now)
    ]
    findings = sorted(
        (
            f
            if f.exempted_by
            else replace(
                f, exempted_by=_exempting(applying, "cve", (f.advisory_id, *f.aliases), now)
            )
            for f in report.findings
        ),
        key=_finding_order,
    )
    status, reason = _status(contents, findings, report.config_issues, supported)
    return replace(report, findings=tuple(findings), status=status, reason=reason)


def _status(
    contents: ImageContents,
    findings: Sequence[Finding],
    issues: Sequence[ConfigIssue],
    supported: bool,
) -> tuple[Status, str]:
    if any(f.fixed is not None and not f.exempted_by for f in findings):
        return Status.FAIL, ""
    if contents.partial:
        return Status.PARTIAL, (
            f"{len(contents.partial)} layer(s) could not be read whole: "
            + ", ".join(contents.partial[:3])
        )
    if contents.os is not None and not supported:
        name = contents.os.pretty_name or f"{contents.os.id} {contents.os.version_id}"
        return Status.UNSUPPORTED, f"no advisory data covers {name}"
    if contents.os is None and not contents.packages:
        return Status.UNSUPPORTED, "no operating system and no package found in the image"
    if findings or issues:
        return Status.WARN, ""
    return Status.OK, ""


# -- JSON --------------------------------------------------------------------


def _os_to_json(os: OSRelease | None) -> dict[str, Any] | None:
    if os is None:
        return None
    return {
        "id": os.id,
        "version_id": os.version_id,
        "pretty_name": os.pretty_name,
        "id_like": list(os.id_like),
        "version_codename": os.version_codename,
    }


def _os_from_json(doc: Mapping[str, Any] | None) -> OSRelease | None:
    if not doc:
        return None
    return OSRelease(
        id=str(doc["id"]),
        version_id=str(doc.get("version_id", "")),
        pretty_name=str(doc.get("pretty_name", "")),
        id_like=tuple(doc.get("id_like") or ()),
        version_codename=str(doc.get("version_codename", "")),
    )


def report_to_json(report: Report) -> dict[str, Any]:
    """One platform's report as the API serves it."""
    return {
        "digest": report.digest,
        "platform": report.platform,
        "status": report.status.value,
        "os": _os_to_json(report.os),
        "findings": [
            {
                "id": f.advisory_id,
                "aliases": list(f.aliases),
                "summary": f.summary,
                "severity": f.severity.value,
                "cvss_vector": f.cvss_vector,
                "cvss_score": f.cvss_score,
                "package": f.package,
                "purl": f.purl,
                "installed": f.installed,
                "fixed": f.fixed,
                "fix": f.fix,
                "layer": f.layer,
                "exempted_by": f.exempted_by,
                "scanners": list(f.scanners),
            }
            for f in report.findings
        ],
        "config_issues": [
            {
                "id": i.id,
                "description": i.description,
                "fix": i.fix,
                "path": i.path,
                "exempted_by": i.exempted_by,
            }
            for i in report.config_issues
        ],
        "reason": report.reason,
        "snapshot": report.snapshot,
        "assessed_at": report.assessed_at,
        "scanners": list(report.scanners),
        "queued_at": report.queued_at,
    }


def report_from_json(doc: Mapping[str, Any]) -> Report:
    return Report(
        digest=str(doc["digest"]),
        platform=str(doc.get("platform", "")),
        status=Status(doc["status"]),
        os=_os_from_json(doc.get("os")),
        findings=tuple(
            Finding(
                advisory_id=str(f["id"]),
                aliases=tuple(f.get("aliases") or ()),
                summary=str(f.get("summary", "")),
                severity=SeverityLevel(f.get("severity", "Unknown")),
                cvss_vector=str(f.get("cvss_vector", "")),
                cvss_score=f.get("cvss_score"),
                package=str(f["package"]),
                purl=str(f.get("purl", "")),
                installed=str(f.get("installed", "")),
                fixed=f.get("fixed"),
                fix=str(f.get("fix", "")),
                layer=str(f.get("layer", "")),
                exempted_by=str(f.get("exempted_by", "")),
                scanners=tuple(str(n) for n in f.get("scanners") or ("moorage",)),
            )
            for f in doc.get("findings") or ()
        ),
        config_issues=tuple(
            ConfigIssue(
                id=str(i["id"]),
                description=str(i.get("description", "")),
                fix=str(i.get("fix", "")),
                path=str(i.get("path", "")),
                exempted_by=str(i.get("exempted_by", "")),
            )
            for i in doc.get("config_issues") or ()
        ),
        snapshot=str(doc.get("snapshot", "")),
        assessed_at=str(doc.get("assessed_at", "")),
        reason=str(doc.get("reason", "")),
        scanners=tuple(doc.get("scanners") or ("moorage",)),
        queued_at=str(doc.get("queued_at", "")),
    )


def pending(
    digest: str, platform: str = "", reason: str = "not indexed yet", queued_at: str = ""
) -> Report:
    return Report(
        digest=digest,
        platform=platform,
        status=Status.PENDING,
        os=None,
        reason=reason,
        queued_at=queued_at,
    )


_WORST_FIRST = (
    Status.FAIL,
    Status.PARTIAL,
    Status.UNSUPPORTED,
    Status.PENDING,
    Status.WARN,
    Status.OK,
)


def worst(statuses: Iterable[Status]) -> Status:
    """The status an image of several platforms shows: its worst platform's."""
    present = set(statuses)
    return next((s for s in _WORST_FIRST if s in present), Status.PENDING)


def overall(reports: Sequence[Report]) -> Status:
    return worst(r.status for r in reports)


def _top_severity(reports: Sequence[Report]) -> SeverityLevel:
    levels = [f.severity for r in reports for f in r.findings if not f.exempted_by]
    return max(levels, key=lambda s: _RANK[s]) if levels else SeverityLevel.NONE


def harbor_report(
    repository: str,
    digest: str,
    media_type: str,
    reports: Sequence[Report],
    version: str = "",
) -> dict[str, Any]:
    """Harbor's scanner report (``application/vnd.security.vulnerability.
    report; version=1.1``) of every platform's findings."""
    generated = max((r.assessed_at for r in reports), default="") or datetime.now(UTC).isoformat(
        timespec="seconds"
    )
    vulnerabilities = []
    for r in reports:
        for f in r.findings:
            item: dict[str, Any] = {
                "id": f.advisory_id,
                "package": f.package,
                "version": f.installed,
                "fix_version": f.fixed or "",
                "severity": f.severity.value,
                "description": f.summary,
                "links": [f"https://osv.dev/vulnerability/{f.advisory_id}"],
                "layer": {"digest": f.layer},
                "vendor_attributes": {
                    "aliases": list(f.aliases),
                    "purl": f.purl,
                    "fix": f.fix,
                    "platform": r.platform,
                    "exempted_by": f.exempted_by,
                },
            }
            if f.cvss_vector:
                item["preferred_cvss"] = {
                    "score_v3": f.cvss_score if f.cvss_vector.startswith("CVSS:3") else None,
                    "vector_v3": f.cvss_vector if f.cvss_vector.startswith("CVSS:3") else "",
                }
            vulnerabilities.append(item)
    return {
        "generated_at": generated,
        "artifact": {"repository": repository, "digest": digest, "mime_type": media_type},
        "scanner": {
            "name": "Moorage Vulnerability Advisor",
            "vendor": "Moorage",
            "version": version,
        },
        "severity": _top_severity(reports).value,
        "vulnerabilities": vulnerabilities,
    }


def manifest_report_json(
    repository: str, digest: str, media_type: str, reports: Sequence[Report]
) -> dict[str, Any]:
    """What the API serves for a pushed manifest: its status (the worst of its
    platforms), every platform's report, and Harbor's report fields."""
    return {
        "digest": digest,
        "repository": repository,
        "status": overall(reports).value,
        "platforms": [report_to_json(r) for r in reports],
        "mime_type": HARBOR_REPORT,
        **harbor_report(repository, digest, media_type, reports),
    }


_SARIF_LEVELS = {
    SeverityLevel.CRITICAL: "error",
    SeverityLevel.HIGH: "error",
    SeverityLevel.MEDIUM: "warning",
    SeverityLevel.LOW: "note",
    SeverityLevel.NONE: "note",
    SeverityLevel.UNKNOWN: "warning",
}


def sarif(doc: Mapping[str, Any]) -> dict[str, Any]:
    """SARIF 2.1.0 of a manifest report (``manifest_report_json``), as code
    scanning dashboards read it: one rule per advisory or check, one result
    per finding."""
    rules: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    image = f"{doc.get('repository', '')}@{doc.get('digest', '')}"
    for platform in doc.get("platforms") or ():
        report = report_from_json(platform)
        where = f" ({report.platform})" if report.platform else ""
        for f in report.findings:
            rules.setdefault(
                f.advisory_id,
                {
                    "id": f.advisory_id,
                    "shortDescription": {"text": f.summary or f.advisory_id},
                    "helpUri": f"https://osv.dev/vulnerability/{f.advisory_id}",
                    "properties": {
                        "security-severity": str(f.cvss_score if f.cvss_score is not None else ""),
                        "aliases": list(f.aliases),
                        "tags": ["security", "vulnerability"],
                    },
                },
            )
            results.append(
                {
                    "ruleId": f.advisory_id,
                    "level": "note" if f.exempted_by else _SARIF_LEVELS[f.severity],
                    "message": {
                        "text": f"{f.package} {f.installed} is affected by {f.advisory_id}"
                        f"{where}; fixed in {f.fixed or 'no release yet'}. Fix: {f.fix}"
                    },
                    "locations": [
                        {
                            "physicalLocation": {"artifactLocation": {"uri": image}},
                            "logicalLocations": [{"name": f.purl, "kind": "package"}],
                        }
                    ],
                    "properties": {"layer": f.layer, "exempted_by": f.exempted_by},
                }
            )
        for i in report.config_issues:
            rules.setdefault(
                i.id,
                {
                    "id": i.id,
                    "shortDescription": {"text": i.id.replace("_", " ")},
                    "properties": {"tags": ["security", "configuration"]},
                },
            )
            results.append(
                {
                    "ruleId": i.id,
                    "level": "note" if i.exempted_by else "warning",
                    "message": {"text": f"{i.description}{where}. Fix: {i.fix}"},
                    "locations": [{"physicalLocation": {"artifactLocation": {"uri": image}}}],
                }
            )
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "moorage",
                        "fullName": "Moorage Vulnerability Advisor",
                        "rules": list(rules.values()),
                    }
                },
                "results": results,
            }
        ],
    }


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False)
