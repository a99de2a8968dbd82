"""Moving a cluster off deprecated registry tokens on legacy domains.

``plan()`` only reads: the token secrets on legacy domains and the workloads
whose images still name a legacy domain. ``apply(plan)`` copies the API-key
secrets into those namespaces and attaches them, optionally points the images
at the new domains, and removes a token secret (and every service-account
reference to it) only once nothing in its namespace pulls from a legacy domain."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from moorage.client import ManagementClient
from moorage.kube.errors import PreconditionFailed, kube_errors
from moorage.kube.keyring import DOCKERCFG, DOCKERCONFIGJSON, KeyringError, decode_auth
from moorage.kube.pullsecrets import PullSecrets, secret_name
from moorage.kube.workflows import SOURCE_NAMESPACE, core_api
from moorage.kube.workloads import KINDS, kind_named


@dataclass(frozen=True)
class TokenSecret:
    namespace: str
    secret: str
    domains: list[str]


@dataclass(frozen=True)
class LegacyImage:
    kind: str
    namespace: str
    name: str
    container: str
    image: str
    new_image: str


@dataclass
class MigrationPlan:
    moves: dict[str, str]  # legacy host -> its region's domain (with ports)
    token_secrets: list[TokenSecret] = field(default_factory=list)
    legacy_images: list[LegacyImage] = field(default_factory=list)

    @property
    def namespaces(self) -> list[str]:
        return sorted(
            {s.namespace for s in self.token_secrets} | {i.namespace for i in self.legacy_images}
        )


@dataclass
class MigrationResult:
    created_secrets: list[str] = field(default_factory=list)
    rewritten_images: list[str] = field(default_factory=list)
    removed_secrets: list[str] = field(default_factory=list)


def legacy_moves(management: ManagementClient) -> dict[str, str]:
    suffix = management.port_suffix
    return {
        f"{r['legacy_domain']}{suffix}": f"{r['domain']}{suffix}"
        for r in management.regions()
        if r.get("legacy_domain")
    }


def _auth_user(entry: dict[str, Any]) -> str | None:
    try:
        return decode_auth(str(entry.get("auth") or ""))[0] if entry.get("auth") else None
    except KeyringError:
        return None


def _token_hosts(secret: Any, moves: dict[str, str]) -> list[str]:
    if secret.type not in (DOCKERCONFIGJSON, DOCKERCFG) or not secret.data:
        return []
    key = ".dockerconfigjson" if secret.type == DOCKERCONFIGJSON else ".dockercfg"
    try:
        document = json.loads(base64.b64decode(secret.data.get(key, "")))
    except ValueError:
        return []
    auths = document.get("auths", {}) if secret.type == DOCKERCONFIGJSON else document
    if not isinstance(auths, dict):
        return []
    return [
        host
        for host, entry in auths.items()
        if host in moves
        and isinstance(entry, dict)
        and (entry.get("username") == "token" or _auth_user(entry) == "token")
    ]


def plan(api_client: Any, management: ManagementClient) -> MigrationPlan:
    """What a migration would change; changes nothing."""
    result = MigrationPlan(legacy_moves(management))
    moves = result.moves
    with kube_errors():
        for secret in core_api(api_client).list_secret_for_all_namespaces().items:
            hosts = _token_hosts(secret, moves)
            if hosts:
                result.token_secrets.append(
                    TokenSecret(secret.metadata.namespace, secret.metadata.name, hosts)
                )
        for kind in KINDS:
            for obj in kind.list_all(api_client):
                if kind.follows_owner and obj.metadata.owner_references:
                    continue  # rewritten through its owner
                for container in kind.containers(obj):
                    host, _, rest = container.image.partition("/")
                    if host in moves:
                        result.legacy_images.append(
                            LegacyImage(
                                kind.kind,
                                obj.metadata.namespace,
                                obj.metadata.name,
                                container.name,
                                container.image,
                                f"{moves[host]}/{rest}",
                            )
                        )
    return result


def apply(
    api_client: Any, migration: MigrationPlan, rewrite_images: bool = False
) -> MigrationResult:
    """Carry a plan out (see the module's docstring)."""
    core = core_api(api_client)
    secrets = PullSecrets(core)
    result = MigrationResult()
    new_hosts = sorted(set(migration.moves.values()))
    with kube_errors():
        present = {s.metadata.name for s in core.list_namespaced_secret(SOURCE_NAMESPACE).items}
        if not all(secret_name(SOURCE_NAMESPACE, h) in present for h in new_hosts):
            raise PreconditionFailed(
                "run moorage ks cluster-pull-secret-apply first: the default "
                "namespace has no API-key pull secrets to copy"
            )
        for namespace in migration.namespaces:
            if namespace != SOURCE_NAMESPACE:
                result.created_secrets += secrets.copy(SOURCE_NAMESPACE, namespace)
            secrets.attach(namespace, [secret_name(namespace, h) for h in new_hosts])
        still_legacy: set[str] = set()
        by_object: dict[tuple[str, str, str], list[LegacyImage]] = {}
        for image in migration.legacy_images:
            by_object.setdefault((image.kind, image.namespace, image.name), []).append(image)
        for (kind_name, namespace, name), images in by_object.items():
            kind = kind_named(kind_name)
            if not (rewrite_images and kind.replaceable):
                still_legacy.add(namespace)
                continue
            obj = kind.read(api_client, namespace, name)
            changed = {i.container: i for i in images}
            for container in kind.containers(obj):
                found = changed.get(container.name)
                if found is not None and container.image == found.image:
                    container.image = found.new_image
                    result.rewritten_images.append(
                        f"{kind.kind}/{namespace}/{name}/{container.name}"
                    )
            kind.replace(api_client, obj)
        for token in migration.token_secrets:
            if token.namespace in still_legacy:
                continue  # a workload here still pulls from a legacy domain
            for account in core.list_namespaced_service_account(token.namespace).items:
                refs = account.image_pull_secrets or []
                kept = [r for r in refs if r.name != token.secret]
                if len(kept) != len(refs):
                    account.image_pull_secrets = kept
                    core.replace_namespaced_service_account(
                        account.metadata.name, token.namespace, account
                    )
            core.delete_namespaced_secret(token.secret, token.namespace)
            result.removed_secrets.append(f"{token.namespace}/{token.secret}")
    return result
