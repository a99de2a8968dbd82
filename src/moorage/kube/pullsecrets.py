"""Image pull secrets in a cluster, as the seed's ``ibmcloud ks`` workflows
make them: one ``kubernetes.io/dockerconfigjson`` secret per registry domain
(``default-us-localhost`` …), holding a service ID's API key as ``iamapikey``,
attached to service accounts without disturbing what else is there."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from moorage.kube.errors import PreconditionFailed
from moorage.kube.keyring import DOCKERCONFIGJSON

MANAGED_BY = {"app.kubernetes.io/managed-by": "moorage"}
KEY_ANNOTATION = "moorage.io/api-key-id"
API_KEY_USER = "iamapikey"


def secret_name(namespace: str, host: str) -> str:
    """``<namespace>-<domain with dots as dashes>``: the seed's names, port dropped."""
    return f"{namespace}-" + host.split(":", 1)[0].replace(".", "-")


def dockerconfigjson(hosts: Iterable[str], username: str, password: str) -> dict[str, str]:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    document = {
        "auths": {h: {"username": username, "password": password, "auth": auth} for h in hosts}
    }
    return {".dockerconfigjson": base64.b64encode(json.dumps(document).encode()).decode()}


@dataclass
class ApiCounter:
    """Counts the Kubernetes API calls a workflow makes (for the benchmark)."""

    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1


class PullSecrets:
    def __init__(self, core: k8s.CoreV1Api, count: Callable[[], None] | None = None) -> None:
        self.core = core
        self._count = count or (lambda: None)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._count()
        return fn(*args, **kwargs)

    def put_secret(
        self,
        namespace: str,
        name: str,
        data: dict[str, str],
        annotations: dict[str, str] | None = None,
        secret_type: str = DOCKERCONFIGJSON,
    ) -> None:
        """Create a secret, or replace one Moorage made before (a replacement keeps
        nothing of the old one). A same-named secret someone else made is theirs:
        PreconditionFailed, and it stays as it was."""
        payload: dict[str, bytes | str] = dict(data)
        meta = k8s.V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels=dict(MANAGED_BY),
            annotations=annotations or {},
        )
        body = k8s.V1Secret(metadata=meta, type=secret_type, data=payload)
        try:
            self._call(self.core.create_namespaced_secret, namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            existing = self._call(self.core.read_namespaced_secret, name, namespace)
            labels = existing.metadata.labels or {}
            if any(labels.get(k) != v for k, v in MANAGED_BY.items()):
                raise PreconditionFailed(
                    f"secret {namespace}/{name} exists and was not made by Moorage: delete it "
                    "or choose another name"
                ) from None
            meta.resource_version = existing.metadata.resource_version
            self._call(self.core.replace_namespaced_secret, name, namespace, body)

    def attach(
        self, namespace: str, names: Iterable[str], service_account: str = "default"
    ) -> list[str]:
        """Add secrets to a service account's imagePullSecrets: merged, never
        duplicated, other entries kept; optimistic concurrency on conflicts."""
        wanted = list(dict.fromkeys(names))
        for _ in range(5):
            account = self._call(
                self.core.read_namespaced_service_account, service_account, namespace
            )
            current = [ref.name for ref in (account.image_pull_secrets or [])]
            merged = current + [n for n in wanted if n not in current]
            if merged == current:
                return current
            account.image_pull_secrets = [k8s.V1LocalObjectReference(name=n) for n in merged]
            try:
                self._call(
                    self.core.replace_namespaced_service_account,
                    service_account,
                    namespace,
                    account,
                )
                return merged
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise RuntimeError(f"service account {namespace}/{service_account} kept changing")

    def copy(self, source_namespace: str, target_namespace: str) -> list[str]:
        """Copy ``<source>-…`` registry secrets to ``<target>-…``, properly: new
        names, and no uid, resourceVersion or ownerReferences carried over."""
        copied = []
        secrets = self._call(self.core.list_namespaced_secret, source_namespace)
        prefix = f"{source_namespace}-"
        for secret in secrets.items:
            name = secret.metadata.name
            if secret.type != DOCKERCONFIGJSON or not name.startswith(prefix):
                continue
            target_name = f"{target_namespace}-{name[len(prefix) :]}"
            self.put_secret(
                target_namespace,
                target_name,
                secret.data,
                dict(secret.metadata.annotations or {}),
                secret.type,
            )
            copied.append(target_name)
        return copied

    def copy_many(
        self, source_namespace: str, targets: list[str], attach: bool, workers: int = 8
    ) -> dict[str, list[str]]:
        """``copy`` (and ``attach``) for many namespaces at once: the API server
        answers calls for different namespaces in parallel."""
        from concurrent.futures import ThreadPoolExecutor

        def one(namespace: str) -> list[str]:
            copied = self.copy(source_namespace, namespace)
            if attach and copied:
                self.attach(namespace, copied)
            return copied

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return dict(zip(targets, pool.map(one, targets), strict=True))

    def namespaces(self, selector: str | None = None) -> list[str]:
        listed = self._call(self.core.list_namespace, label_selector=selector or "")
        return [n.metadata.name for n in listed.items]
