"""The token endpoint of the Docker token protocol (the ``realm`` of every
challenge): GET with Basic credentials, and the OAuth2 POST form.

Usernames: ``iamapikey`` with an API key; ``token`` with a deprecated
registry token, on legacy domains only; ``iamrefreshtoken`` with a refresh
token; or a user's email with a password. No credentials: an anonymous token,
which the global registry's public namespaces honour for pulls. Signing in,
throttling included, is ``moorage.auth.signin``'s; no secret reaches a log or
an error message."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from moorage.auth.signin import (
    REFRESH_TOKEN_USER,
    SignIn,
    SignInFailed,
    Way,
    basic_credentials,
)
from moorage.auth.tokens import Scope, TokenService, parse_scopes
from moorage.http.request import Request
from moorage.iam.service import Principal
from moorage.regions import Target


@dataclass(frozen=True)
class TokenReply:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


_CODES = {400: "UNSUPPORTED", 401: "UNAUTHORIZED", 403: "DENIED", 429: "TOOMANYREQUESTS"}


def _error(status: int, message: str, *headers: tuple[str, str]) -> TokenReply:
    code = _CODES.get(status, "UNSUPPORTED")
    return TokenReply(status, {"errors": [{"code": code, "message": message}]}, headers)


# Clients ask for one to three scopes (a pull, a push, a mount's source); each
# costs a look-up, so a request may name only a few.
MAX_SCOPES = 16


def _too_many_scopes() -> TokenReply:
    return _error(400, f"a token request may name at most {MAX_SCOPES} scopes")


class TokenEndpoint:
    def __init__(self, tokens: TokenService, signin: SignIn) -> None:
        self.tokens = tokens
        self.signin = signin

    async def _sign_in(
        self, request: Request, target: Target, credentials: tuple[str, str] | None
    ) -> TokenReply | Principal | None:
        if credentials is None:
            return None
        username, secret = credentials
        try:
            return await self.signin.authenticate(
                request.client,
                username,
                secret,
                Way.LEGACY if target.legacy else Way.REGISTRY,
                region=target.region.name,
                audience=target.service,
            )
        except SignInFailed as exc:
            if exc.status == 429:
                return _error(429, exc.message, ("Retry-After", str(int(exc.retry_after) + 1)))
            return _error(exc.status, exc.message)

    async def _issue(
        self, principal: Principal | None, target: Target, scopes: list[Scope], offline: bool
    ) -> dict[str, Any]:
        """Deciding the grants reads IAM: off the event loop."""
        return await asyncio.to_thread(self.tokens.issue, principal, target, scopes, offline)

    def _check_service(self, target: Target, service: str | None) -> TokenReply | None:
        if service and service != target.service:
            # The client's value is not echoed back.
            return _error(400, f"this token endpoint serves {target.service} only")
        return None

    async def handle(self, request: Request, target: Target) -> TokenReply:
        if request.method == "GET":
            bad = self._check_service(target, request.query("service"))
            if bad:
                return bad
            signed_in = await self._sign_in(
                request, target, basic_credentials(request.header("authorization"))
            )
            if isinstance(signed_in, TokenReply):
                return signed_in
            scopes = parse_scopes(request.query_all("scope"))
            if len(scopes) > MAX_SCOPES:
                return _too_many_scopes()
            offline = (request.query("offline_token") or "").lower() == "true"
            return TokenReply(200, await self._issue(signed_in, target, scopes, offline))

        form = await request.form()

        def field(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        bad = self._check_service(target, field("service"))
        if bad:
            return bad
        scopes = parse_scopes(form.get("scope", []))
        if len(scopes) > MAX_SCOPES:
            return _too_many_scopes()
        grant_type = field("grant_type")
        if grant_type == "password":
            signed_in = await self._sign_in(
                request, target, (field("username") or "", field("password") or "")
            )
            if isinstance(signed_in, TokenReply):
                return signed_in
            return TokenReply(200, await self._issue(signed_in, target, scopes, True))
        if grant_type == "refresh_token":
            refresh_token = field("refresh_token") or ""
            principal = await self._sign_in(request, target, (REFRESH_TOKEN_USER, refresh_token))
            if isinstance(principal, TokenReply):
                return principal
            reply = await self._issue(principal, target, scopes, False)
            reply["refresh_token"] = refresh_token
            return TokenReply(200, reply)
        return _error(400, "grant_type must be password or refresh_token")
