"""The management REST API (``/api/v1``): IAM and the ``cr`` operations,
behind the same IAM as the registry. The ``moorage`` CLI is its client.

Callers authenticate with HTTP Basic: ``iamapikey`` and an API key, or an
email and password; a person who is a member of several accounts names the
one to act in with ``X-Moorage-Account``. Every operation is declared once in
a table that routes it, parses its body (``http.schemas``) and describes it
in the OpenAPI document. Handlers translate: the decision is IAM's
(``IamService.require``/``allows``), the work the services'; both block, so
they run in worker threads. Errors are JSON ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from moorage.auth.pullcheck import PullCheck
from moorage.auth.signin import SignIn, SignInFailed, Way, basic_credentials
from moorage.http import schemas
from moorage.http.va import VaApi
from moorage.iam import roles
from moorage.iam.errors import Forbidden, IamError, Invalid, NotFound, Unauthenticated
from moorage.iam.roles import SERVICES
from moorage.iam.secrets import PRESERVE_NOTICE
from moorage.iam.service import SERVICE_ID, USER, IamService, Principal
from moorage.metadata.iam_store import ApiKeyRecord, SubjectKind
from moorage.oci.names import NameError_, validate_name
from moorage.regions import RegionMap, UnknownDomain
from moorage.registry import ManifestService, RegistryError, RepoRef
from moorage.registry.namespaces import NamespaceService
from moorage.registry.signatures import SignatureService
from moorage.va.service import VulnerabilityService

API = "/api/v1"
ACCOUNT_HEADER = "X-Moorage-Account"
T = TypeVar("T")


def plain(value: Any) -> Any:
    """Records, enums and dates as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ApiCall:
    request: web.Request
    principal: Principal
    body: Any = None  # the operation's schemas model, parsed

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def query(self, name: str) -> str | None:
        return self.request.query.get(name)


Handler = Callable[[ApiCall], Awaitable[Any]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    body: type[BaseModel] | None = None
    query: tuple[str, ...] = ()
    any_account: bool = False  # answers before an account is chosen


class ManagementApi:
    def __init__(
        self,
        iam: IamService,
        manifests: ManifestService,
        namespaces: NamespaceService,
        signatures: SignatureService,
        regions: RegionMap,
        signin: SignIn,
        pull_check: PullCheck,
        va: VulnerabilityService | None = None,
    ) -> None:
        self.iam = iam
        self.va = va
        self.manifests = manifests
        self.namespace_service = namespaces
        self.signatures = signatures
        self.regions = regions
        self.signin = signin
        self.pull_check_service = pull_check
        self.operations = self._operations()

    def _operations(self) -> list[Operation]:
        s = schemas
        Op = Operation
        sid = "/iam/service-ids/{ref}"
        sid_key = "/iam/service-ids/{ref}/api-keys/{key}"
        return [
            Op("GET", "/iam/me", self.me, any_account=True),
            Op("POST", "/iam/accounts", self.create_account, s.AccountCreate),
            Op("GET", "/iam/users", self.list_users),
            Op("POST", "/iam/users", self.invite_user, s.UserInvite),
            Op("DELETE", "/iam/users/{ref}", self.remove_user),
            Op("GET", "/iam/users/{ref}/policies", self.list_user_policies),
            Op("POST", "/iam/users/{ref}/policies", self.create_user_policy, s.PolicyCreate),
            Op("GET", "/iam/service-ids", self.list_service_ids),
            Op("POST", "/iam/service-ids", self.create_service_id, s.ServiceIdCreate),
            Op("GET", sid, self.get_service_id),
            Op("DELETE", sid, self.delete_service_id),
            Op("GET", sid + "/policies", self.list_service_policies),
            Op("POST", sid + "/policies", self.create_service_policy, s.PolicyCreate),
            Op("GET", sid + "/api-keys", self.list_service_keys),
            Op("POST", sid + "/api-keys", self.create_service_key, s.ApiKeyCreate),
            Op("GET", sid_key, self.get_service_key),
            Op("PATCH", sid_key, self.update_service_key, s.ApiKeyUpdate),
            Op("POST", sid_key + "/lock", self.lock_service_key),
            Op("POST", sid_key + "/unlock", self.unlock_service_key),
            Op("DELETE", sid_key, self.delete_service_key),
            Op("DELETE", "/iam/policies/{id}", self.delete_policy),
            Op("GET", "/iam/api-keys", self.list_own_keys),
            Op("POST", "/iam/api-keys", self.create_own_key, s.ApiKeyCreate),
            Op("GET", "/iam/api-keys/{ref}", self.get_key),
            Op("PATCH", "/iam/api-keys/{ref}", self.update_key, s.ApiKeyUpdate),
            Op("POST", "/iam/api-keys/{ref}/lock", self.lock_key),
            Op("POST", "/iam/api-keys/{ref}/unlock", self.unlock_key),
            Op("DELETE", "/iam/api-keys/{ref}", self.delete_key),
            Op("GET", "/cr/regions", self.list_regions, any_account=True),
            Op("POST", "/cr/pull-check", self.pull_check, s.PullCheckRequest),
            Op("GET", "/cr/{region}/namespaces", self.list_namespaces),
            Op("POST", "/cr/{region}/namespaces", self.add_namespace, s.NamespaceCreate),
            Op("DELETE", "/cr/{region}/namespaces/{name}", self.remove_namespace),
            Op("GET", "/cr/{region}/namespaces/{name}/signers", self.list_signers),
            Op("POST", "/cr/{region}/namespaces/{name}/signers", self.add_signer, s.SignerCreate),
            Op("DELETE", "/cr/{region}/namespaces/{name}/signers/{signer}", self.remove_signer),
            Op("GET", "/cr/{region}/images", self.list_images),
            Op("GET", "/cr/{region}/image", self.inspect_image, query=("image",)),
            Op("DELETE", "/cr/{region}/image", self.remove_image, query=("image",)),
            Op("POST", "/cr/{region}/image-tags", self.tag_image, s.ImageTag),
            Op("GET", "/cr/{region}/tokens", self.list_tokens),
            Op("POST", "/cr/{region}/tokens", self.add_token, s.TokenCreate),
            Op("GET", "/cr/{region}/tokens/{id}", self.get_token),
            Op("DELETE", "/cr/{region}/tokens/{id}", self.remove_token),
            *(VaApi(self, self.va).operations() if self.va is not None else ()),
        ]

    # -- plumbing ------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        defs = [web.route(op.method, API + op.path, self._wrap(op)) for op in self.operations]
        defs.append(web.get(API + "/openapi.json", self.openapi))
        # Last: any other path under /api/ (one no operation's pattern matches, such
        # as an image name with a newline) is refused in this API's error shape, not
        # the registry's.
        defs.append(web.route("*", r"/api/{rest:[\s\S]*}", self._unrouted))
        return defs

    async def _unrouted(self, request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not request.match_info.route.resource:
                allowed |= (await resource.resolve(request))[1]
        allowed.discard("*")
        if allowed:
            methods = ", ".join(sorted(allowed))
            return _error(
                405,
                "method_not_allowed",
                f"{request.method} is not supported here; use {methods}",
                {"Allow": methods},
            )
        return _error(404, "not_found", "no such endpoint in the management API")

    def _wrap(self, op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                principal = await self._authenticate(request, op)
                body = await self._body(request, op.body) if op.body is not None else None
                result = await op.handler(ApiCall(request, principal, body))
            except SignInFailed as exc:
                headers = (
                    {"Retry-After": str(int(exc.retry_after) + 1)} if exc.status == 429 else {}
                )
                code = "too_many_requests" if exc.status == 429 else "unauthenticated"
                return _error(exc.status, code, exc.message, headers)
            except IamError as exc:
                return _error(exc.status, exc.code, exc.message)
            except RegistryError as exc:
                return _error(exc.status, exc.code.lower(), exc.message)
            except web.HTTPException as exc:  # aiohttp's own: a body over the size limit
                return _error(exc.status, "invalid", exc.reason)
            if isinstance(result, web.StreamResponse):  # a document served as it is stored
                return result
            if result is None:
                return web.Response(status=204)
            status = 201 if request.method == "POST" else 200
            return web.json_response(plain(result), status=status, dumps=json.dumps)

        return handler

    async def _authenticate(self, request: web.Request, op: Operation) -> Principal:
        credentials = basic_credentials(request.headers.get("Authorization"))
        if credentials is None:
            raise Unauthenticated("sign in with HTTP Basic: iamapikey and an API key")
        principal = await self.signin.authenticate(
            request.remote, credentials[0], credentials[1], Way.MANAGEMENT
        )
        chosen = request.headers.get(ACCOUNT_HEADER)
        if chosen:
            return principal.acting_in(chosen.strip())
        if len(principal.accounts) > 1 and not op.any_account:
            raise Invalid(
                f"you are a member of {len(principal.accounts)} accounts: name the one to act "
                f"in with the {ACCOUNT_HEADER} header (GET {API}/iam/me lists them)"
            )
        return principal

    @staticmethod
    async def _body(request: web.Request, model: type[BaseModel]) -> BaseModel:
        raw = await request.read()  # bounded by the application's client_max_size
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise Invalid(f"{where}: {first.get('msg', 'invalid')}"[:300]) from None

    @staticmethod
    async def _run(fn: Callable[..., T], *args: Any) -> T:
        """A blocking service call (database, scrypt), off the event loop."""
        return await asyncio.to_thread(fn, *args)

    async def _require(
        self,
        p: Principal,
        action: str,
        region: str | None = None,
        namespace: str | None = None,
        services: tuple[str, ...] = (roles.REGISTRY,),
    ) -> None:
        await self._run(self.iam.require, p, action, region, namespace, services)

    async def _identities(self, p: Principal) -> None:
        """Members, service IDs and keys: Editor or Administrator on iam-identity."""
        await self._run(self.iam.require_identities, p)

    async def _act_for(self, p: Principal, kind: SubjectKind, subject: str) -> None:
        """Changing another identity or its keys (``IamService.may_act_for``)."""
        await self._run(self.iam.require_act_for, p, kind, subject)

    async def _viewer(self, p: Principal) -> None:
        await self._require(p, roles.VIEW, services=SERVICES)

    def _region(self, c: ApiCall) -> str:
        name = c.path("region")
        try:
            return self.regions.get(name).name
        except UnknownDomain:
            raise NotFound(
                f"unknown region {name[:64]!r}; valid: {', '.join(self.regions.regions)}"
            ) from None

    # -- accounts and identities ---------------------------------------------

    async def me(self, c: ApiCall) -> Any:
        """Who the credential speaks for, and in which accounts."""
        p = c.principal
        accounts = sorted(p.accounts)
        return {
            "account_id": accounts[0] if len(accounts) == 1 else None,
            "accounts": accounts,
            "kind": p.kind.value,
            "id": p.id,
            "api_key": p.credential_id,
        }

    async def create_account(self, c: ApiCall) -> Any:
        """Create an account with its administrator; only an Administrator on
        iam-identity of the installation's first account does this."""
        await self._require(c.principal, roles.MANAGE_POLICIES, services=(roles.IAM_IDENTITY,))
        if c.principal.account_id != await self._run(self.iam.default_account):
            raise Forbidden("only the installation's first account creates accounts")
        account, created = await self._run(self.iam.create_account, c.body.name, c.body.admin_email)
        return {
            "account_id": account,
            "api_key_id": created.id,
            "apikey": created.secret,
            "notice": PRESERVE_NOTICE,
        }

    async def list_users(self, c: ApiCall) -> Any:
        """The members of the account."""
        await self._viewer(c.principal)
        return await self._run(self.iam.users, c.principal.account_id)

    async def invite_user(self, c: ApiCall) -> Any:
        """Make a person a member of the account (a new identity gets the password)."""
        await self._identities(c.principal)
        return await self._run(
            self.iam.invite_user, c.principal.account_id, c.body.email, c.body.password
        )

    async def remove_user(self, c: ApiCall) -> Any:
        """Remove a member from the account, with its keys and policies there."""
        await self._identities(c.principal)
        user = await self._run(self.iam.user, c.principal.account_id, c.path("ref"))
        await self._act_for(c.principal, USER, user.id)
        await self._run(self.iam.remove_user, c.principal.account_id, user.id)

    async def _check_policy(self, c: ApiCall) -> None:
        """Before the subject is looked up, so that who may not give the policy
        learns nothing of the account's identities."""
        body: schemas.PolicyCreate = c.body
        await self._run(
            self.iam.check_policy,
            c.principal,
            body.roles,
            body.service_name,
            body.region,
            body.resource_type,
            body.resource,
        )

    async def _create_policy(self, c: ApiCall, kind: SubjectKind, subject: str) -> Any:
        body: schemas.PolicyCreate = c.body
        return await self._run(
            self.iam.create_policy,
            c.principal,
            kind,
            subject,
            body.roles,
            body.service_name,
            body.region,
            body.resource_type,
            body.resource,
        )

    async def list_user_policies(self, c: ApiCall) -> Any:
        """A member's policies in the account."""
        await self._viewer(c.principal)
        account = c.principal.account_id
        user = await self._run(self.iam.user, account, c.path("ref"))
        return await self._run(self.iam.policies, account, USER, user.id)

    async def create_user_policy(self, c: ApiCall) -> Any:
        """Give a member roles on a service, optionally in one region and namespace
        (Administrator on that service, over that scope)."""
        await self._check_policy(c)
        user = await self._run(self.iam.user, c.principal.account_id, c.path("ref"))
        return await self._create_policy(c, USER, user.id)

    # -- service IDs ---------------------------------------------------------

    async def list_service_ids(self, c: ApiCall) -> Any:
        """The account's service IDs."""
        await self._viewer(c.principal)
        return await self._run(self.iam.service_ids, c.principal.account_id)

    async def create_service_id(self, c: ApiCall) -> Any:
        """Create a service ID."""
        await self._identities(c.principal)
        return await self._run(
            self.iam.create_service_id, c.principal.account_id, c.body.name, c.body.description
        )

    async def _service_id(self, c: ApiCall) -> str:
        found = await self._run(self.iam.service_id, c.principal.account_id, c.path("ref"))
        return found.id

    async def get_service_id(self, c: ApiCall) -> Any:
        """One service ID, by ID or name."""
        await self._viewer(c.principal)
        return await self._run(self.iam.service_id, c.principal.account_id, c.path("ref"))

    async def delete_service_id(self, c: ApiCall) -> Any:
        """Delete a service ID with its API keys and policies."""
        await self._identities(c.principal)
        sid = await self._service_id(c)
        await self._act_for(c.principal, SERVICE_ID, sid)
        await self._run(self.iam.delete_service_id, c.principal.account_id, sid)

    async def list_service_policies(self, c: ApiCall) -> Any:
        """A service ID's policies."""
        await self._viewer(c.principal)
        sid = await self._service_id(c)
        return await self._run(self.iam.policies, c.principal.account_id, SERVICE_ID, sid)

    async def create_service_policy(self, c: ApiCall) -> Any:
        """Give a service ID roles on a service, optionally in one region and namespace
        (Administrator on that service, over that scope)."""
        await self._check_policy(c)
        return await self._create_policy(c, SERVICE_ID, await self._service_id(c))

    async def delete_policy(self, c: ApiCall) -> Any:
        """Delete a policy of the account (Administrator on its service, over its scope)."""
        await self._run(self.iam.delete_policy, c.principal, c.path("id"))

    # -- API keys ------------------------------------------------------------

    async def _new_key(self, c: ApiCall, kind: SubjectKind, owner: str) -> Any:
        record, created = await self._run(
            self.iam.create_api_key,
            c.principal.account_id,
            kind,
            owner,
            c.body.name,
            c.body.description,
        )
        return {**plain(record), "apikey": created.secret, "notice": PRESERVE_NOTICE}

    async def list_service_keys(self, c: ApiCall) -> Any:
        """A service ID's API keys (never their secrets)."""
        await self._viewer(c.principal)
        sid = await self._service_id(c)
        return await self._run(self.iam.api_keys, c.principal.account_id, SERVICE_ID, sid)

    async def create_service_key(self, c: ApiCall) -> Any:
        """Create an API key for a service ID; the secret is in this answer only.
        Its holder acts as the service ID: this takes administering all it holds."""
        await self._identities(c.principal)
        sid = await self._service_id(c)
        await self._act_for(c.principal, SERVICE_ID, sid)
        return await self._new_key(c, SERVICE_ID, sid)

    async def _service_key(self, c: ApiCall) -> ApiKeyRecord:
        sid = await self._service_id(c)
        return await self._run(
            self.iam.api_key, c.principal.account_id, c.path("key"), (SERVICE_ID, sid)
        )

    async def _service_key_to_change(self, c: ApiCall) -> ApiKeyRecord:
        await self._identities(c.principal)
        key = await self._service_key(c)
        await self._act_for(c.principal, SERVICE_ID, key.owner_id)
        return key

    async def get_service_key(self, c: ApiCall) -> Any:
        """One API key of a service ID, by ID or name."""
        await self._viewer(c.principal)
        return await self._service_key(c)

    async def update_service_key(self, c: ApiCall) -> Any:
        """Rename an API key of a service ID or change its description."""
        return await self._update(c, await self._service_key_to_change(c))

    async def lock_service_key(self, c: ApiCall) -> Any:
        """Lock an API key of a service ID: sign-ins with it are refused."""
        return await self._lock(c, await self._service_key_to_change(c), True)

    async def unlock_service_key(self, c: ApiCall) -> Any:
        """Unlock an API key of a service ID."""
        return await self._lock(c, await self._service_key_to_change(c), False)

    async def delete_service_key(self, c: ApiCall) -> Any:
        """Delete an API key of a service ID."""
        key = await self._service_key_to_change(c)
        await self._run(self.iam.delete_api_key, c.principal.account_id, key.id)

    async def list_own_keys(self, c: ApiCall) -> Any:
        """Your own API keys in this account."""
        p = c.principal
        return await self._run(self.iam.api_keys, p.account_id, p.kind, p.id)

    async def create_own_key(self, c: ApiCall) -> Any:
        """Create an API key for yourself; the secret is in this answer only."""
        if c.principal.kind != USER:
            raise Forbidden("only users create API keys for themselves")
        return await self._new_key(c, USER, c.principal.id)

    async def _own_or(
        self, c: ApiCall, check: Callable[[Principal], Awaitable[None]]
    ) -> ApiKeyRecord:
        """A key of the account by ID or name: the caller's own, or any if ``check``
        (viewer or administrator) passes. Someone who may not see others' keys is
        told nothing of them: their names answer as unknown ones do."""
        p = c.principal
        ref = c.path("ref")
        try:
            return await self._run(self.iam.api_key, p.account_id, ref, (p.kind, p.id))
        except NotFound:
            await check(p)
        return await self._run(self.iam.api_key, p.account_id, ref)

    async def _key_to_change(self, c: ApiCall) -> ApiKeyRecord:
        """The caller's own key, or another's that the caller may act for."""
        key = await self._own_or(c, self._identities)
        if (key.owner_kind, key.owner_id) != (c.principal.kind, c.principal.id):
            await self._act_for(c.principal, key.owner_kind, key.owner_id)
        return key

    async def get_key(self, c: ApiCall) -> Any:
        """One API key: your own, or any for a viewer of the account."""
        return await self._own_or(c, self._viewer)

    async def update_key(self, c: ApiCall) -> Any:
        """Rename an API key or change its description (yours, or another's you may act for)."""
        return await self._update(c, await self._key_to_change(c))

    async def _update(self, c: ApiCall, key: ApiKeyRecord) -> Any:
        body: schemas.ApiKeyUpdate = c.body
        return await self._run(
            self.iam.update_api_key, c.principal.account_id, key.id, body.name, body.description
        )

    async def _lock(self, c: ApiCall, key: ApiKeyRecord, locked: bool) -> Any:
        p = c.principal
        as_admin = await self._run(self.iam.may_act_for, p, key.owner_kind, key.owner_id)
        return await self._run(self.iam.set_api_key_lock, p.account_id, key.id, locked, p, as_admin)

    async def lock_key(self, c: ApiCall) -> Any:
        """Lock an API key (yours, or another's you may act for)."""
        return await self._lock(c, await self._key_to_change(c), True)

    async def unlock_key(self, c: ApiCall) -> Any:
        """Unlock an API key; one an administrator locked only an administrator unlocks."""
        return await self._lock(c, await self._key_to_change(c), False)

    async def delete_key(self, c: ApiCall) -> Any:
        """Delete an API key (yours, or another's you may act for)."""
        key = await self._key_to_change(c)
        await self._run(self.iam.delete_api_key, c.principal.account_id, key.id)

    # -- container registry --------------------------------------------------

    async def list_regions(self, c: ApiCall) -> Any:
        """The regional registries and the domains they answer on."""
        return [
            {"name": r.name, "domain": r.domain, "legacy_domain": r.legacy_domain}
            for r in self.regions.regions.values()
        ]

    async def pull_check(self, c: ApiCall) -> Any:
        """Whether a credential may pull a repository from a Moorage domain, and why not."""
        body: schemas.PullCheckRequest = c.body
        return await self.pull_check_service.check(
            c.principal,
            c.request.remote,
            body.registry,
            body.repository,
            body.username,
            body.password,
        )

    async def list_namespaces(self, c: ApiCall) -> Any:
        """The region's namespaces of the account that you may use."""
        return await self._run(
            self.iam.namespaces_allowing, c.principal, self._region(c), roles.LIST
        )

    async def add_namespace(self, c: ApiCall) -> Any:
        """Create a namespace in the region for the account."""
        region = self._region(c)
        await self._require(c.principal, roles.MANAGE_NAMESPACES, region)
        return await self._run(self.iam.add_namespace, c.principal.account_id, region, c.body.name)

    async def remove_namespace(self, c: ApiCall) -> Any:
        """Remove a namespace with everything in it, in one transaction."""
        region, name = self._region(c), c.path("name")
        await self._require(c.principal, roles.MANAGE_NAMESPACES, region, name)
        await self.namespace_service.remove(c.principal.account_id, region, name)

    async def list_signers(self, c: ApiCall) -> Any:
        """The keys a namespace trusts to sign its images."""
        region, name = self._region(c), c.path("name")
        await self._may(c.principal, roles.LIST, region, name)
        return await self._run(self.signatures.signers, region, name)

    async def add_signer(self, c: ApiCall) -> Any:
        """Trust a public key (cosign PEM or armored OpenPGP) to sign a namespace's images."""
        region, name = self._region(c), c.path("name")
        await self._may(c.principal, roles.MANAGE_NAMESPACES, region, name)
        body: schemas.SignerCreate = c.body
        return await self._run(
            self.signatures.add_signer,
            c.principal.account_id,
            region,
            name,
            body.name,
            body.public_key,
        )

    async def remove_signer(self, c: ApiCall) -> Any:
        """Stop trusting a signer's key."""
        region, name = self._region(c), c.path("name")
        await self._may(c.principal, roles.MANAGE_NAMESPACES, region, name)
        await self._run(
            self.signatures.remove_signer,
            c.principal.account_id,
            region,
            name,
            c.path("signer"),
        )

    async def list_images(self, c: ApiCall) -> Any:
        """Tagged images of the region's namespaces you may list."""
        region = self._region(c)
        visible = await self._run(self.iam.namespaces_allowing, c.principal, region, roles.LIST)
        images = await self._run(self.manifests.images, region, [n.name for n in visible])
        keys = [(i.repository, i.digest) for i in images]
        statuses: dict[tuple[str, str], str] = {}
        summaries: dict[tuple[str, str], Any] = {}
        if self.va is not None:
            statuses = await self._run(self.va.statuses, region, keys)
            if c.query("include_va") in ("1", "true", "yes"):
                summaries = await self._run(self.va.summaries, region, keys)
        listed = []
        for i in images:
            entry = {
                "repository": i.repository,
                "tag": i.tag,
                "digest": i.digest,
                "namespace": i.namespace,
                "created": plain(i.created),
                "size": i.size,
                "media_type": i.media_type,
                "security_status": statuses.get((i.repository, i.digest), "PENDING"),
            }
            if summaries:
                entry["va"] = summaries.get((i.repository, i.digest))
            listed.append(entry)
        return listed

    def _image(self, region: str, value: str | None) -> tuple[RepoRef, str, str]:
        """``[domain/]namespace/image:tag`` or ``...@digest``, split for the services."""
        if not value:
            raise Invalid("image is required, as namespace/name:tag")
        first, _, rest = value.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            value = rest  # drop a registry domain in front
        if "@" in value:
            name, _, reference = value.partition("@")
        else:
            name, sep, reference = value.rpartition(":")
            if not sep or "/" in reference:
                name, reference = value, "latest"
        try:
            namespace = validate_name(name)
        except NameError_ as exc:
            raise Invalid(str(exc)) from exc
        return RepoRef(region, name), reference, namespace

    async def _may(self, p: Principal, action: str, region: str, namespace: str) -> None:
        owner = await self._run(self.iam.namespace_owner, region, namespace)
        if owner != p.account_id:
            raise NotFound(f"namespace {namespace!r} not found in {region}")
        await self._require(p, action, region, namespace)

    async def inspect_image(self, c: ApiCall) -> Any:
        """An image's manifest."""
        region = self._region(c)
        repo, reference, namespace = self._image(region, c.query("image"))
        await self._may(c.principal, roles.PULL, region, namespace)
        manifest = await self._run(self.manifests.get, repo, reference, [])
        signatures = await self.signatures.of_image(repo, manifest.digest)
        return {
            "repository": repo.name,
            "reference": reference,
            "digest": manifest.digest,
            "media_type": manifest.media_type,
            "manifest": json.loads(manifest.content),
            "signatures": signatures,
        }

    async def remove_image(self, c: ApiCall) -> Any:
        """Like ``cr image-rm``: the image's digest goes, with every tag on it."""
        region = self._region(c)
        repo, reference, namespace = self._image(region, c.query("image"))
        await self._may(c.principal, roles.DELETE, region, namespace)
        digest = (await self._run(self.manifests.get, repo, reference, [])).digest
        await self._run(self.manifests.delete, repo, digest, c.principal.account_id)
        return {"deleted": f"{repo.name}@{digest}"}

    async def tag_image(self, c: ApiCall) -> Any:
        """Tag an image, within or across repositories of the region."""
        region = self._region(c)
        source, reference, source_ns = self._image(region, c.body.source)
        target, tag, target_ns = self._image(region, c.body.target)
        await self._may(c.principal, roles.PULL, region, source_ns)
        await self._may(c.principal, roles.TAG, region, target_ns)
        write = await self._run(self.manifests.prepare_tag, source, reference, target, tag)
        if write.removes:  # moving a signature tag off what it holds deletes signatures
            try:
                await self._may(c.principal, roles.DELETE, region, target_ns)
            except Forbidden:
                raise self.manifests.removal_denied(write) from None
        result = await self._run(self.manifests.commit, write, c.principal.account_id)
        return {"tagged": f"{target.name}:{tag}", "digest": result.digest}

    async def list_tokens(self, c: ApiCall) -> Any:
        """The account's registry tokens for the region (deprecated)."""
        region = self._region(c)
        await self._require(c.principal, roles.MANAGE_TOKENS, region)
        return await self._run(self.iam.registry_tokens, c.principal.account_id, region)

    async def add_token(self, c: ApiCall) -> Any:
        """Create a registry token for the region's legacy domain (deprecated)."""
        region = self._region(c)
        await self._require(c.principal, roles.MANAGE_TOKENS, region)
        if self.regions.get(region).legacy_domain is None:
            raise Invalid(f"{region} has no legacy domain, where registry tokens work")
        body: schemas.TokenCreate = c.body
        created = await self._run(
            self.iam.add_registry_token,
            c.principal.account_id,
            region,
            body.description,
            body.readwrite,
            body.non_expiring,
        )
        return {"id": created.id, "token": created.secret}

    async def get_token(self, c: ApiCall) -> Any:
        """One registry token of the region, with its value."""
        region = self._region(c)
        await self._require(c.principal, roles.MANAGE_TOKENS, region)
        token_id = c.path("id")
        value = await self._run(
            self.iam.registry_token_value, c.principal.account_id, region, token_id
        )
        return {"id": token_id, "token": value}

    async def remove_token(self, c: ApiCall) -> Any:
        """Remove a registry token of the region."""
        region = self._region(c)
        await self._require(c.principal, roles.MANAGE_TOKENS, region)
        await self._run(
            self.iam.remove_registry_token, c.principal.account_id, region, c.path("id")
        )

    # -- the OpenAPI document ------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi_document())

    def openapi_document(self) -> dict[str, Any]:
        error = {
            "description": "Error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        component_schemas: dict[str, Any] = {
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            }
        }
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            params = [
                {
                    "name": part[1:-1].split(":", 1)[0],  # "{image:.+}" names "image"
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
                for part in op.path.split("/")
                if part.startswith("{")
            ]
            params += [
                {"name": q, "in": "query", "required": True, "schema": {"type": "string"}}
                for q in op.query
            ]
            success = "201" if op.method == "POST" else "200"
            entry: dict[str, Any] = {
                "operationId": op.handler.__name__,
                "summary": (op.handler.__doc__ or op.handler.__name__).strip().split("\n")[0],
                "security": [{"basic": []}],
                "parameters": params,
                "responses": {
                    success: {"description": "Done", "content": {"application/json": {}}},
                    "204": {"description": "Done, nothing to say"},
                    "400": error,
                    "401": error,
                    "403": error,
                    "404": error,
                    "409": error,
                    "413": error,
                    "429": error,
                },
            }
            if op.body is not None:
                schema = op.body.model_json_schema(ref_template="#/components/schemas/{model}")
                component_schemas.update(schema.pop("$defs", {}))
                component_schemas[op.body.__name__] = schema
                entry["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}
                        }
                    },
                }
            templated = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", op.path)  # aiohttp's {name:regex}
            paths.setdefault(API + templated, {})[op.method.lower()] = entry
        return {
            "openapi": "3.1.0",
            "info": {"title": "Moorage management API", "version": "1"},
            "paths": paths,
            "components": {
                "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
                "schemas": component_schemas,
            },
        }


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )
