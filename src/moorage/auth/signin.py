"""Signing in, for every way in: the token endpoint, the management API and
the pull check.

Identities are normalised here and only here, so ``'ALICE@a.test\\t'`` is
``alice@a.test`` for the password check and for the throttle alike. Each
attempt is counted against the client's address and the identity before any
work is done, and a failure costs the same work as a success, so neither
timing nor spelling tells an attacker which identities exist. Password hashing
runs on a small pool of its own threads: it never stalls the event loop, and a
flood of sign-ins cannot take the threads uploads hash with."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum

from moorage.auth.ratelimit import FailureLimiter, MemoryThrottle, Throttle
from moorage.iam.service import IamService, Principal, normalize_identity

log = logging.getLogger("moorage.auth")

API_KEY_USER = "iamapikey"
REGISTRY_TOKEN_USER = "token"
# A refresh token as a password: what moorage-credential-provider hands the kubelet.
REFRESH_TOKEN_USER = "iamrefreshtoken"
MAX_SECRET = 4096


class Way(Enum):
    """Where an attempt came in, which decides the credentials it may use."""

    REGISTRY = "registry"  # a regional or global domain's token endpoint
    LEGACY = "legacy"  # a legacy domain's token endpoint: registry tokens only
    MANAGEMENT = "management"  # /api/v1: API keys and passwords


class SignInFailed(Exception):
    def __init__(self, status: int, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """User name and secret of an ``Authorization: Basic`` header, if it is one."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, sep, secret = (
            base64.b64decode(value.strip(), validate=True).decode().partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (username, secret) if sep else None


def address_key(client: str | None) -> str:
    """Throttle key of a client address: an IPv6 client is its /64, which one
    host usually holds whole."""
    try:
        address = ipaddress.ip_address((client or "").strip("[]"))
    except ValueError:
        return f"ip:{client}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{address}"


@dataclass(frozen=True)
class Attempt:
    username: str  # normalised
    secret: str

    @property
    def is_password(self) -> bool:
        return self.username not in (API_KEY_USER, REGISTRY_TOKEN_USER, REFRESH_TOKEN_USER)

    def throttle_keys(self, client: str | None) -> tuple[str, ...]:
        if self.is_password:
            identity = f"user:{self.username}"
        else:
            identity = "cred:" + hashlib.sha256(self.secret.encode()).hexdigest()[:32]
        return (address_key(client), identity)

    @property
    def loggable(self) -> str:
        return "<user>" if self.is_password else self.username


class SignIn:
    """``refresh`` turns a refresh token into the principal it stands for (None
    when invalid or revoked); it is the token service's, given here so that
    refresh tokens are throttled like every other credential."""

    def __init__(
        self,
        iam: IamService,
        limiter: FailureLimiter | Throttle,
        refresh: Callable[[str, str], Principal | None] | None = None,
        hashing_threads: int = 2,
        tarpit: float = 1.0,
    ) -> None:
        self.iam = iam
        # A bare FailureLimiter counts in this process's memory.
        self.limiter: Throttle = (
            MemoryThrottle(limiter) if isinstance(limiter, FailureLimiter) else limiter
        )
        self.refresh = refresh
        # A throttled attempt is answered only after this pause: a flood from one
        # address then costs the server a sleeping coroutine per connection, not
        # the event loop's time.
        self.tarpit = tarpit
        self._hashing = ThreadPoolExecutor(hashing_threads, thread_name_prefix="signin")

    async def authenticate(
        self,
        client: str | None,
        username: str,
        secret: str,
        way: Way,
        region: str | None = None,
        audience: str | None = None,
    ) -> Principal:
        """The principal behind a credential, or SignInFailed (401, or 429 with
        the seconds to wait). ``region`` is the legacy domain's, for registry
        tokens; ``audience`` the domain's service, for refresh tokens."""
        attempt = Attempt(normalize_identity(username), secret)
        keys = attempt.throttle_keys(client)
        reservation = await self.limiter.reserve(*keys)
        wait = reservation.wait
        if wait > 0:
            await asyncio.sleep(min(wait, self.tarpit))
            raise SignInFailed(429, "too many failed sign-ins; try again later", wait)
        principal = None
        problem = self._refused(attempt, way)
        if problem is None and len(secret) <= MAX_SECRET:
            loop = asyncio.get_running_loop()
            principal = await loop.run_in_executor(
                self._hashing, self._check, attempt, region, audience
            )
        if principal is None:
            log.info("failed sign-in (%s) from %s as %s", way.value, client, attempt.loggable)
            raise SignInFailed(401, problem or "invalid credentials")
        await self.limiter.forgive(reservation)
        return principal

    @staticmethod
    def _refused(attempt: Attempt, way: Way) -> str | None:
        """Why this kind of credential cannot sign in this way, if it cannot."""
        if way is Way.LEGACY and attempt.username not in (REGISTRY_TOKEN_USER, REFRESH_TOKEN_USER):
            return (
                "this is a legacy domain: it accepts only registry tokens "
                f"(username '{REGISTRY_TOKEN_USER}')"
            )
        if way is not Way.LEGACY and attempt.username == REGISTRY_TOKEN_USER:
            return "registry tokens work only on their region's legacy domain"
        if way is Way.MANAGEMENT and attempt.username == REFRESH_TOKEN_USER:
            return "refresh tokens do not sign in to the management API"
        if "\x00" in attempt.username:
            return "invalid credentials"
        if attempt.is_password and "@" not in attempt.username:
            return "sign in as iamapikey with an API key, or with an email and password"
        return None

    def _check(
        self, attempt: Attempt, region: str | None, audience: str | None
    ) -> Principal | None:
        if attempt.username == API_KEY_USER:
            return self.iam.authenticate_api_key(attempt.secret)
        if attempt.username == REGISTRY_TOKEN_USER:
            return self.iam.authenticate_registry_token(attempt.secret, region or "")
        if attempt.username == REFRESH_TOKEN_USER:
            return self.refresh(attempt.secret, audience or "") if self.refresh else None
        return self.iam.authenticate_password(attempt.username, attempt.secret)
