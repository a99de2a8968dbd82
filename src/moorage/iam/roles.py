"""Roles, the actions they allow, and the policy decision. Pure functions:
the token service evaluates them in memory for every scope it grants."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

REGISTRY = "container-registry"
KUBERNETES = "containers-kubernetes"
# Account-wide IAM (as IBM Cloud's IAM Identity Service): members, service IDs,
# API keys of others, and policies on this service itself. A role on another
# service never reaches it.
IAM_IDENTITY = "iam-identity"
SERVICES = (REGISTRY, KUBERNETES, IAM_IDENTITY)
RESOURCE_SERVICES = (REGISTRY, KUBERNETES)  # services with regions and namespaces

PULL = "pull"
LIST = "list"
PUSH = "push"
TAG = "tag"
DELETE = "delete"
MANAGE_NAMESPACES = "namespace.manage"
MANAGE_TOKENS = "token.manage"
# Accepting a vulnerability or configuration issue (the Advisor's exemptions)
# changes what enforcement lets run: Manager, not Writer.
MANAGE_EXEMPTIONS = "exemption.manage"
VIEW = "view"
# Administrator on a service: policies on that service, within the policy's scope.
MANAGE_POLICIES = "policy.manage"
# Editor or Administrator on iam-identity: members, service IDs and their keys.
MANAGE_IDENTITIES = "identity.manage"

_READER = frozenset({PULL, LIST})
_WRITER = _READER | {PUSH, TAG}
_MANAGER = _WRITER | {DELETE, MANAGE_NAMESPACES, MANAGE_TOKENS, MANAGE_EXEMPTIONS}

SERVICE_ROLES: dict[str, frozenset[str]] = {
    "Reader": _READER,
    "Writer": _WRITER,
    "Manager": _MANAGER,
}
PLATFORM_ROLES: dict[str, frozenset[str]] = {
    "Viewer": frozenset({VIEW}),
    "Operator": frozenset({VIEW}),
    # Both are checked only on the service the work belongs to: identities on
    # iam-identity, a policy on the policy's own service.
    "Editor": frozenset({VIEW, MANAGE_IDENTITIES}),
    "Administrator": frozenset({VIEW, MANAGE_IDENTITIES, MANAGE_POLICIES}),
}
ROLES = {**SERVICE_ROLES, **PLATFORM_ROLES}
ROLE_ORDER = list(ROLES)


class RoleError(ValueError):
    pass


def parse_roles(value: str | Iterable[str]) -> tuple[str, ...]:
    """Validate a role list ("Reader,Writer"), in canonical order, without duplicates."""
    names = value.split(",") if isinstance(value, str) else list(value)
    cleaned = {n.strip() for n in names if n.strip()}
    if not cleaned:
        raise RoleError("at least one role is required")
    by_lower = {r.lower(): r for r in ROLES}
    unknown = sorted(n for n in cleaned if n.lower() not in by_lower)
    if unknown:
        raise RoleError(
            f"unknown role(s) {', '.join(unknown)}; valid roles: {', '.join(ROLE_ORDER)}"
        )
    chosen = {by_lower[n.lower()] for n in cleaned}
    return tuple(r for r in ROLE_ORDER if r in chosen)


@dataclass(frozen=True)
class Grant:
    """One policy, reduced to what a decision needs. A policy is given within an
    account and never reaches beyond it."""

    service_name: str
    actions: frozenset[str]
    region: str | None = None
    namespace: str | None = None
    account_id: str | None = None  # None only in pure rule checks

    @classmethod
    def of(
        cls,
        roles: Iterable[str],
        service_name: str,
        region: str | None,
        namespace: str | None,
        account_id: str | None = None,
    ) -> Grant:
        actions: frozenset[str] = frozenset().union(*(ROLES[r] for r in roles))
        return cls(service_name, actions, region, namespace, account_id)

    def covers(
        self, service: str, region: str | None, namespace: str | None, account: str | None
    ) -> bool:
        if self.service_name != service:
            return False
        if account is not None and self.account_id != account:
            return False
        if self.region is not None and self.region != region:
            return False
        return self.namespace is None or self.namespace == namespace


def allowed_actions(
    grants: Iterable[Grant],
    service: str,
    region: str | None,
    namespace: str | None,
    account: str | None = None,
) -> frozenset[str]:
    """Everything the grants allow on one namespace of one region of one service,
    counting only grants of ``account`` when it is given (the namespace's owner,
    or the account a management call acts in)."""
    result: frozenset[str] = frozenset()
    for grant in grants:
        if grant.covers(service, region, namespace, account):
            result |= grant.actions
    return result
