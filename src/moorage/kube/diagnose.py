"""Why a pod can or cannot pull its images, explained before the kubelet tries.

It replays the kubelet: only the pod's own ``imagePullSecrets`` count; a
workload's pods not yet created get the service account's secrets copied in by
the ServiceAccount admission plugin, and only when the template lists none.
The keyring (``moorage.kube.keyring``) picks the credentials; a credential
check (``moorage.kube.registry_check``) then asks, without sending the
credential anywhere it does not belong, whether each one may pull the image."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from moorage.kube.errors import kube_errors
from moorage.kube.keyring import Keyring, KeyringError, repository_of
from moorage.kube.registry_check import CredentialCheck, ImageRef, Verdict
from moorage.kube.workloads import BY_KIND, WorkloadKind


@dataclass
class Finding:
    container: str
    image: str
    secrets: list[str] = field(default_factory=list)  # secrets whose entries were tried
    verdict: Verdict = Verdict.DENIED
    cause: str = ""
    fix: str = ""


def pod_spec(obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The pod spec of a Pod or workload, and whether its pods are yet to be created."""
    kind = BY_KIND.get(obj.get("kind") or "Pod")
    if kind is None:
        raise ValueError(f"cannot diagnose a {obj.get('kind')}")
    return kind.pod_spec(obj), kind.kind != "Pod"


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
    check: CredentialCheck,
    namespace: str,
) -> list[Finding]:
    """One finding per container. ``secrets`` are the namespace's secrets by name;
    ``check`` asks, without leaking the credential, whether it may pull."""
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
        ref = ImageRef.parse(image)
        results = [(c, check(ref, c)) for c in credentials]  # the kubelet tries them all
        granted = [(c, r) for c, r in results if r.verdict == Verdict.OK]
        if granted:
            finding.verdict = Verdict.OK
            finding.cause = f"pulls with secret {granted[0][0].source} ({origin})"
        else:
            # Unknown when any credential could not be checked; the first (most
            # specific) credential's explanation otherwise.
            worst = next((r for _, r in results if r.verdict == Verdict.UNKNOWN), results[0][1])
            finding.verdict, finding.cause, finding.fix = worst.verdict, worst.cause, worst.fix
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


@dataclass(frozen=True)
class Diagnosis:
    object: str  # "pod/web-1", "deployment/web"
    finding: Finding

    def as_row(self) -> dict[str, Any]:
        return {"object": self.object, **asdict(self.finding)}


def diagnose_objects(
    api_client: Any,
    namespace: str,
    check: CredentialCheck,
    targets: list[tuple[WorkloadKind, str]] | None = None,
) -> list[Diagnosis]:
    """Diagnose named objects of a namespace, or (``targets`` None) every pod."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    pod = BY_KIND["Pod"]
    with kube_errors():
        if targets is None:
            objects = [(pod, p) for p in pod.list(api_client, namespace)]
        else:
            objects = [(kind, kind.read(api_client, namespace, name)) for kind, name in targets]
        secrets: dict[str, dict[str, Any]] = {
            str(s["metadata"]["name"]): s
            for s in api_client.sanitize_for_serialization(
                core.list_namespaced_secret(namespace).items
            )
        }
        accounts: dict[str, dict[str, Any] | None] = {}
        found = []
        for kind, raw in objects:
            obj = api_client.sanitize_for_serialization(raw)
            obj["kind"] = kind.kind
            spec, _ = pod_spec(obj)
            account = str(spec.get("serviceAccountName") or "default")
            if account not in accounts:
                try:
                    accounts[account] = api_client.sanitize_for_serialization(
                        core.read_namespaced_service_account(account, namespace)
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    accounts[account] = None
            label = f"{kind.name}/{obj['metadata']['name']}"
            found += [
                Diagnosis(label, f)
                for f in diagnose(obj, secrets, accounts[account], check, namespace)
            ]
    return found
