"""The token endpoint of the Docker token protocol (the ``realm`` of every
challenge): GET with Basic credentials, and the OAuth2 POST form.

Usernames: ``iamapikey`` with an API key; ``token`` with a deprecated
registry token, on legacy domains only; or a user's email with a password.
No credentials: an anonymous token, which the global registry's public
namespaces honour for pulls. Failures are throttled per client and per
credential, and no secret reaches a log or an error message."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from moorage.auth.ratelimit import FailureLimiter
from moorage.auth.tokens import InvalidToken, TokenService, parse_scopes
from moorage.http.request import Request
from moorage.iam.service import IamService, Principal
from moorage.regions import Target

log = logging.getLogger("moorage.auth")

API_KEY_USER = "iamapikey"
REGISTRY_TOKEN_USER = "token"
# A refresh token as a password: what moorage-credential-provider hands the kubelet.
REFRESH_TOKEN_USER = "iamrefreshtoken"


@dataclass(frozen=True)
class TokenReply:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 429: "TOOMANYREQUESTS"}


def _error(status: int, message: str, *headers: tuple[str, str]) -> TokenReply:
    code = _CODES.get(status, "UNSUPPORTED")
    return TokenReply(status, {"errors": [{"code": code, "message": message}]}, headers)


def _basic(header: str | None) -> tuple[str, str] | None:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, sep, password = (
            base64.b64decode(value.strip(), validate=True).decode().partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (username, password) if sep else None


class TokenEndpoint:
    def __init__(self, tokens: TokenService, iam: IamService, limiter: FailureLimiter) -> None:
        self.tokens = tokens
        self.iam = iam
        self.limiter = limiter

    def _authenticate(self, target: Target, username: str, secret: str) -> Principal | None:
        if target.legacy:
            if username != REGISTRY_TOKEN_USER:
                return None
            return self.iam.authenticate_registry_token(secret, target.region.name)
        if username == REGISTRY_TOKEN_USER:
            return None  # registry tokens work only on their legacy domain
        if username == API_KEY_USER:
            return self.iam.authenticate_api_key(secret)
        if username == REFRESH_TOKEN_USER:
            try:
                return self.tokens.principal_from_refresh(secret, target)
            except InvalidToken:
                return None
        if "@" in username:
            return self.iam.authenticate_password(username, secret)
        return None

    def _sign_in(
        self, request: Request, target: Target, credentials: tuple[str, str] | None
    ) -> TokenReply | Principal | None:
        if credentials is None:
            return None
        username, secret = credentials
        # Throttle keys: the client address, and a digest of the credential tried.
        tried = hashlib.sha256(f"{username}:{secret}".encode()).hexdigest()[:24]
        keys = [f"ip:{request.client}", f"cred:{tried}"]
        if username not in (API_KEY_USER, REGISTRY_TOKEN_USER, REFRESH_TOKEN_USER):
            keys.append(f"user:{username.lower()}")  # password guessing against one user
        wait = self.limiter.retry_after(*keys)
        if wait > 0:
            return _error(
                429,
                "too many failed sign-ins; try again later",
                ("Retry-After", str(int(wait) + 1)),
            )
        principal = self._authenticate(target, username, secret)
        if principal is None:
            self.limiter.failed(*keys)
            log.info(
                "failed sign-in on %s from %s as %s",
                target.service,
                request.client,
                username
                if username in (API_KEY_USER, REGISTRY_TOKEN_USER, REFRESH_TOKEN_USER)
                else "<user>",
            )
            if target.legacy and username != REGISTRY_TOKEN_USER:
                return _error(
                    401,
                    f"{target.service} is a legacy domain: it accepts only registry "
                    f"tokens (username '{REGISTRY_TOKEN_USER}')",
                )
            return _error(401, "invalid credentials")
        return principal

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
            signed_in = self._sign_in(request, target, _basic(request.header("authorization")))
            if isinstance(signed_in, TokenReply):
                return signed_in
            scopes = parse_scopes(request.query_all("scope"))
            offline = (request.query("offline_token") or "").lower() == "true"
            return TokenReply(200, self.tokens.issue(signed_in, target, scopes, offline))

        form = await request.form()

        def field(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        bad = self._check_service(target, field("service"))
        if bad:
            return bad
        scopes = parse_scopes(form.get("scope", []))
        grant_type = field("grant_type")
        if grant_type == "password":
            signed_in = self._sign_in(
                request, target, (field("username") or "", field("password") or "")
            )
            if isinstance(signed_in, TokenReply):
                return signed_in
            return TokenReply(200, self.tokens.issue(signed_in, target, scopes, offline=True))
        if grant_type == "refresh_token":
            try:
                principal = self.tokens.principal_from_refresh(field("refresh_token") or "", target)
            except InvalidToken:
                self.limiter.failed(f"ip:{request.client}")
                return _error(401, "invalid or revoked refresh token")
            reply = self.tokens.issue(principal, target, scopes, offline=False)
            reply["refresh_token"] = field("refresh_token")
            return TokenReply(200, reply)
        return _error(400, "grant_type must be password or refresh_token")
