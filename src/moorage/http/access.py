"""Who may do what on the registry API.

``TokenAccess`` is the default: every request carries a bearer token from the
token endpoint, verified with the public signing keys alone. ``OpenAccess``
lets everyone do everything; it must be asked for (``--auth none``) and the
server says so in its log."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
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
    claims: dict[str, Any] | None = None  # the verified token's, for decisions made later
    unrestricted: bool = False  # open access: no account filter applies
    # The account that owns the repository's namespace, as the decision found it:
    # writes commit only if it still does.
    account: str | None = None


class AccessPolicy(Protocol):
    # Whether check() wants the owner of an upload session (a database look-up).
    binds_uploads: bool

    async def check(
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

    async def check(
        self,
        request: Request,
        target: Target,
        repository: str | None,
        actions: tuple[str, ...],
        session_owner: str | None = None,
    ) -> Identity:
        return Identity(None, unrestricted=True)


class TokenAccess:
    """``owner_of(region, namespace)`` is the account that owns a namespace now
    (awaited: it may read the database, off the event loop). A token's grant on
    a repository holds only while one of the accounts it was issued for still
    owns the namespace: a namespace removed, and perhaps claimed by another
    account, voids every earlier grant on it."""

    binds_uploads = True

    def __init__(
        self,
        tokens: TokenService,
        public_url: PublicUrl,
        owner_of: Callable[[str, str], Awaitable[str | None]],
    ) -> None:
        self.tokens = tokens
        self.public_url = public_url
        self.owner_of = owner_of

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

    async def check(
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
        expired = False
        try:
            claims = await self.tokens.verify_async(token, target.service)
        except InvalidToken:
            session_claims = await self._session_token(token, target, session_owner)
            if session_claims is None:
                raise self.challenge(
                    request, target, repository, actions, "invalid_token"
                ) from None
            claims, expired = session_claims, True
        if claims.get("typ") == "refresh":  # a credential for the token endpoint only
            raise self.challenge(request, target, repository, actions, "invalid_token")
        account = None
        if repository is not None:
            owner = await self.owner_of(target.region.name, repository.split("/", 1)[0])
            public = target.region.is_global and owner is not None and set(actions) <= {PULL}
            if not public:
                if owner is None or owner not in (claims.get("accts") or ()):
                    error = "invalid_token" if expired else "insufficient_scope"
                    raise self.challenge(request, target, repository, actions, error)
                account = owner
        if not expired and _grants(claims, repository, actions):
            return _identity(claims, account)
        # Only an upload session's own routes get here with its owner's token: the
        # push may outlive the token, but not the principal, its key or its rights.
        if (
            repository is not None
            and session_owner is not None
            and claims.get("sub") == session_owner
            and await self.tokens.db.run(
                self.tokens.reauthorize, claims, target, repository, actions
            )
        ):
            return _identity(claims, account)
        raise self.challenge(
            request,
            target,
            repository,
            actions,
            "invalid_token" if expired else "insufficient_scope",
        )

    async def _session_token(
        self, token: str, target: Target, session_owner: str | None
    ) -> dict[str, Any] | None:
        """An expired token's claims, still good for finishing its owner's upload
        within the grace period."""
        if session_owner is None:
            return None
        try:
            claims = await self.tokens.verify_async(token, target.service, allow_expired=True)
        except InvalidToken:
            return None
        if claims.get("sub") != session_owner or claims["exp"] < time.time() - UPLOAD_GRACE:
            return None
        return claims


def _identity(claims: dict[str, Any], account: str | None = None) -> Identity:
    subject = claims.get("sub")
    return Identity(None if subject == "anonymous" else subject, claims, account=account)


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
