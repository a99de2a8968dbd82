"""``moorage ks``: the seed's ``ibmcloud ks`` pull-secret workflows against a
real cluster, reached through a registered kubeconfig. This module only parses
arguments and prints; the workflows live in ``moorage.kube``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from moorage.cli.client import CliError, Connection, config_dir, write_private_json
from moorage.cli.output import OutputOption, emit
from moorage.egress import Egress
from moorage.kube.clusters import Cluster
from moorage.kube.errors import KubeApiError, KubeError, KubeUnreachable

app = typer.Typer(no_args_is_help=True, help="Clusters and their image pull secrets.")

ServerOption = Annotated[str | None, typer.Option("--server", help="Moorage server URL")]
KeyOption = Annotated[str | None, typer.Option("--apikey", help="API key to sign in with")]
ClusterOption = Annotated[str, typer.Option("--cluster", "-c", help="A registered cluster")]


def _clusters_path() -> Path:
    return config_dir() / "clusters.json"


def _clusters() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_clusters_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cluster(name: str) -> Cluster:
    entry = _clusters().get(name)
    if entry is None:
        raise CliError(f"cluster {name!r} is not registered; run `moorage ks cluster-register`")
    return Cluster.from_json(name, entry)


@contextmanager
def _reported(cluster: str) -> Iterator[None]:
    """A workflow's typed failure as the one line the CLI prints."""
    try:
        yield
    except (KubeApiError, KubeUnreachable) as exc:
        raise CliError(f"cluster {cluster}: {exc.message}") from None
    except KubeError as exc:
        raise CliError(exc.message) from None


def _api(cluster: str) -> Any:
    with _reported(cluster):
        return _cluster(cluster).api_client()


@app.command("cluster-register")
def cluster_register(
    name: str,
    kubeconfig: Annotated[Path, typer.Option("--kubeconfig", exists=True, dir_okay=False)],
    context: Annotated[str | None, typer.Option("--context")] = None,
    region: Annotated[str | None, typer.Option("--region")] = None,
    insecure_registry: Annotated[
        list[str] | None,
        typer.Option(
            "--insecure-registry",
            help="HOST[:PORT] the nodes pull from over plain HTTP (repeatable); "
            "every other registry is reached over HTTPS only",
        ),
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option("--ca-bundle", exists=True, dir_okay=False, help="CA of private registries"),
    ] = None,
    allow_private: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-private",
            help="HOST[:PORT] or CIDR of a registry on a loopback, link-local, private or "
            "cluster address that diagnose and the webhook may reach (repeatable)",
        ),
    ] = None,
) -> None:
    """Register a cluster by its kubeconfig (and context)."""
    if not name or len(name) > 63 or not name.replace("-", "").isalnum():
        raise CliError("cluster names are 1 to 63 letters, digits or dashes")
    for host in insecure_registry or []:
        if not host or "/" in host or "://" in host:
            raise CliError(f"--insecure-registry takes HOST[:PORT], not {host!r}")
    try:
        Egress.parse(allow_private or ())
    except ValueError as exc:
        raise CliError(str(exc)) from None
    entry = Cluster(
        name,
        str(kubeconfig.resolve()),
        context,
        region,
        tuple(h.lower() for h in insecure_registry or ()),
        str(ca_bundle.resolve()) if ca_bundle else None,
        tuple(h.lower() for h in allow_private or ()),
    )
    clusters = _clusters()
    clusters[name] = entry.to_json()
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
            ("insecure_registries", "INSECURE REGISTRIES"),
            ("allow_private", "ALLOW PRIVATE"),
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
    from moorage.kube.workflows import apply_cluster_pull_secrets

    connection = Connection.resolve(server, apikey)
    api = _api(cluster)
    with _reported(cluster):
        result = apply_cluster_pull_secrets(api, connection, cluster, combined)
    emit(asdict(result), None, output)


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
    from moorage.kube.workflows import copy_pull_secrets

    if sum(bool(x) for x in (to, all_namespaces, selector)) != 1:
        raise CliError("give exactly one of --to, --all-namespaces or --selector")
    api = _api(cluster)
    with _reported(cluster):
        copied = copy_pull_secrets(api, source, to=to, selector=selector or "", attach=attach)
    report = [asdict(c) for c in copied]
    emit(report, [("namespace", "NAMESPACE"), ("secrets", "SECRETS")], output)


@app.command("sa-add-pull-secret")
def sa_add_pull_secret(
    cluster: ClusterOption,
    namespace: Annotated[str, typer.Option("--namespace", "-n")],
    secret: Annotated[list[str], typer.Option("--secret")],
    serviceaccount: Annotated[str, typer.Option("--serviceaccount")] = "default",
) -> None:
    """Add pull secrets to a service account: merged, never duplicated."""
    from moorage.kube.workflows import attach_pull_secrets

    api = _api(cluster)
    with _reported(cluster):
        merged = attach_pull_secrets(api, namespace, secret, serviceaccount)
    typer.echo(f"{namespace}/{serviceaccount} imagePullSecrets: {', '.join(merged)}")


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
    when it will not, the exact fix. Moorage's domains are checked by asking the
    Moorage API; any other registry only with its own credentials, over HTTPS
    unless the cluster registration lists it as insecure. Exits 3 when a pull
    would be denied."""
    from moorage.kube.diagnose import diagnose_objects
    from moorage.kube.registry_check import CredentialChecker, RegistryCheck
    from moorage.kube.workloads import KINDS, UnknownKind, kind_named

    if all_pods == bool(target):
        raise CliError("give a target such as pod/NAME, or --all-pods")
    targets = None
    if target:
        kind_name, _, name = target.partition("/")
        try:
            kind = kind_named(kind_name.lower())
        except UnknownKind:
            kind = None
        if kind is None or not name:
            raise CliError(f"target must be one of {', '.join(k.name + '/NAME' for k in KINDS)}")
        targets = [(kind, name)]
    connection = Connection.resolve(server, apikey)
    entry = _cluster(cluster)
    api = _api(cluster)
    with _reported(cluster):
        checker = CredentialChecker(
            connection,
            RegistryCheck(
                entry.insecure_registries, entry.ca_bundle, allow_private=entry.allow_private
            ),
        )
        found = diagnose_objects(api, namespace, checker, targets)
    rows = [d.as_row() for d in found]
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
    from moorage.kube.workflows import create_registry_pull_secret, create_service_id_pull_secrets

    if docker_server:
        if service_id or create_service_id or not (docker_username and docker_password and name):
            raise CliError(
                "--docker-server needs --docker-username, --docker-password and "
                "--name, and no service ID options"
            )
        api = _api(cluster)
        with _reported(cluster):
            created = create_registry_pull_secret(
                api, namespace, name, docker_server, docker_username, docker_password, attach
            )
        emit({"secrets": created.secrets, "server": created.server}, None, output)
        return
    if bool(service_id) == create_service_id:
        raise CliError("give --service-id ID or --create-service-id")
    connection = Connection.resolve(server, apikey)
    api = _api(cluster)
    with _reported(cluster):
        created = create_service_id_pull_secrets(
            api,
            connection,
            cluster,
            namespace,
            service_id=service_id,
            roles=roles,
            region=region,
            resource=resource,
            name=name,
            attach=attach,
        )
    emit(
        {
            "service_id": created.service_id,
            "api_key_id": created.api_key_id,
            "secrets": created.secrets,
        },
        None,
        output,
    )


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
    from moorage.kube import migrate

    connection = Connection.resolve(server, apikey)
    api = _api(cluster)
    with _reported(cluster):
        planned = migrate.plan(api, connection)
        done = migrate.apply(api, planned, rewrite_images) if apply else migrate.MigrationResult()
    report = {
        "token_secrets": [asdict(s) for s in planned.token_secrets],
        "legacy_images": [asdict(i) for i in planned.legacy_images],
        **asdict(done),
        "applied": apply,
    }
    emit(report, None, output)


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
    import threading

    from moorage.kube.controller import Controller
    from moorage.kube.workflows import ClusterKeys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if in_cluster == bool(cluster):
        raise CliError("give --cluster NAME or --in-cluster")
    if in_cluster:
        from kubernetes import client, config

        config.load_incluster_config()  # type: ignore[no-untyped-call]
        api = client.ApiClient()
    else:
        api = _api(cluster or "")
    label = name or cluster or "in-cluster"
    connection = Connection.resolve(server, apikey)
    keys = ClusterKeys(connection, label)
    keys.ensure_service_id()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = Controller(
        api, connection.registry_hosts(), keys, selector=selector, rotate_every=rotate_every
    )
    with _reported(label):
        worker.run(stop)
