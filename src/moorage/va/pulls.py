"""Refusing pulls of images the Advisor calls FAIL (``[va] block_pulls``, off
by default), as Harbor's "prevent vulnerable images from running" does, in
the one place manifests are served.

What is refused: a manifest GET whose reports (every platform of an index:
the registry cannot tell which one the client will run) include a FAIL that
still has open issues once exemptions are applied. An image whose FAIL
issues are all exempted is served.

What is never refused:

- HEAD: it carries no content, and it is how tags are resolved (the
  admission webhook, ``docker pull``'s first request, mirroring tools
  checking what changed);
- automation: a service ID or a registry token that may **push** to the
  repository. Those are the build, scan, promote and mirror pipelines,
  which must still read an image to fix, re-scan or replace it. A cluster's
  pull secret is a service ID with Reader (what ``ks cluster-register``
  makes) or a read-only token, so the kubelet stays refused, which is the
  point; people are refused too, whatever their role (the report, from
  ``moorage cr va``, says what to fix). Push rights are asked of IAM when a
  pull would be refused, not read from the token, whose scope names only
  what the client asked for.

Blobs are not checked: without the manifest a client has no image, and
checking every blob GET would put a database read on the hottest path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from moorage.auth.tokens import Scope, TokenService, principal_of
from moorage.metadata.iam_store import SubjectKind
from moorage.regions import Target
from moorage.registry.errors import Denied
from moorage.va.model import Report, Status

AUTOMATION = (SubjectKind.SERVICE_ID, SubjectKind.REGISTRY_TOKEN)
NAMED = 10  # advisories named in the refusal; the detail lists them all
PUSH = "push"

# (region, repository, manifest digest) -> the reports, exemptions applied.
Reports = Callable[[str, str, str], Sequence[Report]]
Run = Callable[..., Awaitable[Any]]


def open_issues(report: Report) -> list[str]:
    """The IDs of what keeps a FAIL report failing: open findings with a fix
    and open configuration issues first, then any other open finding (the
    Advisor counted it); [] for a report that is not FAIL or all exempted."""
    if report.status != Status.FAIL:
        return []
    findings = [f for f in report.findings if not f.exempted_by]
    configs = [c.id for c in report.config_issues if not c.exempted_by]
    fixable = [f.advisory_id for f in findings if f.fixed] + configs
    return list(dict.fromkeys(fixable or [f.advisory_id for f in findings]))


def refusal(reports: Sequence[Report]) -> tuple[str, list[dict[str, Any]]] | None:
    """The refusal's message and detail when a report FAILs, else None."""
    failing = [(r, ids) for r in reports if (ids := open_issues(r))]
    if not failing:
        return None
    named: list[str] = []
    for _, ids in failing:
        named += [i for i in ids if i not in named]
    platforms = ", ".join(r.platform or r.digest for r, _ in failing)
    listed = ", ".join(named[:NAMED]) + (
        f" and {len(named) - NAMED} more" if len(named) > NAMED else ""
    )
    message = (
        f"the Vulnerability Advisor reports FAIL for this image ({platforms}): {listed}; "
        "this registry refuses pulls of FAIL images: update the image, or have a Manager "
        "exempt the issues (moorage cr exemption-add)"
    )
    detail = [
        {"platform": r.platform, "digest": r.digest, "status": r.status.value, "issues": ids}
        for r, ids in failing
    ]
    return message, detail


class PullGate:
    """``check`` raises Denied (403) for a GET the rules above refuse.
    ``reports`` and IAM are blocking: ``run`` takes them to the database
    threads. ``tokens`` None (open access): there is no automation identity,
    every GET of a FAIL image is refused."""

    def __init__(self, reports: Reports, run: Run, tokens: TokenService | None) -> None:
        self.reports, self.run, self.tokens = reports, run, tokens

    async def check(
        self, method: str, target: Target, repository: str, digest: str, claims: Any
    ) -> None:
        if method != "GET":
            return
        found = await self.run(self.reports, target.region.name, repository, digest)
        refused = refusal(found)
        if refused is None or await self.automation(target, repository, claims):
            return
        message, detail = refused
        raise Denied(message, detail=detail)

    async def automation(self, target: Target, repository: str, claims: Any) -> bool:
        principal = principal_of(claims) if isinstance(claims, dict) else None
        if self.tokens is None or principal is None or principal.kind not in AUTOMATION:
            return False
        scope = Scope("repository", repository, (PUSH,))
        granted = await self.run(self.tokens.grant, principal, target, [scope])
        return bool(granted) and PUSH in granted[0].get("actions", ())
