"""The management REST API (``/api/v1``): IAM and the ``cr`` operations,
behind the same IAM as the registry. The ``moorage`` CLI is its client.

Callers authenticate with HTTP Basic: ``iamapikey`` and an API key, or an
email and password. Errors are JSON ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from moorage.auth.ratelimit import FailureLimiter
from moorage.iam import roles
from moorage.iam.errors import (
    Forbidden,
    IamError,
    Invalid,
    NotFound,
    Throttled,
    Unauthenticated,
)
from moorage.iam.roles import REGISTRY, SERVICES, allowed_actions
from moorage.iam.secrets import PRESERVE_NOTICE
from moorage.iam.service import SERVICE_ID, USER, IamService, Principal
from moorage.oci.names import NameError_, validate_name
from moorage.regions import RegionMap, UnknownDomain
from moorage.registry import ManifestService, RegistryError, RepoRef

API = "/api/v1"
Endpoint = Callable[[web.Request, Principal], Awaitable[Any]]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _row(obj: Any, *fields: str) -> dict[str, Any]:
    return {f: _plain(getattr(obj, f)) for f in fields}


def service_id_json(s: Any) -> dict[str, Any]:
    return _row(s, "id", "name", "description", "created_at")


def api_key_json(k: Any) -> dict[str, Any]:
    return _row(k, "id", "name", "description", "owner_kind", "owner_id", "locked", "created_at")


def policy_json(p: Any) -> dict[str, Any]:
    row = _row(
        p,
        "id",
        "subject_kind",
        "subject_id",
        "service_name",
        "region",
        "resource_type",
        "resource",
        "created_at",
    )
    row["roles"] = p.roles.split(",")
    return row


class ManagementApi:
    def __init__(
        self,
        iam: IamService,
        manifests: ManifestService,
        regions: RegionMap,
        limiter: FailureLimiter,
    ) -> None:
        self.iam = iam
        self.manifests = manifests
        self.regions = regions
        self.limiter = limiter

    # -- plumbing ------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        table: list[tuple[str, str, Endpoint]] = [
            ("GET", "/iam/me", self.me),
            ("POST", "/iam/accounts", self.create_account),
            ("GET", "/iam/users", self.list_users),
            ("POST", "/iam/users", self.create_user),
            ("DELETE", "/iam/users/{ref}", self.delete_user),
            ("GET", "/iam/users/{ref}/policies", self.list_user_policies),
            ("POST", "/iam/users/{ref}/policies", self.create_user_policy),
            ("GET", "/iam/service-ids", self.list_service_ids),
            ("POST", "/iam/service-ids", self.create_service_id),
            ("GET", "/iam/service-ids/{ref}", self.get_service_id),
            ("DELETE", "/iam/service-ids/{ref}", self.delete_service_id),
            ("GET", "/iam/service-ids/{ref}/policies", self.list_service_policies),
            ("POST", "/iam/service-ids/{ref}/policies", self.create_service_policy),
            ("GET", "/iam/service-ids/{ref}/api-keys", self.list_service_keys),
            ("POST", "/iam/service-ids/{ref}/api-keys", self.create_service_key),
            ("DELETE", "/iam/policies/{id}", self.delete_policy),
            ("GET", "/iam/api-keys", self.list_own_keys),
            ("POST", "/iam/api-keys", self.create_own_key),
            ("POST", "/iam/api-keys/{ref}/lock", self.lock_key),
            ("POST", "/iam/api-keys/{ref}/unlock", self.unlock_key),
            ("DELETE", "/iam/api-keys/{ref}", self.delete_key),
            ("POST", "/iam/api-key-details", self.api_key_details),
            ("GET", "/cr/regions", self.list_regions),
            ("GET", "/cr/{region}/namespaces", self.list_namespaces),
            ("POST", "/cr/{region}/namespaces", self.add_namespace),
            ("DELETE", "/cr/{region}/namespaces/{name}", self.remove_namespace),
            ("GET", "/cr/{region}/images", self.list_images),
            ("GET", "/cr/{region}/image", self.inspect_image),
            ("DELETE", "/cr/{region}/image", self.remove_image),
            ("POST", "/cr/{region}/image-tags", self.tag_image),
            ("GET", "/cr/{region}/tokens", self.list_tokens),
            ("POST", "/cr/{region}/tokens", self.add_token),
            ("GET", "/cr/{region}/tokens/{id}", self.get_token),
            ("DELETE", "/cr/{region}/tokens/{id}", self.remove_token),
        ]
        defs = [web.route(m, API + path, self._wrap(fn)) for m, path, fn in table]
        defs.append(web.get(API + "/openapi.json", self.openapi))
        self._table = table
        return defs

    def _wrap(self, endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            try:
                principal = self._authenticate(request)
                result = await endpoint(request, principal)
            except IamError as exc:
                return _error(exc.status, exc.code, exc.message)
            except RegistryError as exc:
                return _error(exc.status, exc.code.lower(), exc.message)
            status = 201 if request.method == "POST" else 200
            if result is None:
                return web.Response(status=204)
            return web.json_response(result, status=status, dumps=lambda v: json.dumps(v))

        return handler

    def _authenticate(self, request: web.Request) -> Principal:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        try:
            user, sep, secret = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if scheme.lower() != "basic" or not sep:
            raise Unauthenticated("sign in with HTTP Basic: iamapikey and an API key")
        tried = hashlib.sha256(f"{user}:{secret}".encode()).hexdigest()[:24]
        keys = (f"ip:{request.remote}", f"cred:{tried}")
        if self.limiter.retry_after(*keys) > 0:
            raise Throttled("too many failed sign-ins; try again later")
        principal = (
            self.iam.authenticate_api_key(secret)
            if user == "iamapikey"
            else self.iam.authenticate_password(user, secret)
            if "@" in user
            else None
        )
        if principal is None:
            self.limiter.failed(*keys)
            raise Unauthenticated("invalid credentials")
        return principal

    def _require(
        self,
        principal: Principal,
        action: str,
        region: str | None = None,
        namespace: str | None = None,
        services: tuple[str, ...] = (REGISTRY,),
    ) -> None:
        grants = self.iam.grants(principal)
        if not any(action in allowed_actions(grants, s, region, namespace) for s in services):
            where = f" in {region}" if region else ""
            raise Forbidden(f"you are not allowed to {action}{where}")

    def _admin(self, principal: Principal) -> None:
        self._require(principal, roles.MANAGE_IAM, services=SERVICES)

    def _region(self, request: web.Request) -> str:
        name = request.match_info["region"]
        try:
            return self.regions.get(name).name
        except UnknownDomain:
            raise NotFound(
                f"unknown region {name!r}; valid: {', '.join(self.regions.regions)}"
            ) from None

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise Invalid("the request body must be a JSON object") from None
        if not isinstance(body, dict):
            raise Invalid("the request body must be a JSON object")
        return body

    @staticmethod
    def _text(body: dict[str, Any], key: str, required: bool = True) -> str | None:
        value = body.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or (required and not value.strip()):
            raise Invalid(f"{key} is required and must be a string")
        return value

    # -- IAM -----------------------------------------------------------------

    async def me(self, request: web.Request, p: Principal) -> Any:
        return {"account_id": p.account_id, "kind": p.kind, "id": p.id, "api_key": p.credential_id}

    async def create_account(self, request: web.Request, p: Principal) -> Any:
        """Only administrators of the installation's first account create accounts."""
        self._admin(p)
        if p.account_id != self.iam.default_account():
            raise Forbidden("only the installation's first account creates accounts")
        body = await self._body(request)
        account, created = self.iam.create_account(
            self._text(body, "name") or "", self._text(body, "admin_email") or ""
        )
        return {
            "account_id": account,
            "api_key_id": created.id,
            "apikey": created.secret,
            "notice": PRESERVE_NOTICE,
        }

    async def list_users(self, request: web.Request, p: Principal) -> Any:
        self._require(p, roles.VIEW, services=SERVICES)
        return [_row(u, "id", "email", "created_at") for u in self.iam.users(p.account_id)]

    async def create_user(self, request: web.Request, p: Principal) -> Any:
        self._admin(p)
        body = await self._body(request)
        user = self.iam.create_user(
            p.account_id, self._text(body, "email") or "", self._text(body, "password") or ""
        )
        return _row(user, "id", "email", "created_at")

    async def delete_user(self, request: web.Request, p: Principal) -> Any:
        self._admin(p)
        self.iam.delete_user(p.account_id, request.match_info["ref"])

    async def _create_policy(
        self, request: web.Request, p: Principal, kind: str, subject: str
    ) -> Any:
        self._admin(p)
        body = await self._body(request)
        roles_value = body.get("roles")
        if isinstance(roles_value, list):
            roles_value = ",".join(str(r) for r in roles_value)
        if not isinstance(roles_value, str):
            raise Invalid("roles is required: a list or a comma-separated string")
        policy = self.iam.create_policy(
            p.account_id,
            kind,
            subject,
            roles_value,
            self._text(body, "service_name") or "",
            self._text(body, "region", required=False),
            self._text(body, "resource_type", required=False),
            self._text(body, "resource", required=False),
        )
        return policy_json(policy)

    async def list_user_policies(self, request: web.Request, p: Principal) -> Any:
        self._require(p, roles.VIEW, services=SERVICES)
        user = self.iam.user(p.account_id, request.match_info["ref"])
        return [policy_json(x) for x in self.iam.policies(p.account_id, USER, user.id)]

    async def create_user_policy(self, request: web.Request, p: Principal) -> Any:
        user = self.iam.user(p.account_id, request.match_info["ref"])
        return await self._create_policy(request, p, USER, user.id)

    async def list_service_ids(self, request: web.Request, p: Principal) -> Any:
        self._require(p, roles.VIEW, services=SERVICES)
        return [service_id_json(s) for s in self.iam.service_ids(p.account_id)]

    async def create_service_id(self, request: web.Request, p: Principal) -> Any:
        self._admin(p)
        body = await self._body(request)
        created = self.iam.create_service_id(
            p.account_id, self._text(body, "name") or "", self._text(body, "description", False)
        )
        return service_id_json(created)

    async def get_service_id(self, request: web.Request, p: Principal) -> Any:
        self._require(p, roles.VIEW, services=SERVICES)
        return service_id_json(self.iam.service_id(p.account_id, request.match_info["ref"]))

    async def delete_service_id(self, request: web.Request, p: Principal) -> Any:
        self._admin(p)
        self.iam.delete_service_id(p.account_id, request.match_info["ref"])

    async def list_service_policies(self, request: web.Request, p: Principal) -> Any:
        self._require(p, roles.VIEW, services=SERVICES)
        sid = self.iam.service_id(p.account_id, request.match_info["ref"])
        return [policy_json(x) for x in self.iam.policies(p.account_id, SERVICE_ID, sid.id)]

    async def create_service_policy(self, request: web.Request, p: Principal) -> Any:
        sid = self.iam.service_id(p.account_id, request.match_info["ref"])
        return await self._create_policy(request, p, SERVICE_ID, sid.id)

    async def delete_policy(self, request: web.Request, p: Principal) -> Any:
        self._admin(p)
        self.iam.delete_policy(p.account_id, request.match_info["id"])

    async def _create_key(self, request: web.Request, p: Principal, kind: str, owner: str) -> Any:
        body = await self._body(request)
        created = self.iam.create_api_key(
            p.account_id,
            kind,
            owner,
            self._text(body, "name") or "",
            self._text(body, "description", False),
        )
        key = self.iam.api_key(p.account_id, created.id)
        return {**api_key_json(key), "apikey": created.secret, "notice": PRESERVE_NOTICE}

    async def list_service_keys(self, request: web.Request, p: Principal) -> Any:
        self._require(p, roles.VIEW, services=SERVICES)
        sid = self.iam.service_id(p.account_id, request.match_info["ref"])
        return [api_key_json(k) for k in self.iam.api_keys(p.account_id, SERVICE_ID, sid.id)]

    async def create_service_key(self, request: web.Request, p: Principal) -> Any:
        self._admin(p)
        sid = self.iam.service_id(p.account_id, request.match_info["ref"])
        return await self._create_key(request, p, SERVICE_ID, sid.id)

    async def list_own_keys(self, request: web.Request, p: Principal) -> Any:
        return [api_key_json(k) for k in self.iam.api_keys(p.account_id, p.kind, p.id)]

    async def create_own_key(self, request: web.Request, p: Principal) -> Any:
        if p.kind != USER:
            raise Forbidden("only users create API keys for themselves")
        return await self._create_key(request, p, USER, p.id)

    def _own_or_admin(self, p: Principal, ref: str) -> str:
        key = self.iam.api_key(p.account_id, ref)
        if not (key.owner_kind == p.kind and key.owner_id == p.id):
            self._admin(p)
        return key.id

    async def api_key_details(self, request: web.Request, p: Principal) -> Any:
        """What an API key is, given the key itself: whose, and whether locked (for
        ks diagnose). Keys of other accounts are reported as unknown."""
        self._require(p, roles.VIEW, services=SERVICES)
        body = await self._body(request)
        key = self.iam.describe_api_key(self._text(body, "apikey") or "")
        if key is None or key.account_id != p.account_id:
            return {"exists": False}
        policies = self.iam.policies(p.account_id, key.owner_kind, key.owner_id)
        return {"exists": True, **api_key_json(key), "policies": [policy_json(x) for x in policies]}

    async def lock_key(self, request: web.Request, p: Principal) -> Any:
        key_id = self._own_or_admin(p, request.match_info["ref"])
        return api_key_json(self.iam.set_api_key_locked(p.account_id, key_id, True))

    async def unlock_key(self, request: web.Request, p: Principal) -> Any:
        key_id = self._own_or_admin(p, request.match_info["ref"])
        return api_key_json(self.iam.set_api_key_locked(p.account_id, key_id, False))

    async def delete_key(self, request: web.Request, p: Principal) -> Any:
        key_id = self._own_or_admin(p, request.match_info["ref"])
        self.iam.delete_api_key(p.account_id, key_id)

    # -- container registry --------------------------------------------------

    async def list_regions(self, request: web.Request, p: Principal) -> Any:
        return [
            {"name": r.name, "domain": r.domain, "legacy_domain": r.legacy_domain}
            for r in self.regions.regions.values()
        ]

    async def list_namespaces(self, request: web.Request, p: Principal) -> Any:
        region = self._region(request)
        return [
            _row(n, "name", "region", "created_at")
            for n in self.iam.namespaces(p.account_id, region)
        ]

    async def add_namespace(self, request: web.Request, p: Principal) -> Any:
        region = self._region(request)
        self._require(p, roles.MANAGE_NAMESPACES, region)
        body = await self._body(request)
        namespace = self.iam.add_namespace(p.account_id, region, self._text(body, "name") or "")
        return _row(namespace, "name", "region", "created_at")

    async def remove_namespace(self, request: web.Request, p: Principal) -> Any:
        region = self._region(request)
        name = request.match_info["name"]
        self._require(p, roles.MANAGE_NAMESPACES, region, name)
        self.iam.remove_namespace(p.account_id, region, name)
        self.manifests.drop_namespace(region, name)

    async def list_images(self, request: web.Request, p: Principal) -> Any:
        region = self._region(request)
        grants = self.iam.grants(p)
        visible = [
            n.name
            for n in self.iam.namespaces(p.account_id, region)
            if roles.LIST in allowed_actions(grants, REGISTRY, region, n.name)
        ]
        return [
            {
                "repository": i.repository,
                "tag": i.tag,
                "digest": i.digest,
                "namespace": i.namespace,
                "created": _plain(i.created),
                "size": i.size,
                "media_type": i.media_type,
                "security_status": "Not scanned",
            }
            for i in self.manifests.images(region, visible)
        ]

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

    def _may(self, p: Principal, action: str, region: str, namespace: str) -> None:
        if self.iam.namespace_owner(region, namespace) != p.account_id:
            raise NotFound(f"namespace {namespace!r} not found in {region}")
        self._require(p, action, region, namespace)

    async def inspect_image(self, request: web.Request, p: Principal) -> Any:
        region = self._region(request)
        repo, reference, namespace = self._image(region, request.query.get("image"))
        self._may(p, roles.PULL, region, namespace)
        manifest = self.manifests.get(repo, reference, [])
        return {
            "repository": repo.name,
            "reference": reference,
            "digest": manifest.digest,
            "media_type": manifest.media_type,
            "manifest": json.loads(manifest.content),
        }

    async def remove_image(self, request: web.Request, p: Principal) -> Any:
        """Like ``cr image-rm``: the image's digest goes, with every tag on it."""
        region = self._region(request)
        repo, reference, namespace = self._image(region, request.query.get("image"))
        self._may(p, roles.DELETE, region, namespace)
        digest = self.manifests.get(repo, reference, []).digest
        self.manifests.delete(repo, digest)
        return {"deleted": f"{repo.name}@{digest}"}

    async def tag_image(self, request: web.Request, p: Principal) -> Any:
        region = self._region(request)
        body = await self._body(request)
        source, reference, source_ns = self._image(region, self._text(body, "source"))
        target, tag, target_ns = self._image(region, self._text(body, "target"))
        self._may(p, roles.PULL, region, source_ns)
        self._may(p, roles.TAG, region, target_ns)
        manifest = self.manifests.get(source, reference, [])
        if target != source:
            self.manifests.link_blobs(target, source, manifest)
        self.manifests.put(target, tag, manifest.content, manifest.media_type)
        return {"tagged": f"{target.name}:{tag}", "digest": manifest.digest}

    async def list_tokens(self, request: web.Request, p: Principal) -> Any:
        region = self._region(request)
        self._require(p, roles.MANAGE_TOKENS, region)
        return [
            _row(t, "id", "description", "readwrite", "expires_at", "created_at")
            for t in self.iam.registry_tokens(p.account_id, region)
        ]

    async def add_token(self, request: web.Request, p: Principal) -> Any:
        region = self._region(request)
        self._require(p, roles.MANAGE_TOKENS, region)
        if self.regions.get(region).legacy_domain is None:
            raise Invalid(f"{region} has no legacy domain, where registry tokens work")
        body = await self._body(request)
        created = self.iam.add_registry_token(
            p.account_id,
            region,
            self._text(body, "description", False),
            bool(body.get("readwrite")),
            bool(body.get("non_expiring")),
        )
        return {"id": created.id, "token": created.secret}

    async def get_token(self, request: web.Request, p: Principal) -> Any:
        region = self._region(request)
        self._require(p, roles.MANAGE_TOKENS, region)
        token_id = request.match_info["id"]
        return {"id": token_id, "token": self.iam.registry_token_value(p.account_id, token_id)}

    async def remove_token(self, request: web.Request, p: Principal) -> Any:
        region = self._region(request)
        self._require(p, roles.MANAGE_TOKENS, region)
        self.iam.remove_registry_token(p.account_id, request.match_info["id"])

    # -- the OpenAPI document ------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        paths: dict[str, dict[str, Any]] = {}
        for method, path, fn in self._table:
            params = [
                {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
                for part in path.split("/")
                if part.startswith("{")
            ]
            paths.setdefault(API + path, {})[method.lower()] = {
                "operationId": fn.__name__,
                "summary": fn.__name__.replace("_", " "),
                "security": [{"basic": []}],
                "parameters": params,
                "responses": {
                    "200": {"description": "OK"},
                    "201": {"description": "Created"},
                    "204": {"description": "Done"},
                    "default": {
                        "description": "Error",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                },
            }
        document = {
            "openapi": "3.1.0",
            "info": {"title": "Moorage management API", "version": "1"},
            "paths": paths,
            "components": {
                "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
                "schemas": {
                    "Error": {
                        "type": "object",
                        "properties": {
                            "error": {
                                "type": "object",
                                "properties": {
                                    "code": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            }
                        },
                    }
                },
            },
        }
        return web.json_response(document)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
