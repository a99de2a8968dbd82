"""``moorage enforce install``, ``uninstall`` and ``cache-flush``: the
objects that put the webhook in front of a cluster's admissions, built here
as plain dicts (``objects()``, printed by ``--dry-run``) and applied with
server-side apply.

Exemptions are the operator's: the namespaces named here (kube-system, the
webhook's own, ``--exempt-namespace``) are left out by the configurations'
``namespaceSelector`` and listed in the ConfigMap the webhook reads. A
namespace's ``moorage.io/enforce=disabled`` label is not in the selector:
whoever may create a namespace may label it, so the webhook is called there
and honours the label only in namespaces ``--allow-opt-out`` names, logging
each exemption.

Install refuses a configuration that would lock the webhook out of its own
namespace: with ``failurePolicy: Fail``, a webhook whose pods need its own
approval to start never starts. A namespace install creates is exempt as
the webhook's own; an existing one must be named with ``--exempt-namespace``
(so that no namespace with workloads in it is exempted by surprise)."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from moorage.enforce.policy import (
    API_VERSION,
    CLUSTER_IMAGE_POLICY,
    GROUP,
    IMAGE_POLICY,
    PLURALS,
    crd,
)
from moorage.enforce.state import CONFIGMAP
from moorage.enforce.verify import ALWAYS_EXEMPT, namespace_patterns
from moorage.kube.errors import KubeError, kube_errors
from moorage.kube.workloads import KINDS

NAME = "moorage-enforce"
TLS_SECRET = "moorage-enforce-tls"
SIGNERS_SECRET = "moorage-signers"
DEFAULT_POLICY = "default"
SERVICE_PORT = 443
CONTAINER_PORT = 8443
FIELD_MANAGER = "moorage-enforce"
MANAGED = {"app.kubernetes.io/managed-by": "moorage", "app.kubernetes.io/name": NAME}
_GROUPS = {"CoreV1Api": "", "AppsV1Api": "apps", "BatchV1Api": "batch"}


class InstallError(KubeError):
    """A configuration install will not apply; the message says how to fix it."""


class DefaultPolicy(StrEnum):
    SIGNED = "signed"  # every image signed by a key in secret moorage-signers
    ALLOW_ALL = "allow-all"  # Portieris' default: admit everything, pin nothing
    NONE = "none"  # no default: an image no policy matches is denied


@dataclass(frozen=True)
class InstallOptions:
    namespace: str = NAME
    url: str | None = None  # an out-of-cluster webhook (https://host:port); else a Service
    ca_bundle: bytes = b""  # PEM of the CA that signed the webhook's certificate
    tls_cert: bytes | None = None  # for the Service's pods (secret moorage-enforce-tls)
    tls_key: bytes | None = None
    exempt_namespaces: tuple[str, ...] = ()
    opt_out_namespaces: tuple[str, ...] = ()  # globs where the opt-out label is honoured
    default_policy: DefaultPolicy = DefaultPolicy.SIGNED
    cosign_key: bytes | None = None  # PEM public key for secret moorage-signers
    gpg_key: str | None = None  # ASCII-armored public key for secret moorage-signers
    timeout_seconds: int = 10

    @property
    def exempt(self) -> list[str]:
        """Every namespace left unchecked by name: kube-system, the webhook's own, and
        those given."""
        return sorted(ALWAYS_EXEMPT | {self.namespace} | set(self.exempt_namespaces))


def service_names(namespace: str) -> list[str]:
    """The names the API server may use for the webhook's Service."""
    base = f"{NAME}.{namespace}.svc"
    return [NAME, f"{NAME}.{namespace}", base, f"{base}.cluster.local"]


def rules() -> list[dict[str, Any]]:
    """Every kind that makes pods (``moorage.kube.workloads``), by API group."""
    groups: dict[str, list[str]] = {}
    for kind in KINDS:
        resources = groups.setdefault(_GROUPS[kind.api], [])
        resources.append(kind.kind.lower() + "s")
        if kind.kind == "Pod":
            resources.append("pods/ephemeralcontainers")  # adds images to a running pod
    return [
        {
            "apiGroups": [group],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": resources,
            "scope": "Namespaced",
        }
        for group, resources in groups.items()
    ]


def namespace_selector(options: InstallOptions) -> dict[str, Any]:
    """The operator's exempt namespaces, by name (``kubernetes.io/metadata.name`` is
    set by the API server, not by whoever creates the namespace); no label a tenant
    may set."""
    return {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": options.exempt,
            },
        ]
    }


def _webhook(name: str, path: str, options: InstallOptions) -> dict[str, Any]:
    client_config: dict[str, Any] = {"caBundle": base64.b64encode(options.ca_bundle).decode()}
    if options.url:
        client_config["url"] = options.url.rstrip("/") + path
    else:
        client_config["service"] = {
            "name": NAME,
            "namespace": options.namespace,
            "path": path,
            "port": SERVICE_PORT,
        }
    return {
        "name": name,
        "clientConfig": client_config,
        "rules": rules(),
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": options.timeout_seconds,
        "namespaceSelector": namespace_selector(options),
    }


def webhook_configurations(options: InstallOptions) -> list[dict[str, Any]]:
    mutating = _webhook("mutate.enforce.moorage.io", "/mutate", options)
    mutating["reinvocationPolicy"] = "IfNeeded"  # re-pin if a later webhook changes an image
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": NAME, "labels": MANAGED},
            "webhooks": [mutating],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": NAME, "labels": MANAGED},
            "webhooks": [_webhook("validate.enforce.moorage.io", "/validate", options)],
        },
    ]


def rbac(namespace: str) -> list[dict[str, Any]]:
    read = ["get", "list", "watch"]
    subject = [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}]
    meta = {"name": NAME, "labels": MANAGED}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {**meta, "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": meta,
            "rules": [
                {"apiGroups": [GROUP], "resources": list(PLURALS.values()), "verbs": read},
                {
                    "apiGroups": [""],
                    "resources": ["secrets", "serviceaccounts", "namespaces"],
                    "verbs": read,
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": meta,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": NAME,
            },
            "subjects": subject,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {**meta, "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": read}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {**meta, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": subject,
        },
    ]


def default_policy(kind: DefaultPolicy) -> dict[str, Any] | None:
    if kind == DefaultPolicy.NONE:
        return None
    repository: dict[str, Any] = {"name": "*"}
    if kind == DefaultPolicy.SIGNED:
        signed = {"requirements": [{"type": "signedBy", "keySecret": SIGNERS_SECRET}]}
        repository["policy"] = {"require": "any", "cosign": signed, "simple": signed}
    return {
        "apiVersion": API_VERSION,
        "kind": CLUSTER_IMAGE_POLICY,
        "metadata": {"name": DEFAULT_POLICY, "labels": MANAGED},
        "spec": {"repositories": [repository]},
    }


def objects(options: InstallOptions) -> list[dict[str, Any]]:
    """Everything install applies, in order (the webhook configurations last,
    once what they point at exists)."""
    ns = options.namespace
    found: list[dict[str, Any]] = [crd(IMAGE_POLICY), crd(CLUSTER_IMAGE_POLICY)]
    found.append(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": MANAGED},
        }
    )
    found += rbac(ns)
    found.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP, "namespace": ns, "labels": MANAGED},
            "data": {
                "exempt-namespaces": ",".join(options.exempt),
                "opt-out-namespaces": ",".join(sorted(set(options.opt_out_namespaces))),
            },
        }
    )
    signers: dict[str, str] = {}
    if options.cosign_key:
        signers["cosign.pub"] = base64.b64encode(options.cosign_key).decode()
    if options.gpg_key:
        signers["key"] = base64.b64encode(options.gpg_key.encode()).decode()
    if signers:
        found.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": SIGNERS_SECRET, "namespace": ns, "labels": MANAGED},
                "data": signers,
            }
        )
    if not options.url:
        if options.tls_cert and options.tls_key:
            found.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "kubernetes.io/tls",
                    "metadata": {"name": TLS_SECRET, "namespace": ns, "labels": MANAGED},
                    "data": {
                        "tls.crt": base64.b64encode(options.tls_cert).decode(),
                        "tls.key": base64.b64encode(options.tls_key).decode(),
                    },
                }
            )
        found.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": NAME, "namespace": ns, "labels": MANAGED},
                "spec": {
                    "selector": {"app.kubernetes.io/name": NAME},
                    "ports": [
                        {"name": "https", "port": SERVICE_PORT, "targetPort": CONTAINER_PORT}
                    ],
                },
            }
        )
    policy = default_policy(options.default_policy)
    if policy is not None:
        found.append(policy)
    return found + webhook_configurations(options)


def check(options: InstallOptions, namespace_labels: dict[str, str] | None) -> None:
    """Refuse a configuration that would block the webhook's own pods.
    ``namespace_labels`` are those of the existing namespace (None: install creates it)."""
    try:
        namespace_patterns(options.exempt_namespaces, globs=False)
        namespace_patterns(options.opt_out_namespaces)
    except ValueError as exc:
        raise InstallError(str(exc)) from None
    if not options.ca_bundle.strip().startswith(b"-----BEGIN CERTIFICATE-----"):
        raise InstallError("the CA bundle is not a PEM certificate (--ca-file)")
    if options.url:
        if not options.url.startswith("https://"):
            raise InstallError("the API server calls webhooks over HTTPS only: --url https://…")
        return
    if bool(options.tls_cert) != bool(options.tls_key):
        raise InstallError("give both the webhook's certificate and its key")
    ns = options.namespace
    manager = "app.kubernetes.io/managed-by"
    made_here = namespace_labels is None or namespace_labels.get(manager) == MANAGED[manager]
    if made_here or ns in options.exempt_namespaces or ns in ALWAYS_EXEMPT:
        return
    raise InstallError(
        f"namespace {ns} is not exempt from image enforcement (it exists and install did "
        "not make it), so the webhook could not start its own pods there (failurePolicy "
        f"Fail): pass --exempt-namespace {ns}"
    )


@dataclass
class InstallResult:
    applied: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # present already and left as they were


def _label(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']} {where}{meta['name']}"


def dynamic_client(api_client: Any) -> Any:
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.discovery import LazyDiscoverer

    return DynamicClient(api_client, discoverer=LazyDiscoverer)  # type: ignore[no-untyped-call]


def resource_for(dyn: Any, obj: dict[str, Any], seconds: float = 30) -> Any:
    """The dynamic client's resource for an object, waiting for a new CRD to be served."""
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    deadline = time.monotonic() + seconds
    while True:
        try:
            return dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError:
            if time.monotonic() > deadline:
                raise InstallError(f"the API server does not serve {obj['kind']}") from None
            dyn.resources.invalidate_cache()
            time.sleep(0.2)


def _exists(dyn: Any, obj: dict[str, Any]) -> bool:
    from kubernetes.client.exceptions import ApiException

    meta = obj["metadata"]
    try:
        resource_for(dyn, obj).get(name=meta["name"], namespace=meta.get("namespace"))
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def namespace_labels(api_client: Any, name: str) -> dict[str, str] | None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    with kube_errors():
        try:
            found = client.CoreV1Api(api_client).read_namespace(name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
    return dict((found.metadata.labels if found.metadata else None) or {})


def install(api_client: Any, options: InstallOptions) -> InstallResult:
    labels = namespace_labels(api_client, options.namespace)
    check(options, labels)
    dyn = dynamic_client(api_client)
    result = InstallResult()
    with kube_errors():
        for obj in objects(options):
            kind = obj["kind"]
            create_only = (kind == "Namespace" and labels is not None) or (
                kind == CLUSTER_IMAGE_POLICY and obj["metadata"]["name"] == DEFAULT_POLICY
            )
            if create_only and _exists(dyn, obj):
                result.kept.append(_label(obj))  # the user's namespace, the user's edits
                continue
            resource_for(dyn, obj).server_side_apply(
                body=obj,
                name=obj["metadata"]["name"],
                namespace=obj["metadata"].get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
            result.applied.append(_label(obj))
            if kind == "CustomResourceDefinition":
                _wait_established(dyn, obj)
    return result


def _wait_established(dyn: Any, obj: dict[str, Any], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    resource = resource_for(dyn, obj)
    while time.monotonic() < deadline:
        found = resource.get(name=obj["metadata"]["name"]).to_dict()
        conditions = (found.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            return
        time.sleep(0.1)
    raise InstallError(f"{_label(obj)} was not established within {seconds:g} s")


def uninstall(api_client: Any, namespace: str = NAME, keep_policies: bool = False) -> list[str]:
    """Remove what install applied, webhook configurations first (so nothing is
    locked while the rest goes). With ``keep_policies`` the CRDs, and so every
    policy, stay."""
    from kubernetes.client.exceptions import ApiException

    everything = objects(  # every object any install could have made
        InstallOptions(
            namespace=namespace,
            cosign_key=b"-",
            tls_cert=b"-",
            tls_key=b"-",
            default_policy=DefaultPolicy.ALLOW_ALL,
        )
    )
    webhooks = [o for o in everything if o["kind"].endswith("WebhookConfiguration")]
    crds = [o for o in everything if o["kind"] == "CustomResourceDefinition"]
    policies = [o for o in everything if o["kind"] == CLUSTER_IMAGE_POLICY]
    namespaces = [o for o in everything if o["kind"] == "Namespace"]
    rest = [o for o in everything if o not in webhooks + crds + policies + namespaces]
    order = webhooks + ([] if keep_policies else policies + crds) + list(reversed(rest))
    dyn = dynamic_client(api_client)
    removed = []
    with kube_errors():
        for obj in order:
            meta = obj["metadata"]
            try:
                resource_for(dyn, obj, seconds=0).delete(
                    name=meta["name"], namespace=meta.get("namespace")
                )
                removed.append(_label(obj))
            except ApiException as exc:
                if exc.status != 404:
                    raise
            except InstallError:
                continue  # a kind no longer served (its CRD went first)
        labels = namespace_labels(api_client, namespace)
        if labels is not None and labels.get("app.kubernetes.io/managed-by") == "moorage":
            resource_for(dyn, namespaces[0]).delete(name=namespace)  # only one install made
            removed.append(f"Namespace {namespace}")
    return removed


def flush_cache(api_client: Any, namespace: str = NAME) -> str:
    """A new cache generation: every replica forgets its verified digests as
    soon as its watch brings the change."""
    from kubernetes import client

    generation = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    with kube_errors():
        client.CoreV1Api(api_client).patch_namespaced_config_map(
            CONFIGMAP, namespace, {"data": {"generation": generation}}
        )
    return generation
