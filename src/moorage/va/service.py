"""What the API asks of the Advisor: a manifest's report (its platforms'
reports, PENDING for those still queued), and exemptions, whose changes
queue a re-assessment of the reports they cover.

Methods block (the database): call them in worker threads. Authorization
is the caller's (``iam``), decided before these are called."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from moorage.iam.errors import Invalid, NotFound
from moorage.iam.service import validate_namespace
from moorage.metadata import RepoRef
from moorage.metadata.va_store import FAILED, VaStore, is_image
from moorage.oci.manifest import INDEX_TYPES
from moorage.oci.names import NameError_, validate_name
from moorage.registry import ManifestService
from moorage.va.assess import ISSUE_TYPES, manifest_report_json, pending, worst
from moorage.va.model import Exemption, Report, Status

MAX_ISSUE_ID = 200
MAX_REASON = 1000


class VulnerabilityService:
    def __init__(self, va: VaStore, manifests: ManifestService) -> None:
        self.va = va
        self.manifests = manifests

    def reports(self, repo: RepoRef, reference: str) -> tuple[str, str, list[Report]]:
        """(digest, media type, one report per platform) of a tag or digest;
        platforms still queued are PENDING. ManifestUnknown when absent."""
        manifest = self.manifests.get(repo, reference, [])
        stored = {r.platform: r for r in self.va.report(repo.region, repo.name, manifest.digest)}
        for platform, image_digest, state, reason, queued in self.va.queue_state(
            repo.region, repo.name, manifest.digest
        ):
            if platform in stored or state == "done":
                continue
            why = f"indexing failed: {reason}" if state == FAILED else "queued for indexing"
            stored[platform] = pending(
                image_digest, platform, why, queued.isoformat(timespec="seconds")
            )
        if not stored:
            doc = json.loads(manifest.content)
            kind = "an index of no image" if manifest.media_type in INDEX_TYPES else None
            if kind is None and not is_image(doc):
                kind = "not a container image (an artifact: a signature, SBOM or attestation)"
            stored[""] = Report(
                digest=manifest.digest,
                platform="",
                status=Status.UNSUPPORTED if kind else Status.PENDING,
                os=None,
                reason=kind or "not indexed yet",
            )
        return manifest.digest, manifest.media_type, [stored[p] for p in sorted(stored)]

    def report_json(self, repo: RepoRef, reference: str) -> dict[str, Any]:
        digest, media_type, reports = self.reports(repo, reference)
        return manifest_report_json(repo.name, digest, media_type, reports)

    def statuses(self, region: str, images: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        return self.va.statuses(region, images)

    def summaries(
        self, region: str, images: list[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Per (repository, digest): status and counts of issues, for ``cr images --include-va``."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for repository, digest in dict.fromkeys(images):
            reports = self.va.report(region, repository, digest)
            if not reports:
                continue
            findings = [f for r in reports for f in r.findings if not f.exempted_by]
            found[(repository, digest)] = {
                "status": worst(r.status for r in reports).value,
                "vulnerabilities": len({f.advisory_id for f in findings}),
                "fixable": len({f.advisory_id for f in findings if f.fixed is not None}),
                "configuration_issues": sum(
                    1 for r in reports for i in r.config_issues if not i.exempted_by
                ),
                "exempted": sum(1 for r in reports for f in r.findings if f.exempted_by),
                "platforms": [r.platform for r in reports if r.platform],
            }
        return found

    # -- exemptions --------------------------------------------------------

    @staticmethod
    def scope_namespace(scope: str) -> str | None:
        """The namespace a scope lies in (None for the account-wide ``*``);
        Invalid when it is not a scope."""
        if scope == "*":
            return None
        if "/" not in scope:
            return validate_namespace(scope)
        name = scope
        if "@" in scope:
            name, _, digest = scope.partition("@")
            if not digest.startswith("sha256:") or len(digest) != 71:
                raise Invalid(f"scope {scope[:200]!r}: a digest is sha256: and 64 hex digits")
        elif ":" in scope.rsplit("/", 1)[-1]:
            name, _, tag = scope.rpartition(":")
            if not tag or len(tag) > 128:
                raise Invalid(f"scope {scope[:200]!r}: an empty or too long tag")
        try:
            return validate_name(name)
        except NameError_ as exc:
            raise Invalid(
                f"scope {scope[:200]!r}: {exc}; a scope is *, NAMESPACE, NAMESPACE/REPO, "
                "NAMESPACE/REPO:TAG or NAMESPACE/REPO@DIGEST"
            ) from None

    def add_exemption(
        self,
        account: str,
        region: str,
        scope: str,
        issue_type: str,
        issue_id: str,
        expires: str | None,
        reason: str,
        created_by: str,
    ) -> Exemption:
        self.scope_namespace(scope)
        if issue_type not in ISSUE_TYPES:
            raise Invalid(f"issue type {issue_type[:40]!r}: one of {', '.join(ISSUE_TYPES)}")
        issue_id = issue_id.strip()
        if not issue_id or len(issue_id) > MAX_ISSUE_ID or any(c.isspace() for c in issue_id):
            raise Invalid("an issue ID is one word of at most 200 characters")
        if len(reason) > MAX_REASON:
            raise Invalid(f"a reason is at most {MAX_REASON} characters")
        record = self.va.add_exemption(
            Exemption(
                id="",
                account=account,
                region=region,
                scope=scope,
                issue_type=issue_type,
                issue_id=issue_id,
                reason=reason,
                expires=_expiry(expires),
                created_by=created_by,
            )
        )
        self._reassess(region, scope)
        return record

    def exemptions(self, account: str, region: str) -> list[Exemption]:
        return self.va.exemptions(account, region)

    def exemption(self, account: str, region: str, exemption_id: str) -> Exemption:
        for found in self.va.exemptions(account, region):
            if found.id == exemption_id:
                return found
        raise NotFound(f"no exemption {exemption_id[:64]!r} in {region}")

    def remove_exemption(self, account: str, region: str, exemption_id: str) -> Exemption:
        removed = self.va.remove_exemption(account, region, exemption_id)
        if removed is None:
            raise NotFound(f"no exemption {exemption_id[:64]!r} in {region}")
        self._reassess(region, removed.scope)
        return removed

    def _reassess(self, region: str, scope: str) -> None:
        namespace = self.scope_namespace(scope)
        stamp = datetime.now(UTC).isoformat()
        self.va.enqueue_reassess(
            f"exemptions:{region}:{namespace or '*'}:{stamp}",
            {"region": region, "namespace": namespace},
        )


def _expiry(value: str | None) -> str:
    """An expiry as RFC 3339 in UTC, from a date (its start, in UTC) or a
    date and time."""
    if not value:
        return ""
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(
            f"expiry {value[:40]!r}: a date (2027-01-31) or date and time (2027-01-31T12:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= datetime.now(UTC):
        raise Invalid(f"expiry {value[:40]!r} is in the past")
    return when.astimezone(UTC).isoformat(timespec="seconds")
