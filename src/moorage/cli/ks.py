"""``moorage ks``: the seed's ``ibmcloud ks`` pull-secret workflows against a
real cluster, reached through a registered kubeconfig."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from moorage.cli.client import CliError, Connection, config_dir, write_private_json
from moorage.cli.output import OutputOption, emit

app = typer.Typer(no_args_is_help=True, help="Clusters and their image pull secrets.")

ServerOption = Annotated[str | None, typer.Option("--server", help="Moorage server URL")]
KeyOption = Annotated[str | None, typer.Option("--apikey", help="API key to sign in with")]
ClusterOption = Annotated[str, typer.Option("--cluster", "-c", help="A registered cluster")]
REGISTRY = "container-registry"


def _clusters_path() -> Path:
    return config_dir() / "clusters.json"


def _clusters() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_clusters_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _core(cluster: str) -> Any:
    from kubernetes import client, config

    entry = _clusters().get(cluster)
    if entry is None:
        raise CliError(f"cluster {cluster!r} is not registered; run `moorage ks cluster-register`")
    try:
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=entry["kubeconfig"], context=entry.get("context")
        )
    except Exception as exc:  # the kubeconfig is the user's; say what is wrong in one line
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CliError(f"cannot use the kubeconfig of {cluster!r}: {first_line}") from None
    return client.CoreV1Api(api)


@app.command("cluster-register")
def cluster_register(
    name: str,
    kubeconfig: Annotated[Path, typer.Option("--kubeconfig", exists=True, dir_okay=False)],
    context: Annotated[str | None, typer.Option("--context")] = None,
    region: Annotated[str | None, typer.Option("--region")] = None,
) -> None:
    """Register a cluster by its kubeconfig (and context)."""
    if not name or len(name) > 63 or not name.replace("-", "").isalnum():
        raise CliError("cluster names are 1 to 63 letters, digits or dashes")
    clusters = _clusters()
    clusters[name] = {"kubeconfig": str(kubeconfig.resolve()), "context": context, "region": region}
    write_private_json(_clusters_path(), clusters)
    typer.echo(f"Registered cluster '{name}'")


@app.command("clusters")
def clusters(output: str = OutputOption) -> None:
    """List registered clusters."""
    rows = [{"name": n, **v} for n, v in sorted(_clusters().items())]
    emit(
        rows,
        [
            ("name", "NAME"),
            ("kubeconfig", "KUBECONFIG"),
            ("context", "CONTEXT"),
            ("region", "REGION"),
        ],
        output,
    )


@app.command("cluster-rm")
def cluster_rm(name: str) -> None:
    """Forget a registered cluster (nothing in the cluster changes)."""
    registered = _clusters()
    if registered.pop(name, None) is None:
        raise CliError(f"cluster {name!r} is not registered")
    write_private_json(_clusters_path(), registered)
    typer.echo(f"Removed cluster '{name}'")


@contextmanager
def _kubernetes_errors(cluster: str) -> Iterator[None]:
    """A Kubernetes API failure as one line: status and reason, or what broke."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        raise CliError(
            f"cluster {cluster}: Kubernetes API said {exc.status} {exc.reason}"
        ) from None
    except HTTPError as exc:
        raise CliError(
            f"cluster {cluster}: cannot reach the API server ({type(exc).__name__})"
        ) from None


def _hosts(connection: Connection) -> list[str]:
    return [
        f"{r['domain']}{connection.port_suffix}" for r in connection.request("GET", "/cr/regions")
    ]


def _ensure_service_id(connection: Connection, cluster: str) -> str:
    name = f"moorage-cluster-{cluster}"
    try:
        connection.request("GET", f"/iam/service-ids/{name}")
    except CliError:
        connection.request(
            "POST",
            "/iam/service-ids",
            {"name": name, "description": f"Pulls images from Moorage for cluster {cluster}"},
        )
    policies = connection.request("GET", f"/iam/service-ids/{name}/policies")
    if not any(
        p["roles"] == ["Reader"]
        and p["service_name"] == REGISTRY
        and not p["region"]
        and not p["resource"]
        for p in policies
    ):
        connection.request(
            "POST",
            f"/iam/service-ids/{name}/policies",
            {"roles": "Reader", "service_name": REGISTRY},
        )
    return name


@app.command("cluster-pull-secret-apply")
def cluster_pull_secret_apply(
    cluster: ClusterOption,
    combined: Annotated[
        bool,
        typer.Option("--combined", help="Also write one secret with every domain (all-… style)"),
    ] = False,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Give the cluster a service ID with Reader, store a fresh API key for it in
    pull secrets of the default namespace and attach them to its default service
    account. Run again to rotate the key: the new one is in place before the old
    one is deleted."""
    from moorage.kube.pullsecrets import (
        PullSecrets,
    )

    connection = Connection.resolve(server, apikey)
    core = _core(cluster)
    with _kubernetes_errors(cluster):
        core.list_namespaced_service_account("default", limit=1)  # reachable before keys exist
    service_id = _ensure_service_id(connection, cluster)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    created = connection.request(
        "POST",
        f"/iam/service-ids/{service_id}/api-keys",
        {
            "name": f"{cluster}-pull-{stamp}-{time.time_ns() % 1000000:06d}",
            "description": f"image pull secrets of cluster {cluster}",
        },
    )
    with _kubernetes_errors(cluster):
        result = _apply_secrets(PullSecrets(core), connection, created, combined)
    names, attached = result
    # Only now that every secret holds the new key do the old keys go.
    retired = []
    for key in connection.request("GET", f"/iam/service-ids/{service_id}/api-keys"):
        if key["id"] != created["id"] and key["name"].startswith(f"{cluster}-pull-"):
            connection.request("DELETE", f"/iam/api-keys/{key['id']}")
            retired.append(key["id"])
    emit(
        {
            "service_id": service_id,
            "api_key_id": created["id"],
            "secrets": names,
            "service_account_pull_secrets": attached,
            "retired_api_keys": retired,
        },
        None,
        output,
    )


def _apply_secrets(
    secrets: Any, connection: Connection, created: dict[str, Any], combined: bool
) -> tuple[list[str], list[str]]:
    from moorage.kube.pullsecrets import API_KEY_USER, KEY_ANNOTATION, dockerconfigjson, secret_name

    hosts = _hosts(connection)
    names = []
    annotations = {KEY_ANNOTATION: created["id"]}
    for host in hosts:
        name = secret_name("default", host)
        secrets.put_secret(
            "default", name, dockerconfigjson([host], API_KEY_USER, created["apikey"]), annotations
        )
        names.append(name)
    if combined:
        global_host = min(hosts, key=lambda h: h.count("."))
        name = "all-" + global_host.split(":", 1)[0].replace(".", "-")
        secrets.put_secret(
            "default", name, dockerconfigjson(hosts, API_KEY_USER, created["apikey"]), annotations
        )
        names.append(name)
    attached = secrets.attach("default", names)
    return names, attached


@app.command("pull-secret-copy")
def pull_secret_copy(
    cluster: ClusterOption,
    source: Annotated[str, typer.Option("--from")] = "default",
    to: Annotated[str | None, typer.Option("--to")] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces")] = False,
    selector: Annotated[str | None, typer.Option("--selector", "-l")] = None,
    attach: Annotated[
        bool,
        typer.Option(
            "--attach", help="Also add the copies to each namespace's default service account"
        ),
    ] = False,
    output: str = OutputOption,
) -> None:
    """Copy the registry pull secrets of one namespace to others, renamed
    ``<namespace>-<domain>``, without the source's uid, resourceVersion or owners."""
    from moorage.kube.pullsecrets import PullSecrets

    if sum(bool(x) for x in (to, all_namespaces, selector)) != 1:
        raise CliError("give exactly one of --to, --all-namespaces or --selector")
    secrets = PullSecrets(_core(cluster))
    with _kubernetes_errors(cluster):
        if to:
            targets = [to]
        else:
            targets = [
                n for n in secrets.namespaces(selector) if n != source and not n.startswith("kube-")
            ]
        copied = secrets.copy_many(source, targets, attach)
    report = [{"namespace": n, "secrets": names} for n, names in copied.items()]
    emit(report, [("namespace", "NAMESPACE"), ("secrets", "SECRETS")], output)


@app.command("sa-add-pull-secret")
def sa_add_pull_secret(
    cluster: ClusterOption,
    namespace: Annotated[str, typer.Option("--namespace", "-n")],
    secret: Annotated[list[str], typer.Option("--secret")],
    serviceaccount: Annotated[str, typer.Option("--serviceaccount")] = "default",
) -> None:
    """Add pull secrets to a service account: merged, never duplicated."""
    from moorage.kube.pullsecrets import PullSecrets

    with _kubernetes_errors(cluster):
        merged = PullSecrets(_core(cluster)).attach(namespace, secret, serviceaccount)
    typer.echo(f"{namespace}/{serviceaccount} imagePullSecrets: {', '.join(merged)}")


_READERS = {
    "pod": ("CoreV1Api", "read_namespaced_pod"),
    "deployment": ("AppsV1Api", "read_namespaced_deployment"),
    "replicaset": ("AppsV1Api", "read_namespaced_replica_set"),
    "statefulset": ("AppsV1Api", "read_namespaced_stateful_set"),
    "daemonset": ("AppsV1Api", "read_namespaced_daemon_set"),
    "job": ("BatchV1Api", "read_namespaced_job"),
    "cronjob": ("BatchV1Api", "read_namespaced_cron_job"),
}


def _registry_probe(connection: Connection) -> Any:
    import httpx
    import jwt

    from moorage.kube.diagnose import ProbeResult

    seen: dict[tuple[str, str, str], ProbeResult] = {}

    def probe(repository: str, username: str, password: str) -> ProbeResult:
        """One sign-in per (image, credential): a namespace of pods shares a few."""
        key = (repository, username, password)
        if key not in seen:
            seen[key] = _probe(repository, username, password)
        return seen[key]

    def _probe(repository: str, username: str, password: str) -> ProbeResult:
        host, _, name = repository.partition("/")
        try:
            reply = httpx.get(
                f"http://{host}/oauth/token",
                params={"service": host.split(":", 1)[0], "scope": f"repository:{name}:pull"},
                auth=(username, password),
                timeout=10,
            )
        except httpx.HTTPError as exc:
            return ProbeResult(False, False, False, f"unreachable ({type(exc).__name__})")
        if reply.status_code == 404:
            return ProbeResult(False, False, False, "no Moorage registry answers on this host")
        if reply.status_code != 200:
            try:
                message = reply.json()["errors"][0]["message"]
            except (ValueError, KeyError, IndexError, TypeError):
                message = f"HTTP {reply.status_code}"
            return ProbeResult(True, False, False, str(message))
        claims = jwt.decode(reply.json()["token"], options={"verify_signature": False})
        allowed = any(
            entry.get("name") == name and "pull" in entry.get("actions", [])
            for entry in claims.get("access", [])
        )
        return ProbeResult(
            True, True, allowed, "" if allowed else f"signed in, but no pull is granted on {name}"
        )

    return probe


def _explainer(connection: Connection) -> Any:
    regions = connection.request("GET", "/cr/regions")
    by_host = {r["domain"]: r for r in regions}
    legacy = {r["legacy_domain"]: r for r in regions if r.get("legacy_domain")}

    def explain(repository: str, username: str, password: str) -> tuple[str, str]:
        host, _, name = repository.partition("/")
        hostname = host.split(":", 1)[0]
        namespace = name.split("/", 1)[0]
        if username == "token":
            return (
                "the registry token is invalid, expired, removed, or for another region",
                "create one with moorage cr token-add, or move to API keys with "
                "moorage ks pull-secret-migrate",
            )
        if username != "iamapikey":
            return ("the registry refused these credentials", "check the secret's credentials")
        if hostname in legacy:
            region = legacy[hostname]
            return (
                f"{hostname} is a legacy domain: it accepts only registry tokens, not API keys",
                f"pull from {region['domain']} (region {region['name']}) instead",
            )
        details = connection.request("POST", "/iam/api-key-details", {"apikey": password})
        if not details.get("exists"):
            return (
                "the API key in the secret does not exist (deleted, rotated, or of another "
                "account)",
                "re-run moorage ks cluster-pull-secret-apply and copy the secrets again",
            )
        if details.get("locked"):
            return (
                f"API key {details['name']} ({details['id']}) is locked",
                f"moorage iam api-key-unlock {details['id']}",
            )
        region = by_host.get(hostname, {}).get("name", "?")
        scopes = (
            "; ".join(
                f"{','.join(p['roles'])} on {p['resource'] or 'every namespace'} in "
                f"{p['region'] or 'every region'}"
                for p in details.get("policies", [])
                if p["service_name"] == REGISTRY
            )
            or "none on container-registry"
        )
        owner = details["owner_id"]
        return (
            f"the key's owner may not pull namespace {namespace} in {region} (policies: "
            f"{scopes}), or the namespace is not its account's",
            f"moorage iam service-policy-create {owner} --roles Reader --service-name "
            f"{REGISTRY} --region {region} --resource-type namespace --resource {namespace}",
        )

    return explain


@app.command("diagnose")
def diagnose(
    cluster: ClusterOption,
    target: Annotated[
        str | None, typer.Argument(help="pod/NAME, deployment/NAME, job/NAME, ...")
    ] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "default",
    all_pods: Annotated[
        bool, typer.Option("--all-pods", help="Every pod of the namespace")
    ] = False,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Explain, container by container, whether the kubelet's pull will work and,
    when it will not, the exact fix. Exits 3 when a pull would be denied."""
    from kubernetes import client

    from moorage.kube.diagnose import diagnose as run_diagnosis

    if all_pods == bool(target):
        raise CliError("give a target such as pod/NAME, or --all-pods")
    targets: list[tuple[str, str]] = []
    if target:
        kind, _, name = target.partition("/")
        if kind.lower() not in _READERS or not name:
            raise CliError(f"target must be one of {', '.join(k + '/NAME' for k in _READERS)}")
        targets.append((kind.lower(), name))
    connection = Connection.resolve(server, apikey)
    core = _core(cluster)
    api_client = core.api_client
    probe, explain = _registry_probe(connection), _explainer(connection)
    rows = []
    with _kubernetes_errors(cluster):
        if all_pods:
            listed: Any = core.list_namespaced_pod(namespace)
            objects = [("pod", p) for p in listed.items]
        else:
            api_name, reader = _READERS[targets[0][0]]
            objects = [
                (
                    targets[0][0],
                    getattr(getattr(client, api_name)(api_client), reader)(
                        targets[0][1], namespace
                    ),
                )
            ]
        secrets = {
            s.metadata.name: api_client.sanitize_for_serialization(s)
            for s in core.list_namespaced_secret(namespace).items
        }
        accounts: dict[str, Any] = {}
        for kind, raw in objects:
            obj = api_client.sanitize_for_serialization(raw)
            obj.setdefault("kind", "Pod" if kind == "pod" else getattr(raw, "kind", kind))
            spec_account = _spec_account(obj)
            if spec_account not in accounts:
                try:
                    accounts[spec_account] = api_client.sanitize_for_serialization(
                        core.read_namespaced_service_account(spec_account, namespace)
                    )
                except client.exceptions.ApiException:
                    accounts[spec_account] = None
            for finding in run_diagnosis(
                obj, secrets, accounts[spec_account], probe, explain, namespace
            ):
                rows.append({"object": f"{kind}/{obj['metadata']['name']}", **finding.as_dict()})
    emit(
        rows,
        [
            ("object", "OBJECT"),
            ("container", "CONTAINER"),
            ("image", "IMAGE"),
            ("secrets", "SECRETS TRIED"),
            ("verdict", "VERDICT"),
            ("cause", "CAUSE"),
            ("fix", "FIX"),
        ],
        output,
    )
    if any(r["verdict"] == "denied" for r in rows):
        raise typer.Exit(3)


def _spec_account(obj: dict[str, Any]) -> str:
    from moorage.kube.diagnose import pod_spec

    spec, _ = pod_spec(obj)
    return str(spec.get("serviceAccountName") or "default")


@app.command("pull-secret-create")
def pull_secret_create(
    cluster: ClusterOption,
    namespace: Annotated[str, typer.Option("--namespace", "-n")],
    name: Annotated[str | None, typer.Option("--name", help="One secret for every domain")] = None,
    service_id: Annotated[str | None, typer.Option("--service-id")] = None,
    create_service_id: Annotated[bool, typer.Option("--create-service-id")] = False,
    roles: Annotated[str, typer.Option("--roles")] = "Reader",
    region: Annotated[str | None, typer.Option("--region")] = None,
    resource: Annotated[str | None, typer.Option("--resource", help="Registry namespace")] = None,
    docker_server: Annotated[str | None, typer.Option("--docker-server")] = None,
    docker_username: Annotated[str | None, typer.Option("--docker-username")] = None,
    docker_password: Annotated[str | None, typer.Option("--docker-password")] = None,
    attach: Annotated[bool, typer.Option("--attach")] = False,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Create pull secrets holding a scoped service ID's API key, or (with
    --docker-server) the credentials of any other registry."""
    from moorage.kube.pullsecrets import (
        API_KEY_USER,
        KEY_ANNOTATION,
        PullSecrets,
        dockerconfigjson,
        secret_name,
    )

    secrets = PullSecrets(_core(cluster))
    if docker_server:
        if service_id or create_service_id or not (docker_username and docker_password and name):
            raise CliError(
                "--docker-server needs --docker-username, --docker-password and "
                "--name, and no service ID options"
            )
        with _kubernetes_errors(cluster):
            secrets.put_secret(
                namespace, name, dockerconfigjson([docker_server], docker_username, docker_password)
            )
            if attach:
                secrets.attach(namespace, [name])
        emit({"secrets": [name], "server": docker_server}, None, output)
        return
    if bool(service_id) == create_service_id:
        raise CliError("give --service-id ID or --create-service-id")
    connection = Connection.resolve(server, apikey)
    with _kubernetes_errors(cluster):
        secrets.namespaces()  # the cluster answers before any key is made
    owner = service_id or f"{cluster}-{namespace}-id"
    if create_service_id:
        connection.request(
            "POST",
            "/iam/service-ids",
            {
                "name": owner,
                "description": f"Service ID for Moorage in Kubernetes cluster {cluster} namespace "
                f"{namespace}",
            },
        )
    else:
        connection.request("GET", f"/iam/service-ids/{owner}")
    policy = {
        "roles": roles,
        "service_name": REGISTRY,
        "region": region,
        "resource_type": "namespace" if resource else None,
        "resource": resource,
    }
    try:
        connection.request("POST", f"/iam/service-ids/{owner}/policies", policy)
    except CliError as exc:
        if exc.exit_code != 1:
            raise
    created = connection.request(
        "POST",
        f"/iam/service-ids/{owner}/api-keys",
        {
            "name": f"{cluster}-{namespace}-key-{time.time_ns() % 10**9}",
            "description": f"API key for service ID {owner} in Kubernetes cluster {cluster} "
            f"namespace {namespace}",
        },
    )
    regions = connection.request("GET", "/cr/regions")
    hosts = [
        f"{r['domain']}{connection.port_suffix}"
        for r in regions
        if region is None or r["name"] == region
    ]
    annotations = {KEY_ANNOTATION: created["id"]}
    with _kubernetes_errors(cluster):
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
    emit({"service_id": owner, "api_key_id": created["id"], "secrets": names}, None, output)


_WORKLOADS = [
    (
        "Deployment",
        "AppsV1Api",
        "list_deployment_for_all_namespaces",
        "replace_namespaced_deployment",
    ),
    (
        "StatefulSet",
        "AppsV1Api",
        "list_stateful_set_for_all_namespaces",
        "replace_namespaced_stateful_set",
    ),
    (
        "DaemonSet",
        "AppsV1Api",
        "list_daemon_set_for_all_namespaces",
        "replace_namespaced_daemon_set",
    ),
    ("Job", "BatchV1Api", "list_job_for_all_namespaces", None),
    ("CronJob", "BatchV1Api", "list_cron_job_for_all_namespaces", "replace_namespaced_cron_job"),
    ("Pod", "CoreV1Api", "list_pod_for_all_namespaces", "replace_namespaced_pod"),
]


def _containers(kind: str, obj: Any) -> list[Any]:
    spec = obj.spec
    if kind == "CronJob":
        spec = spec.job_template.spec.template.spec
    elif kind != "Pod":
        spec = spec.template.spec
    return [*(spec.init_containers or []), *(spec.containers or [])]


@app.command("pull-secret-migrate")
def pull_secret_migrate(
    cluster: ClusterOption,
    apply: Annotated[
        bool, typer.Option("--apply", help="Make the changes (default: dry run)")
    ] = False,
    rewrite_images: Annotated[
        bool,
        typer.Option(
            "--rewrite-images", help="Point workloads' legacy-domain images at the new domains"
        ),
    ] = False,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Move a cluster off deprecated registry tokens: find token secrets on legacy
    domains and the workloads still pulling from them, add API-key secrets for the
    new domains, optionally rewrite the images, and remove token secrets once
    nothing uses them. A dry run unless --apply."""
    import base64 as b64

    from kubernetes import client

    from moorage.kube.keyring import DOCKERCFG, DOCKERCONFIGJSON
    from moorage.kube.pullsecrets import PullSecrets, secret_name

    connection = Connection.resolve(server, apikey)
    core = _core(cluster)
    api_client = core.api_client
    suffix = connection.port_suffix
    moves = {
        f"{r['legacy_domain']}{suffix}": f"{r['domain']}{suffix}"
        for r in connection.request("GET", "/cr/regions")
        if r.get("legacy_domain")
    }
    plan: dict[str, Any] = {
        "token_secrets": [],
        "legacy_images": [],
        "created_secrets": [],
        "rewritten_images": [],
        "removed_secrets": [],
        "applied": apply,
    }
    with _kubernetes_errors(cluster):
        token_secrets: dict[tuple[str, str], list[str]] = {}
        for secret in core.list_secret_for_all_namespaces().items:
            if secret.type not in (DOCKERCONFIGJSON, DOCKERCFG) or not secret.data:
                continue
            field = ".dockerconfigjson" if secret.type == DOCKERCONFIGJSON else ".dockercfg"
            try:
                document = json.loads(b64.b64decode(secret.data.get(field, "")))
            except ValueError:
                continue
            auths = document.get("auths", {}) if secret.type == DOCKERCONFIGJSON else document
            hosts = [
                h
                for h, entry in auths.items()
                if h in moves
                and isinstance(entry, dict)
                and (entry.get("username") == "token" or _auth_user(entry) == "token")
            ]
            if hosts:
                key = (secret.metadata.namespace, secret.metadata.name)
                token_secrets[key] = hosts
                plan["token_secrets"].append(
                    {"namespace": key[0], "secret": key[1], "domains": hosts}
                )
        workloads = []
        for kind, api_name, lister, replacer in _WORKLOADS:
            api = getattr(client, api_name)(api_client)
            for obj in getattr(api, lister)().items:
                if kind == "Pod" and obj.metadata.owner_references:
                    continue  # rewritten through its owner
                legacy = [c for c in _containers(kind, obj) if c.image.split("/", 1)[0] in moves]
                for container in legacy:
                    host, _, rest = container.image.partition("/")
                    plan["legacy_images"].append(
                        {
                            "kind": kind,
                            "namespace": obj.metadata.namespace,
                            "name": obj.metadata.name,
                            "container": container.name,
                            "image": container.image,
                            "new_image": f"{moves[host]}/{rest}",
                        }
                    )
                if legacy:
                    workloads.append((kind, api, replacer, obj, legacy))
        namespaces = sorted(
            {ns for ns, _ in token_secrets} | {item["namespace"] for item in plan["legacy_images"]}
        )
        if not apply:
            emit(plan, None, "json" if output == "json" else output)
            return
        secrets = PullSecrets(core)
        defaults = {s.metadata.name for s in core.list_namespaced_secret("default").items}
        needed = [secret_name("default", h) for h in sorted(set(moves.values()))]
        if not all(n in defaults for n in needed):
            raise CliError(
                "run moorage ks cluster-pull-secret-apply first: the default "
                "namespace has no API-key pull secrets to copy"
            )
        for namespace in namespaces:
            if namespace != "default":
                plan["created_secrets"] += secrets.copy("default", namespace)
            secrets.attach(namespace, [secret_name(namespace, h) for h in set(moves.values())])
        still_legacy: set[str] = set()
        for kind, api, replacer, obj, legacy in workloads:
            if rewrite_images and replacer:
                for container in legacy:
                    host, _, rest = container.image.partition("/")
                    container.image = f"{moves[host]}/{rest}"
                    plan["rewritten_images"].append(
                        f"{kind}/{obj.metadata.namespace}/{obj.metadata.name}/{container.name}"
                    )
                getattr(api, replacer)(obj.metadata.name, obj.metadata.namespace, obj)
            else:
                still_legacy.add(obj.metadata.namespace)
        for (namespace, name), _hosts_used in token_secrets.items():
            if namespace in still_legacy:
                continue  # a workload here still pulls from a legacy domain
            for account in core.list_namespaced_service_account(namespace).items:
                refs = [r for r in (account.image_pull_secrets or []) if r.name != name]
                if len(refs) != len(account.image_pull_secrets or []):
                    account.image_pull_secrets = refs
                    core.replace_namespaced_service_account(
                        account.metadata.name, namespace, account
                    )
            core.delete_namespaced_secret(name, namespace)
            plan["removed_secrets"].append(f"{namespace}/{name}")
    emit(plan, None, "json" if output == "json" else output)


def _auth_user(entry: dict[str, Any]) -> str | None:
    from moorage.kube.keyring import KeyringError, decode_auth

    try:
        return decode_auth(str(entry.get("auth") or ""))[0] if entry.get("auth") else None
    except KeyringError:
        return None


@app.command("controller")
def controller(
    cluster: Annotated[str | None, typer.Option("--cluster", "-c")] = None,
    in_cluster: Annotated[
        bool,
        typer.Option(
            "--in-cluster", help="Use the pod's service account instead of a registered cluster"
        ),
    ] = False,
    selector: Annotated[str, typer.Option("--selector", "-l", help="Namespaces to manage")] = "",
    rotate_every: Annotated[
        float, typer.Option(help="Seconds between key rotations (0: never)")
    ] = 0,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Cluster name for the service ID (default: --cluster)"),
    ] = None,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Keep pull secrets present and attached in every namespace matching the
    selector (label moorage.io/pull-secrets=disabled opts out) and rotate the
    cluster's API key on a schedule."""
    import logging
    import signal

    from moorage.kube.controller import Controller

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if in_cluster == bool(cluster):
        raise CliError("give --cluster NAME or --in-cluster")
    if in_cluster:
        from kubernetes import client, config

        config.load_incluster_config()  # type: ignore[no-untyped-call]
        core = client.CoreV1Api()
    else:
        core = _core(cluster or "")
    label = name or cluster or "in-cluster"
    connection = Connection.resolve(server, apikey)
    hosts = _hosts(connection)
    service_id = _ensure_service_id(connection, label)
    current: dict[str, str] = {}

    def rotate() -> None:
        from moorage.kube.pullsecrets import PullSecrets

        created = connection.request(
            "POST",
            f"/iam/service-ids/{service_id}/api-keys",
            {
                "name": f"{label}-pull-{time.time_ns()}",
                "description": f"image pull secrets of cluster {label} (rotated)",
            },
        )
        _apply_secrets(PullSecrets(core), connection, created, combined=False)
        current["id"] = created["id"]

    def retire() -> None:
        for key in connection.request("GET", f"/iam/service-ids/{service_id}/api-keys"):
            if key["id"] != current.get("id") and key["name"].startswith(f"{label}-pull-"):
                connection.request("DELETE", f"/iam/api-keys/{key['id']}")

    from moorage.kube.pullsecrets import secret_name

    with _kubernetes_errors(label):
        listed: Any = core.list_namespaced_secret("default")
        present = {s.metadata.name for s in listed.items}
    if not all(secret_name("default", h) in present for h in hosts):
        rotate()  # first start: the sources do not exist yet
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    worker = Controller(
        core, hosts, selector, rotate if rotate_every else None, rotate_every, retire
    )
    with _kubernetes_errors(label):
        worker.run(lambda: stopping["now"])
