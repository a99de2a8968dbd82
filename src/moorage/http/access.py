"""Who may do what on the registry API.

``TokenAccess`` is the default: every request carries a bearer token from the
token endpoint, verified with the public signing keys alone. ``OpenAccess``
lets everyone do everything; it must be asked for (``--auth none``) and the
server says so in its log."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from moorage.auth.tokens import InvalidToken, TokenService
from moorage.http.request import Request
from moorage.regions import PublicUrl, Target
from moorage.registry.errors import Unauthorized

PULL = "pull"
PUSH = "push"
DELETE = "delete"
CATALOG = "catalog"
# How long after its token expired the owner of an upload session may go on
# sending its bytes: a push that outlives its token still completes.
UPLOAD_GRACE = 24 * 3600


@dataclass(frozen=True)
class Identity:
    subject: str | None  # None: anonymous or open access
    account: str | None
    unrestricted: bool = False  # open access: no account filter applies


class AccessPolicy(Protocol):
    # Whether check() wants the owner of an upload session (a database look-up).
    binds_uploads: bool

    def check(
        self,
        request: Request,
        target: Target,
        repository: str | None,
        actions: tuple[str, ...],
        session_owner: str | None = None,
    ) -> Identity:
        """The caller's identity, or a RegistryError (401) when it may not proceed."""


class OpenAccess:
    """Everyone may do everything: for a trusted network or local development only."""

    binds_uploads = False

    def check(
        self,
        request: Request,
        target: Target,
        repository: str | None,
        actions: tuple[str, ...],
        session_owner: str | None = None,
    ) -> Identity:
        return Identity(None, None, unrestricted=True)


class TokenAccess:
    binds_uploads = True

    def __init__(self, tokens: TokenService, public_url: PublicUrl) -> None:
        self.tokens = tokens
        self.public_url = public_url

    def challenge(
        self,
        request: Request,
        target: Target,
        repository: str | None,
        actions: tuple[str, ...],
        error: str | None = None,
    ) -> Unauthorized:
        # The realm comes from configuration: a client is never sent where its
        # (or an attacker's) Host header pointed.
        parts = [f'realm="{self.public_url.realm(target)}"', f'service="{target.service}"']
        if repository is not None and actions:
            parts.append(f'scope="repository:{repository}:{",".join(actions)}"')
        elif actions == (CATALOG,):
            parts.append('scope="registry:catalog:*"')
        if error:
            parts.append(f'error="{error}"')
        detail = (
            [{"Type": "repository", "Name": repository, "Action": a} for a in actions]
            if repository
            else None
        )
        return Unauthorized(
            "authentication required",
            detail=detail,
            headers={"WWW-Authenticate": "Bearer " + ",".join(parts)},
        )

    def check(
        self,
        request: Request,
        target: Target,
        repository: str | None,
        actions: tuple[str, ...],
        session_owner: str | None = None,
    ) -> Identity:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self.challenge(request, target, repository, actions)
        token = token.strip()
        try:
            claims = self.tokens.verify(token, target.service)
        except InvalidToken:
            expired = self._expired_session_token(token, target, session_owner)
            if expired is None:
                raise self.challenge(
                    request, target, repository, actions, "invalid_token"
                ) from None
            return _identity(expired)
        if _grants(claims, repository, actions) or (
            session_owner is not None and claims.get("sub") == session_owner
        ):
            return _identity(claims)
        raise self.challenge(request, target, repository, actions, "insufficient_scope")

    def _expired_session_token(
        self, token: str, target: Target, session_owner: str | None
    ) -> dict[str, Any] | None:
        if session_owner is None:
            return None
        try:
            claims = self.tokens.verify(token, target.service, allow_expired=True)
        except InvalidToken:
            return None
        if claims.get("sub") != session_owner or claims["exp"] < time.time() - UPLOAD_GRACE:
            return None
        return claims


def _identity(claims: dict[str, Any]) -> Identity:
    subject = claims.get("sub")
    return Identity(None if subject == "anonymous" else subject, claims.get("acct"))


def _grants(claims: dict[str, Any], repository: str | None, actions: tuple[str, ...]) -> bool:
    if not actions:
        return True  # the base endpoint only needs a valid token
    for entry in claims.get("access") or []:
        if actions == (CATALOG,) and repository is None:
            if entry.get("type") == "registry" and entry.get("name") == "catalog":
                return True
        elif entry.get("type") == "repository" and entry.get("name") == repository:
            granted = set(entry.get("actions") or [])
            if "*" in granted or set(actions) <= granted:
                return True
    return False
