"""Why a pod can or cannot pull its images, explained before the kubelet tries.

It replays the kubelet: only the pod's own ``imagePullSecrets`` count; a
workload's pods not yet created get the service account's secrets copied in by
the ServiceAccount admission plugin, and only when the template lists none.
The keyring (``moorage.kube.keyring``) picks the credentials; a ``Probe`` then
asks the registry whether each one signs in and may pull the image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from moorage.kube.keyring import Keyring, KeyringError, repository_of

WORKLOAD_TEMPLATES = {
    "Deployment": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


@dataclass(frozen=True)
class ProbeResult:
    reachable: bool  # a Moorage registry answered for this host
    authenticated: bool
    allowed: bool
    message: str = ""


class Probe(Protocol):
    def __call__(self, repository: str, username: str, password: str) -> ProbeResult: ...


@dataclass
class Finding:
    container: str
    image: str
    secrets: list[str] = field(default_factory=list)  # secrets whose entries were tried
    verdict: str = "denied"  # "ok", "denied" or "unknown"
    cause: str = ""
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pod_spec(obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The pod spec of a Pod or workload, and whether its pods are yet to be created."""
    kind = obj.get("kind", "Pod")
    if kind == "Pod":
        return obj.get("spec") or {}, False
    path = WORKLOAD_TEMPLATES.get(kind)
    if path is None:
        raise ValueError(f"cannot diagnose a {kind}")
    node: Any = obj
    for step in path:
        node = (node or {}).get(step)
    return node or {}, True


def effective_pull_secrets(
    spec: dict[str, Any], future_pods: bool, service_account: dict[str, Any] | None
) -> tuple[list[str], str]:
    """The secret names the kubelet will use, and where they come from."""
    own = [ref.get("name", "") for ref in spec.get("imagePullSecrets") or []]
    if own or not future_pods:
        return own, "the pod's own imagePullSecrets"
    inherited = [
        ref.get("name", "") for ref in (service_account or {}).get("imagePullSecrets") or []
    ]
    account = spec.get("serviceAccountName") or "default"
    return inherited, f"copied from service account {account} when each pod is created"


def diagnose(
    obj: dict[str, Any],
    secrets: dict[str, dict[str, Any]],
    service_account: dict[str, Any] | None,
    probe: Probe,
    explain_denial: Callable[[str, str, str], tuple[str, str]],
    namespace: str,
) -> list[Finding]:
    """One finding per container. ``secrets`` are the namespace's secrets by name;
    ``explain_denial(repository, username, password)`` turns a refusal into
    (cause, fix) using what the registry knows about the credential."""
    spec, future = pod_spec(obj)
    names, origin = effective_pull_secrets(spec, future, service_account)
    account = spec.get("serviceAccountName") or "default"
    missing = [n for n in names if n not in secrets]
    ring = Keyring()
    broken: list[str] = []
    for name in names:
        if name in secrets:
            secret = secrets[name]
            try:
                ring.add_secret(
                    secret.get("type", ""), secret.get("data") or {}, f"{namespace}/{name}"
                )
            except KeyringError as exc:
                broken.append(str(exc))
    findings = []
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for container in containers:
        image = container.get("image", "")
        repository = repository_of(image)
        finding = Finding(container.get("name", ""), image)
        credentials = ring.lookup(repository)
        finding.secrets = [c.source.split("/", 1)[1] for c in credentials]
        host = repository.split("/", 1)[0]
        if not credentials:
            finding.cause, finding.fix = _no_credentials(
                names,
                origin,
                missing,
                broken,
                ring.problems,
                host,
                namespace,
                account,
                secrets,
                future,
            )
            findings.append(finding)
            continue
        for credential in credentials:
            result = probe(repository, credential.username, credential.password)
            if not result.reachable:
                finding.verdict = "unknown"
                finding.cause = f"{host} is not a Moorage registry domain: {result.message}"
                finding.fix = "check the image's registry address"
                continue
            if result.authenticated and result.allowed:
                finding.verdict = "ok"
                finding.cause = f"pulls with secret {credential.source} ({origin})"
                finding.fix = ""
                break
            finding.cause, finding.fix = explain_denial(
                repository, credential.username, credential.password
            )
            if not finding.cause:
                finding.cause = result.message or "the registry refused the credential"
        findings.append(finding)
    return findings


def _no_credentials(
    names: list[str],
    origin: str,
    missing: list[str],
    broken: list[str],
    problems: list[str],
    host: str,
    namespace: str,
    account: str,
    secrets: dict[str, dict[str, Any]],
    future: bool,
) -> tuple[str, str]:
    domain_secret = f"{namespace}-" + host.split(":", 1)[0].replace(".", "-")
    if missing:
        return (
            f"secret(s) {', '.join(missing)} named by {origin} are not in namespace {namespace}",
            f"moorage ks pull-secret-copy --cluster <cluster> --from default --to {namespace}",
        )
    if broken or problems:
        return (
            "; ".join(broken + problems),
            "recreate the secret with moorage ks pull-secret-copy",
        )
    if not names:
        if domain_secret in secrets:
            return (
                f"secret {domain_secret} exists but neither the pod nor service account "
                f"{account} lists it",
                f"moorage ks sa-add-pull-secret --cluster <cluster> --namespace {namespace} "
                f"--serviceaccount {account} --secret {domain_secret}"
                + ("" if future else ", then recreate the pod"),
            )
        return (
            f"no image pull secrets ({origin}) and none for {host} in namespace {namespace}",
            f"moorage ks pull-secret-copy --cluster <cluster> --from default --to {namespace}"
            f" --attach" + ("" if future else ", then recreate the pod"),
        )
    return (
        f"none of the secrets {', '.join(names)} has an entry for {host}",
        f"add {domain_secret}: moorage ks pull-secret-copy --cluster <cluster> --to "
        f"{namespace}, then moorage ks sa-add-pull-secret ... --secret {domain_secret}",
    )
