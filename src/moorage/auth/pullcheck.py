"""Whether a credential may pull an image from a Moorage domain, and if not,
why and what fixes it: the verdict ``ks diagnose`` shows for each container.

The credential is checked here, where it was issued, so diagnosis never has to
send it to a registry host; a failed check counts against the same throttle as
any sign-in, so this is no faster an oracle than the token endpoint. What IAM
knows of the credential (its name, owner and policies) is told only to a
caller of the same account who may view IAM."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from moorage.auth.signin import (
    API_KEY_USER,
    REGISTRY_TOKEN_USER,
    SignIn,
    SignInFailed,
    Way,
)
from moorage.auth.tokens import Scope, TokenService
from moorage.iam.roles import PULL, REGISTRY, VIEW
from moorage.iam.service import USER, IamService, Principal, normalize_identity
from moorage.oci.names import NameError_, validate_name
from moorage.regions import RegionMap, Target, UnknownDomain


@dataclass(frozen=True)
class PullVerdict:
    moorage_domain: bool
    region: str | None = None
    legacy: bool = False
    authenticated: bool = False
    allowed: bool = False
    cause: str = ""
    fix: str = ""


class PullCheck:
    def __init__(
        self, signin: SignIn, tokens: TokenService, iam: IamService, regions: RegionMap
    ) -> None:
        self.signin = signin
        self.tokens = tokens
        self.iam = iam
        self.regions = regions

    async def check(
        self,
        caller: Principal,
        client: str | None,
        registry: str,
        repository: str,
        username: str,
        password: str,
    ) -> PullVerdict:
        try:
            target = self.regions.resolve(registry)
        except (UnknownDomain, ValueError):
            return PullVerdict(False, cause=f"{registry[:255]} is not a Moorage registry domain")
        region = target.region.name
        base = PullVerdict(True, region, target.legacy)
        try:
            validate_name(repository)
        except NameError_ as exc:
            return replace(base, cause=f"not a repository name: {exc}")
        try:
            principal = await self.signin.authenticate(
                client,
                username,
                password,
                Way.LEGACY if target.legacy else Way.REGISTRY,
                region=region,
                audience=target.service,
            )
        except SignInFailed as exc:
            cause, fix = await asyncio.to_thread(
                self._refusal, caller, target, normalize_identity(username), password, exc
            )
            return replace(base, cause=cause, fix=fix)
        allowed = await asyncio.to_thread(self._allowed, principal, target, repository)
        if allowed:
            return replace(base, authenticated=True, allowed=True)
        cause, fix = await asyncio.to_thread(self._denial, caller, principal, target, repository)
        return replace(base, authenticated=True, cause=cause, fix=fix)

    def _allowed(self, principal: Principal, target: Target, repository: str) -> bool:
        granted = self.tokens.grant(principal, target, [Scope("repository", repository, (PULL,))])
        return bool(granted) and PULL in granted[0]["actions"]

    def _insider(self, caller: Principal, account: str) -> bool:
        """May the caller hear what IAM knows of a credential of ``account``?"""
        return caller.accounts == {account} and self.iam.allows(caller, VIEW, services=(REGISTRY,))

    def _refusal(
        self, caller: Principal, target: Target, username: str, secret: str, exc: SignInFailed
    ) -> tuple[str, str]:
        region = target.region
        if exc.status == 429:
            return exc.message, "wait a minute; then check the secret's credentials"
        if target.legacy and username != REGISTRY_TOKEN_USER:
            return (
                f"{target.service} is a legacy domain: it accepts only registry tokens, "
                "not API keys or passwords",
                f"pull from {region.domain} (region {region.name}) instead",
            )
        if username == REGISTRY_TOKEN_USER:
            if not target.legacy:
                return (
                    "registry tokens work only on their region's legacy domain",
                    "store an API key (username iamapikey) instead: moorage ks pull-secret-create",
                )
            return (
                "the registry token is invalid, expired, removed, or for another region",
                "create one with moorage cr token-add, or move to API keys with "
                "moorage ks pull-secret-migrate",
            )
        if username != API_KEY_USER:
            return exc.message, "check the email and password stored in the secret"
        key = self.iam.describe_api_key(secret)
        if key is None:
            return (
                "the API key in the secret does not exist (deleted, rotated or mistyped)",
                "re-run moorage ks cluster-pull-secret-apply and copy the secrets again",
            )
        if key.locked and self._insider(caller, key.account_id):
            who = "an administrator" if key.locked_by not in (None, key.owner_id) else "its owner"
            return (
                f"API key {key.name} ({key.id}) is locked (by {who})",
                f"moorage iam api-key-unlock {key.id}",
            )
        if key.locked:
            return "the API key in the secret is locked", "ask its account to unlock it"
        return exc.message, "re-run moorage ks cluster-pull-secret-apply"

    def _denial(
        self, caller: Principal, principal: Principal, target: Target, repository: str
    ) -> tuple[str, str]:
        region = target.region.name
        namespace = repository.split("/", 1)[0]
        owner = self.iam.namespace_owner(region, namespace)
        if owner not in principal.accounts:
            if owner is not None and caller.accounts == {owner}:
                return (
                    f"namespace {namespace} in {region} is your account's, but the credential "
                    "is another account's",
                    "store an API key of your account: moorage ks pull-secret-create",
                )
            # Whether another account owns it or nobody does is not ours to tell.
            return (
                f"the credential's account has no namespace {namespace} in {region}",
                "check the image reference and region, or store a key of the account that "
                "owns the namespace",
            )
        if not self._insider(caller, owner):
            return (
                f"the credential's policies do not grant pull on {namespace} in {region}",
                "ask the namespace's account for a Reader policy",
            )
        policies = self.iam.policies(owner, principal.kind, principal.id)
        held = (
            "; ".join(
                f"{','.join(p.roles)} on {p.resource or 'every namespace'} in "
                f"{p.region or 'every region'}"
                for p in policies
                if p.service_name == REGISTRY
            )
            or f"none on {REGISTRY}"
        )
        command = "user-policy-create" if principal.kind == USER else "service-policy-create"
        return (
            f"{principal.id} may not pull namespace {namespace} in {region} (policies: {held})",
            f"moorage iam {command} {principal.id} --roles Reader --service-name {REGISTRY} "
            f"--region {region} --resource-type namespace --resource {namespace}",
        )
