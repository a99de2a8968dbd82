"""The one table of workload kinds that carry a pod spec: how to read, list and
replace each through the official client, and where its pod spec lives.

Diagnosis, migration and the CLI's readers use it, and so will the admission
webhook, which must cover every kind that creates pods."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkloadKind:
    kind: str  # as in the API: "Deployment"
    api: str  # the client class: "AppsV1Api"
    resource: str  # the method stem: "deployment" in read_namespaced_deployment
    template: tuple[str, ...]  # JSON path to the pod spec; () for a Pod itself
    replaceable: bool = True  # False where the pod template is immutable (Job)
    follows_owner: bool = False  # an owned object changes only through its owner

    @property
    def name(self) -> str:
        """The lower-case name used on the command line (``deployment/web``)."""
        return self.kind.lower()

    def client(self, api_client: Any) -> Any:
        from kubernetes import client

        return getattr(client, self.api)(api_client)

    def read(self, api_client: Any, namespace: str, name: str) -> Any:
        return getattr(self.client(api_client), f"read_namespaced_{self.resource}")(name, namespace)

    def list_all(self, api_client: Any) -> list[Any]:
        api = self.client(api_client)
        return list(getattr(api, f"list_{self.resource}_for_all_namespaces")().items)

    def list(self, api_client: Any, namespace: str) -> list[Any]:
        return list(
            getattr(self.client(api_client), f"list_namespaced_{self.resource}")(namespace).items
        )

    def replace(self, api_client: Any, obj: Any) -> Any:
        if not self.replaceable:
            raise ValueError(f"the pod template of a {self.kind} cannot be changed")
        method = getattr(self.client(api_client), f"replace_namespaced_{self.resource}")
        return method(obj.metadata.name, obj.metadata.namespace, obj)

    def pod_spec(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The pod spec of a serialized object (camelCase keys)."""
        node: Any = obj if self.template else obj.get("spec")
        for step in self.template:
            node = (node or {}).get(step)
        return node or {}

    def model_pod_spec(self, obj: Any) -> Any:
        """The pod spec of a client model object (snake_case attributes)."""
        node = obj if self.template else obj.spec
        for step in self.template:
            node = getattr(node, _snake(step), None) if node is not None else None
        return node

    def containers(self, obj: Any) -> Iterator[Any]:
        """Init and regular containers of a model object."""
        spec = self.model_pod_spec(obj)
        if spec is not None:
            yield from spec.init_containers or []
            yield from spec.containers or []


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_TEMPLATE = ("spec", "template", "spec")
KINDS: tuple[WorkloadKind, ...] = (
    WorkloadKind("Pod", "CoreV1Api", "pod", (), follows_owner=True),
    WorkloadKind("Deployment", "AppsV1Api", "deployment", _TEMPLATE),
    WorkloadKind("ReplicaSet", "AppsV1Api", "replica_set", _TEMPLATE, follows_owner=True),
    WorkloadKind("StatefulSet", "AppsV1Api", "stateful_set", _TEMPLATE),
    WorkloadKind("DaemonSet", "AppsV1Api", "daemon_set", _TEMPLATE),
    WorkloadKind("Job", "BatchV1Api", "job", _TEMPLATE, replaceable=False),
    WorkloadKind(
        "CronJob", "BatchV1Api", "cron_job", ("spec", "jobTemplate", "spec", "template", "spec")
    ),
    WorkloadKind("ReplicationController", "CoreV1Api", "replication_controller", _TEMPLATE),
)
BY_KIND = {k.kind: k for k in KINDS}
BY_NAME = {k.name: k for k in KINDS}


class UnknownKind(ValueError):
    pass


def kind_named(name: str) -> WorkloadKind:
    """A kind by its API name (``Deployment``) or command-line name (``deployment``)."""
    found = BY_KIND.get(name) or BY_NAME.get(name.lower())
    if found is None:
        raise UnknownKind(f"not a workload kind: {name}")
    return found
