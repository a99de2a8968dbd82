"""The seed's ``ibmcloud ks`` pull-secret workflows, shared by the CLI and the
controller: each takes a ``kubernetes`` API client (and, where keys are made, a
``ManagementClient``), returns a typed result and raises ``KubeError``s or
``ClientError``s, never prints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from moorage.client import ClientError, ManagementClient, segment
from moorage.kube.errors import kube_errors
from moorage.kube.pullsecrets import (
    API_KEY_USER,
    KEY_ANNOTATION,
    PullSecrets,
    dockerconfigjson,
    secret_name,
)

REGISTRY_SERVICE = "container-registry"
SOURCE_NAMESPACE = "default"


def core_api(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


@dataclass(frozen=True)
class IssuedKey:
    id: str
    secret: str = field(repr=False)


class ClusterKeys:
    """A cluster's service ID (``moorage-cluster-<name>``, Reader on the registry)
    and the API keys its pull secrets hold. A rotation issues a key, puts it in
    every secret, and only then retires the others."""

    def __init__(self, management: ManagementClient, cluster: str) -> None:
        self.management = management
        self.cluster = cluster
        self.service_id = f"moorage-cluster-{cluster}"
        self._prefix = f"{cluster}-pull-"

    def ensure_service_id(self) -> str:
        m = self.management
        try:
            m.request("GET", f"/iam/service-ids/{segment(self.service_id)}")
        except ClientError as exc:
            if exc.status != 404:
                raise
            m.request(
                "POST",
                "/iam/service-ids",
                {
                    "name": self.service_id,
                    "description": f"Pulls images from Moorage for cluster {self.cluster}",
                },
            )
        policies = m.request("GET", f"/iam/service-ids/{segment(self.service_id)}/policies")
        if not any(
            p["roles"] == ["Reader"]
            and p["service_name"] == REGISTRY_SERVICE
            and not p["region"]
            and not p["resource"]
            for p in policies
        ):
            m.request(
                "POST",
                f"/iam/service-ids/{segment(self.service_id)}/policies",
                {"roles": "Reader", "service_name": REGISTRY_SERVICE},
            )
        return self.service_id

    def issue(self, description: str | None = None) -> IssuedKey:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        created = self.management.request(
            "POST",
            f"/iam/service-ids/{segment(self.service_id)}/api-keys",
            {
                "name": f"{self._prefix}{stamp}-{time.time_ns() % 1000000:06d}",
                "description": description or f"image pull secrets of cluster {self.cluster}",
            },
        )
        return IssuedKey(str(created["id"]), str(created["apikey"]))

    def retire(self, keep: str) -> list[str]:
        """Delete every pull key of this cluster except ``keep``; the ids deleted."""
        retired = []
        for key in self.management.request(
            "GET", f"/iam/service-ids/{segment(self.service_id)}/api-keys"
        ):
            if key["id"] != keep and key["name"].startswith(self._prefix):
                self.management.request("DELETE", f"/iam/api-keys/{segment(str(key['id']))}")
                retired.append(str(key["id"]))
        return retired


def combined_secret_name(hosts: list[str]) -> str:
    """``all-<global domain>``: the secret holding every domain."""
    global_host = min(hosts, key=lambda h: h.count("."))
    return "all-" + global_host.split(":", 1)[0].replace(".", "-")


def source_secrets(
    hosts: list[str], key: IssuedKey, combined: bool = False
) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """The pull secrets of the source namespace for a key: name -> (data, annotations)."""
    annotations = {KEY_ANNOTATION: key.id}
    wanted = {
        secret_name(SOURCE_NAMESPACE, host): (
            dockerconfigjson([host], API_KEY_USER, key.secret),
            annotations,
        )
        for host in hosts
    }
    if combined:
        wanted[combined_secret_name(hosts)] = (
            dockerconfigjson(hosts, API_KEY_USER, key.secret),
            annotations,
        )
    return wanted


def write_sources(
    api_client: Any, hosts: list[str], key: IssuedKey, combined: bool = False
) -> tuple[list[str], list[str]]:
    """Write the source secrets and attach them to the default service account:
    (secret names, the account's imagePullSecrets)."""
    secrets = PullSecrets(core_api(api_client))
    names = []
    with kube_errors():
        for name, (data, annotations) in source_secrets(hosts, key, combined).items():
            secrets.put_secret(SOURCE_NAMESPACE, name, data, annotations)
            names.append(name)
        attached = secrets.attach(SOURCE_NAMESPACE, names)
    return names, attached


@dataclass(frozen=True)
class ApplyResult:
    service_id: str
    api_key_id: str
    secrets: list[str]
    service_account_pull_secrets: list[str]
    retired_api_keys: list[str]


def apply_cluster_pull_secrets(
    api_client: Any, management: ManagementClient, cluster: str, combined: bool = False
) -> ApplyResult:
    """Give the cluster its service ID and a fresh key in the default namespace's
    pull secrets; a second run rotates: every secret holds the new key before the
    old keys are deleted."""
    with kube_errors():  # the cluster answers before any key is made
        core_api(api_client).list_namespaced_service_account(SOURCE_NAMESPACE, limit=1)
    keys = ClusterKeys(management, cluster)
    keys.ensure_service_id()
    hosts = management.registry_hosts()
    key = keys.issue()
    names, attached = write_sources(api_client, hosts, key, combined)
    retired = keys.retire(keep=key.id)  # only now that every secret holds the new key
    return ApplyResult(keys.service_id, key.id, names, attached, retired)


@dataclass(frozen=True)
class Copied:
    namespace: str
    secrets: list[str]


def copy_pull_secrets(
    api_client: Any,
    source: str = SOURCE_NAMESPACE,
    to: str | None = None,
    selector: str | None = None,
    attach: bool = False,
) -> list[Copied]:
    """Copy ``<source>-…`` registry secrets to one namespace (``to``) or to every
    namespace matching ``selector`` ("" for all, minus the source and ``kube-*``)."""
    secrets = PullSecrets(core_api(api_client))
    with kube_errors():
        if to is not None:
            targets = [to]
        else:
            targets = [
                n for n in secrets.namespaces(selector) if n != source and not n.startswith("kube-")
            ]
        copied = secrets.copy_many(source, targets, attach)
    return [Copied(namespace, names) for namespace, names in copied.items()]


def attach_pull_secrets(
    api_client: Any, namespace: str, names: list[str], service_account: str = "default"
) -> list[str]:
    """Merge secrets into a service account's imagePullSecrets; the merged list."""
    with kube_errors():
        return PullSecrets(core_api(api_client)).attach(namespace, names, service_account)


@dataclass(frozen=True)
class Created:
    secrets: list[str]
    service_id: str | None = None
    api_key_id: str | None = None
    server: str | None = None


def create_registry_pull_secret(
    api_client: Any,
    namespace: str,
    name: str,
    server: str,
    username: str,
    password: str,
    attach: bool = False,
) -> Created:
    """A secret for any registry, as ``kubectl create secret docker-registry`` makes it."""
    secrets = PullSecrets(core_api(api_client))
    with kube_errors():
        secrets.put_secret(namespace, name, dockerconfigjson([server], username, password))
        if attach:
            secrets.attach(namespace, [name])
    return Created([name], server=server)


def create_service_id_pull_secrets(
    api_client: Any,
    management: ManagementClient,
    cluster: str,
    namespace: str,
    service_id: str | None = None,
    roles: str = "Reader",
    region: str | None = None,
    resource: str | None = None,
    name: str | None = None,
    attach: bool = False,
) -> Created:
    """Secrets holding a key of a scoped service ID: the given one, or (when
    ``service_id`` is None) a new ``<cluster>-<namespace>-id``. One secret per
    domain of ``region`` (every region when None), or one named ``name`` with
    them all."""
    secrets = PullSecrets(core_api(api_client))
    with kube_errors():
        secrets.namespaces()  # the cluster answers before any key is made
    m = management
    owner = service_id or f"{cluster}-{namespace}-id"
    if service_id is None:
        m.request(
            "POST",
            "/iam/service-ids",
            {
                "name": owner,
                "description": f"Service ID for Moorage in Kubernetes cluster {cluster} namespace "
                f"{namespace}",
            },
        )
    else:
        m.request("GET", f"/iam/service-ids/{segment(owner)}")
    m.request(
        "POST",
        f"/iam/service-ids/{segment(owner)}/policies",
        {
            "roles": roles,
            "service_name": REGISTRY_SERVICE,
            "region": region,
            "resource_type": "namespace" if resource else None,
            "resource": resource,
        },
    )
    created = m.request(
        "POST",
        f"/iam/service-ids/{segment(owner)}/api-keys",
        {
            "name": f"{cluster}-{namespace}-key-{time.time_ns() % 10**9}",
            "description": f"API key for service ID {owner} in Kubernetes cluster {cluster} "
            f"namespace {namespace}",
        },
    )
    hosts = [
        f"{r['domain']}{m.port_suffix}"
        for r in m.regions()
        if region is None or r["name"] == region
    ]
    annotations = {KEY_ANNOTATION: str(created["id"])}
    with kube_errors():
        if name:
            names = [name]
            secrets.put_secret(
                namespace,
                name,
                dockerconfigjson(hosts, API_KEY_USER, created["apikey"]),
                annotations,
            )
        else:
            names = []
            for host in hosts:
                names.append(secret_name(namespace, host))
                secrets.put_secret(
                    namespace,
                    names[-1],
                    dockerconfigjson([host], API_KEY_USER, created["apikey"]),
                    annotations,
                )
        if attach:
            secrets.attach(namespace, names)
    return Created(names, service_id=owner, api_key_id=str(created["id"]))
