"""The Advisor's API: reports (``/api/v1/cr/<region>/va/<image>``, and the
registry's ``/v2/<name>/_moorage/va/<reference>`` that pull credentials may
read) and exemptions (``/api/v1/cr/<region>/exemptions``).

Handlers translate. Who may do what is IAM's, asked as everywhere else
(``ManagementApi._may``: another account's namespace is not found, a
lower role is forbidden): reading a report takes pull, listing exemptions
list, adding or removing one ``exemption.manage`` (Manager)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moorage.http import schemas
from moorage.iam import roles
from moorage.iam.errors import Forbidden
from moorage.va.assess import ISSUE_TYPES
from moorage.va.model import Exemption
from moorage.va.service import VulnerabilityService

if TYPE_CHECKING:
    from moorage.http.management import ApiCall, ManagementApi, Operation


class VaApi:
    def __init__(self, api: ManagementApi, service: VulnerabilityService) -> None:
        self.api = api
        self.service = service

    def operations(self) -> list[Operation]:
        from moorage.http.management import Operation

        return [
            Operation("GET", "/cr/{region}/va/{image:.+}", self.get_report),
            Operation("GET", "/cr/exemption-types", self.exemption_types, any_account=True),
            Operation("GET", "/cr/{region}/exemptions", self.list_exemptions),
            Operation(
                "POST", "/cr/{region}/exemptions", self.add_exemption, schemas.ExemptionCreate
            ),
            Operation("GET", "/cr/{region}/exemptions/{id}", self.get_exemption),
            Operation("DELETE", "/cr/{region}/exemptions/{id}", self.remove_exemption),
        ]

    async def get_report(self, c: ApiCall) -> Any:
        """The Vulnerability Advisor's report of an image (by tag or digest), per platform."""
        api = self.api
        region = api._region(c)
        repo, reference, namespace = api._image(region, c.path("image"))
        await api._may(c.principal, roles.PULL, region, namespace)
        return await api._run(self.service.report_json, repo, reference)

    async def exemption_types(self, c: ApiCall) -> Any:
        """The issue types an exemption may name."""
        return [{"issue_type": k, "description": v} for k, v in ISSUE_TYPES.items()]

    async def _may_exempt(self, c: ApiCall, region: str, scope: str) -> None:
        namespace = self.service.scope_namespace(scope)
        if namespace is None:  # the whole account: the action over the whole region
            await self.api._require(c.principal, roles.MANAGE_EXEMPTIONS, region)
        else:
            await self.api._may(c.principal, roles.MANAGE_EXEMPTIONS, region, namespace)

    async def list_exemptions(self, c: ApiCall) -> Any:
        """The account's exemptions in the region, of the namespaces you may list."""
        region = self.api._region(c)
        visible = await self.api._run(
            self.api.iam.namespaces_allowing, c.principal, region, roles.LIST
        )
        names = {n.name for n in visible}
        found = await self.api._run(self.service.exemptions, c.principal.account_id, region)
        return [_plain(e) for e in found if _visible(self.service, e, names)]

    async def get_exemption(self, c: ApiCall) -> Any:
        """One exemption."""
        region = self.api._region(c)
        found = await self.api._run(
            self.service.exemption, c.principal.account_id, region, c.path("id")
        )
        visible = await self.api._run(
            self.api.iam.namespaces_allowing, c.principal, region, roles.LIST
        )
        if not _visible(self.service, found, {n.name for n in visible}):
            raise Forbidden("you are not allowed to list exemptions of that scope")
        return _plain(found)

    async def add_exemption(self, c: ApiCall) -> Any:
        """Exempt an issue (a CVE or any alias of it, or a configuration check) within a scope."""
        region = self.api._region(c)
        body: schemas.ExemptionCreate = c.body
        await self._may_exempt(c, region, body.scope)
        created = await self.api._run(
            self.service.add_exemption,
            c.principal.account_id,
            region,
            body.scope,
            body.issue_type,
            body.issue_id,
            body.expires,
            body.reason,
            f"{c.principal.kind.value}:{c.principal.id}",
        )
        return _plain(created)

    async def remove_exemption(self, c: ApiCall) -> Any:
        """Remove an exemption; the images it covered are assessed again."""
        region = self.api._region(c)
        account = c.principal.account_id
        found = await self.api._run(self.service.exemption, account, region, c.path("id"))
        await self._may_exempt(c, region, found.scope)
        await self.api._run(self.service.remove_exemption, account, region, found.id)


def _visible(service: VulnerabilityService, exemption: Exemption, namespaces: set[str]) -> bool:
    namespace = service.scope_namespace(exemption.scope)
    return bool(namespaces) if namespace is None else namespace in namespaces


def _plain(exemption: Exemption) -> dict[str, Any]:
    return {
        "id": exemption.id,
        "region": exemption.region,
        "scope": exemption.scope,
        "issue_type": exemption.issue_type,
        "issue_id": exemption.issue_id,
        "reason": exemption.reason,
        "expires": exemption.expires or None,
        "created_by": exemption.created_by,
    }
