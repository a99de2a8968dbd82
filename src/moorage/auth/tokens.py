"""The Docker registry token protocol: scopes in, ES256 JWTs out.

A token grants exactly the intersection of what was asked and what IAM
allows; a partial grant is not an error. Access tokens are short-lived;
refresh tokens let a client (or a long push) get new ones, and every refresh
checks again that the credential behind it is neither locked nor deleted."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from moorage.auth.keys import KeyRing
from moorage.iam.roles import DELETE, LIST, PULL, PUSH, REGISTRY
from moorage.iam.service import IamService, Principal
from moorage.metadata.changes import KEYS_TOPIC
from moorage.metadata.database import DatabaseThreads
from moorage.metadata.iam_store import SubjectKind
from moorage.oci.names import NameError_, validate_name
from moorage.regions import Target

ISSUER = "moorage"
LEEWAY = 5  # seconds of clock skew tolerated
VERIFIED_CACHE_SIZE = 10_000
_SCOPE = re.compile(r"^([a-z0-9]+)(?:\([a-z0-9]+\))?:(.+):([a-z*,]*)\Z")
REGISTRY_ACTIONS = {PULL: PULL, PUSH: PUSH, DELETE: DELETE}


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, value: str) -> Scope | None:
        match = _SCOPE.match(value.strip())
        if not match:
            return None
        actions = tuple(a for a in match.group(3).split(",") if a)
        return cls(match.group(1), match.group(2), actions)

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scopes(values: list[str]) -> list[Scope]:
    """Scopes as clients send them: repeated parameters, or space-separated (OAuth2 form)."""
    scopes = []
    for value in values:
        for part in value.split():
            scope = Scope.parse(part)
            if scope is not None:
                scopes.append(scope)
    return scopes


class TokenService:
    def __init__(
        self,
        keys: KeyRing,
        iam: IamService,
        lifetime: int = 300,
        refresh_lifetime: int = 86_400,
        db: DatabaseThreads | None = None,
    ) -> None:
        self.keys = keys
        self.iam = iam
        self.lifetime = lifetime
        self.refresh_lifetime = refresh_lifetime
        self.db = db or DatabaseThreads(2)
        # Clients reuse a token for every request of a pull or push; checking its
        # ES256 signature once, not per request, more than doubles the rate. An
        # entry lives until its token expires, or until signing keys change
        # anywhere (a retired key's tokens must stop working).
        self._verified: dict[str, dict[str, Any]] = {}

    def changed(self, topic: str | None) -> None:
        """A change feed subscriber (after the key ring's): keys were rotated or retired."""
        if topic is None or topic == KEYS_TOPIC:
            self._verified = {}

    # -- decisions -----------------------------------------------------------

    def grant(
        self, principal: Principal | None, target: Target, scopes: list[Scope]
    ) -> list[dict[str, Any]]:
        region = target.region
        grants = self.iam.grants(principal) if principal is not None else []
        access: list[dict[str, Any]] = []
        for scope in scopes:
            if scope.type == "registry" and scope.name == "catalog":
                if principal is not None and any(
                    LIST in g.actions
                    and g.service_name == REGISTRY
                    and g.region in (None, region.name)
                    for g in grants
                ):
                    access.append({"type": "registry", "name": "catalog", "actions": ["*"]})
                continue
            if scope.type != "repository":
                continue
            try:
                namespace = validate_name(scope.name)
            except NameError_:
                continue
            wanted = set(REGISTRY_ACTIONS) if "*" in scope.actions else set(scope.actions)
            owner = self.iam.namespace_owner(region.name, namespace)
            granted: set[str] = set()
            if owner is not None and region.is_global:
                granted.add(PULL)  # the global registry's namespaces are public
            if principal is not None:
                allowed = self.iam.registry_actions(
                    principal, region.name, namespace, owner, grants
                )
                granted |= {a for a, needs in REGISTRY_ACTIONS.items() if needs in allowed}
            actions = sorted(granted & wanted)
            if actions:
                access.append({"type": "repository", "name": scope.name, "actions": actions})
        return access

    def reauthorize(
        self, claims: dict[str, Any], target: Target, repository: str, actions: tuple[str, ...]
    ) -> bool:
        """Whether the principal a token was issued to may still do ``actions`` on
        ``repository`` right now: it exists, its credential is neither locked nor
        deleted, and IAM still grants the actions. For the rare request that
        leans on an upload session rather than on its token (a push that outlived
        its token); ordinary requests trust the token until it expires."""
        principal = principal_of(claims)
        if principal is None or not self.iam.credential_active(principal):
            return False
        granted = self.grant(principal, target, [Scope("repository", repository, actions)])
        return bool(granted) and set(actions) <= set(granted[0]["actions"])

    # -- issuing -------------------------------------------------------------

    def _sign(self, claims: dict[str, Any]) -> str:
        key = self.keys.current()
        return jwt.encode(claims, key.private, algorithm="ES256", headers={"kid": key.kid})

    def issue(
        self, principal: Principal | None, target: Target, scopes: list[Scope], offline: bool
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": target.service,
            "sub": principal.id if principal else "anonymous",
            "iat": now,
            "nbf": now - 5,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
            "access": self.grant(principal, target, scopes),
        }
        if principal is not None:
            claims.update(principal_claims(principal))
        token = self._sign(claims)
        reply: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": self.lifetime,
            "issued_at": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        }
        if offline and principal is not None:
            reply["refresh_token"] = self._sign(
                {
                    "iss": ISSUER,
                    "aud": target.service,
                    "sub": principal.id,
                    "typ": "refresh",
                    "iat": now,
                    "exp": now + self.refresh_lifetime,
                    "jti": uuid.uuid4().hex,
                    **principal_claims(principal),
                }
            )
        return reply

    def issue_pull_only(
        self, target: Target, repository: str, account: str, subject: str, lifetime: int = 300
    ) -> str:
        """A token that pulls one repository and nothing else, for a process that is
        no principal (a scanner adapter the Advisor asks to read an image):
        ``account`` must own the repository's namespace, as for any token, and it
        cannot be refreshed. ``lifetime`` in seconds, at most ten minutes."""
        now = int(time.time())
        return self._sign(
            {
                "iss": ISSUER,
                "aud": target.service,
                "sub": subject,
                "iat": now,
                "nbf": now - 5,
                "exp": now + max(1, min(lifetime, 600)),
                "jti": uuid.uuid4().hex,
                "access": [{"type": "repository", "name": repository, "actions": [PULL]}],
                "accts": [account],
            }
        )

    def principal_from_refresh(self, token: str, audience: str) -> Principal | None:
        """The principal a refresh token stands for, if its credential still works."""
        try:
            claims = self.verify(token, audience)
        except InvalidToken:
            return None
        principal = principal_of(claims) if claims.get("typ") == "refresh" else None
        if principal is None or not self.iam.credential_active(principal):
            return None
        return principal

    # -- verifying -----------------------------------------------------------

    def _cached(self, token: str, audience: str, allow_expired: bool) -> dict[str, Any] | None:
        cached = self._verified.get(token)
        fresh = cached is not None and (allow_expired or cached["exp"] + LEEWAY > time.time())
        if cached is not None and fresh and cached.get("aud") == audience:
            return cached
        return None

    async def verify_async(
        self, token: str, audience: str, *, allow_expired: bool = False
    ) -> dict[str, Any]:
        """``verify`` for the event loop: a key this process has not heard of
        yet (made by another replica a moment ago) is looked up in a worker
        thread, never on the loop."""
        cached = self._cached(token, audience, allow_expired)
        if cached is not None:
            return cached
        try:
            kid = str(jwt.get_unverified_header(token).get("kid", ""))
        except jwt.PyJWTError as exc:
            raise InvalidToken(type(exc).__name__) from exc
        if not self.keys.knows(kid):
            await self.db.run(self.keys.fetch, kid)
        return self.verify(token, audience, allow_expired=allow_expired)

    def verify(self, token: str, audience: str, *, allow_expired: bool = False) -> dict[str, Any]:
        """The claims of a valid token, or InvalidToken. Blocks on the key
        store when the token names a key this process does not know."""
        cached = self._cached(token, audience, allow_expired)
        if cached is not None:
            return cached
        claims = self._verify(token, audience, allow_expired)
        if not allow_expired:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        return claims

    def _verify(self, token: str, audience: str, allow_expired: bool) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.public_key(str(header.get("kid", "")))
            if key is None:
                raise InvalidToken("unknown signing key")
            return jwt.decode(
                token,
                key,
                algorithms=["ES256"],
                audience=audience,
                issuer=ISSUER,
                leeway=LEEWAY,
                options={"verify_exp": not allow_expired, "require": ["exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(type(exc).__name__) from exc


def principal_claims(principal: Principal) -> dict[str, Any]:
    """What a token says of the principal it was issued to: enough to check
    again later whether that principal still exists and may act."""
    return {
        "kind": principal.kind.value,
        "accts": sorted(principal.accounts),
        "cred": principal.credential_id,
        "rw": principal.readwrite,
        "region": principal.region,
    }


def principal_of(claims: dict[str, Any]) -> Principal | None:
    try:
        return Principal(
            SubjectKind(claims["kind"]),
            str(claims["sub"]),
            frozenset(str(a) for a in claims["accts"]),
            claims.get("cred"),
            bool(claims.get("rw")),
            claims.get("region"),
        )
    except (KeyError, TypeError, ValueError):
        return None
