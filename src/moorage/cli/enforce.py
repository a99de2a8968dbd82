"""``moorage enforce``: container image security enforcement on a cluster.
This module only parses arguments and prints; the webhook and the workflows
live in ``moorage.enforce``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from moorage.cli.client import CliError
from moorage.cli.ks import _api, _cluster, _reported
from moorage.cli.output import OutputOption, emit

app = typer.Typer(no_args_is_help=True, help="Admit only signed images into a cluster.")

ClusterOption = Annotated[str, typer.Option("--cluster", "-c", help="A registered cluster")]
NamespaceOption = Annotated[
    str, typer.Option("--namespace", "-n", help="The webhook's own namespace")
]
ExemptOption = Annotated[
    list[str] | None,
    typer.Option("--exempt-namespace", help="A namespace never checked (repeatable)"),
]
OptOutOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-opt-out",
        help="Namespaces (a name or glob, repeatable) whose label moorage.io/enforce=disabled "
        "exempts them; elsewhere the label is ignored",
    ),
]


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"{what} {path}: {exc.strerror}") from None


@app.command("serve")
def serve(
    tls_cert: Annotated[Path, typer.Option("--tls-cert", help="Serving certificate (PEM)")],
    tls_key: Annotated[Path, typer.Option("--tls-key", help="Its private key")],
    cluster: Annotated[str | None, typer.Option("--cluster", "-c")] = None,
    in_cluster: Annotated[
        bool, typer.Option("--in-cluster", help="Use the pod's service account")
    ] = False,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8443,
    namespace: NamespaceOption = "moorage-enforce",
    exempt_namespace: ExemptOption = None,
    allow_opt_out: OptOutOption = None,
    insecure_registry: Annotated[
        list[str] | None,
        typer.Option("--insecure-registry", help="HOST[:PORT] read over plain HTTP (repeatable)"),
    ] = None,
    ca_bundle: Annotated[
        Path | None, typer.Option("--ca-bundle", help="CA of private registries (PEM)")
    ] = None,
    allow_private: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-private",
            help="HOST[:PORT] or CIDR on a loopback, link-local, private or cluster address "
            "the webhook may fetch from (repeatable); refused otherwise",
        ),
    ] = None,
    token_service: Annotated[
        list[str] | None,
        typer.Option(
            "--token-service",
            help="REGISTRY=HOST[:PORT]: a token service on another host that may receive "
            "the registry's pull credentials (repeatable)",
        ),
    ] = None,
    cache_ttl: Annotated[float, typer.Option(help="Seconds a verified digest is remembered")] = 300,
    revalidate_after: Annotated[
        float,
        typer.Option(
            help="Seconds after which a remembered verdict's signatures are looked up again "
            "(0: at every admission)"
        ),
    ] = 2,
    deadline: Annotated[float, typer.Option(help="Seconds one admission may take")] = 8,
) -> None:
    """Serve the admission webhook (POST /mutate, /validate; GET /metrics, /healthz, /readyz)."""
    from moorage.egress import Egress
    from moorage.enforce.registry import Access
    from moorage.enforce.verify import ALWAYS_EXEMPT, Settings, namespace_patterns
    from moorage.enforce.webhook import ServeOptions, run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if in_cluster == bool(cluster):
        raise CliError("give --cluster NAME or --in-cluster")
    if not 0 <= revalidate_after <= 10:
        raise CliError("--revalidate-after is 0 to 10 seconds")
    try:
        exempt = namespace_patterns(exempt_namespace or [], globs=False)
        opt_out = namespace_patterns(allow_opt_out or [])
    except ValueError as exc:
        raise CliError(str(exc)) from None
    insecure = set(insecure_registry or [])
    allowed = list(allow_private or [])
    ca = str(ca_bundle) if ca_bundle else None
    if in_cluster:
        from kubernetes import client, config

        config.load_incluster_config()  # type: ignore[no-untyped-call]
        api = client.ApiClient()
    else:
        entry = _cluster(cluster or "")
        insecure |= set(entry.insecure_registries)
        allowed += entry.allow_private
        ca = ca or entry.ca_bundle
        api = _api(cluster or "")
    try:
        egress = Egress.parse(allowed, insecure, token_service or ())
    except ValueError as exc:
        raise CliError(str(exc)) from None
    for path in (tls_cert, tls_key):
        if not path.is_file():
            raise CliError(f"{path}: no such file")
    options = ServeOptions(
        host=host,
        port=port,
        tls_cert=str(tls_cert),
        tls_key=str(tls_key),
        access=Access(egress, ca),
        settings=Settings(
            namespace=namespace,
            exempt_namespaces=ALWAYS_EXEMPT | exempt,
            opt_out_namespaces=opt_out,
            cache_ttl=cache_ttl,
            revalidate_after=revalidate_after,
            deadline=deadline,
        ),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(api, options))


@app.command("certs")
def certs(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write ca.crt, server.crt…")],
    namespace: NamespaceOption = "moorage-enforce",
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Another name or address (repeatable)")
    ] = None,
    days: Annotated[int, typer.Option(help="Validity of the serving certificate")] = 397,
    ca_dir: Annotated[
        Path | None,
        typer.Option("--ca-dir", help="Where the CA's key lives [default: <dir>-ca]"),
    ] = None,
) -> None:
    """A CA (made once, reused; its key in a directory of its own, limited to
    these names) and a serving certificate for the webhook's Service,
    127.0.0.1 and ::1."""
    from moorage.enforce.install import service_names
    from moorage.pki import PkiError, issue

    names = [*service_names(namespace), *(name or []), "127.0.0.1", "::1"]
    try:
        files = issue(
            directory.resolve(),
            list(dict.fromkeys(names)),
            days,
            ca_dir.resolve() if ca_dir else None,
        )
    except PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"CA {files.ca_cert} (key {files.ca_key}); certificate {files.cert} (key {files.key}) "
        f"for {', '.join(names)}"
    )


@app.command("install")
def install(
    cluster: ClusterOption,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", help="An out-of-cluster webhook (https://HOST:PORT) instead of a Service"
        ),
    ] = None,
    namespace: NamespaceOption = "moorage-enforce",
    ca_file: Annotated[
        Path | None, typer.Option("--ca-file", help="CA that signed the webhook's certificate")
    ] = None,
    tls_dir: Annotated[
        Path | None,
        typer.Option("--tls-dir", help="ca.crt, server.crt, server.key (`moorage enforce certs`)"),
    ] = None,
    exempt_namespace: ExemptOption = None,
    allow_opt_out: OptOutOption = None,
    default_policy: Annotated[
        str, typer.Option(help="ClusterImagePolicy 'default': signed, allow-all or none")
    ] = "signed",
    cosign_key: Annotated[
        Path | None, typer.Option("--cosign-key", help="cosign.pub for secret moorage-signers")
    ] = None,
    gpg_key: Annotated[
        Path | None, typer.Option("--gpg-key", help="Armored GPG public key for moorage-signers")
    ] = None,
    timeout: Annotated[int, typer.Option(help="The API server's timeout for each call")] = 10,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the objects only")] = False,
) -> None:
    """Apply the CRDs, RBAC, the default ClusterImagePolicy and the mutating
    and validating webhook configurations (failurePolicy Fail)."""
    import yaml

    from moorage.enforce import install as workflow

    try:
        policy = workflow.DefaultPolicy(default_policy)
    except ValueError:
        raise CliError("--default-policy is signed, allow-all or none") from None
    if not 1 <= timeout <= 30:
        raise CliError("--timeout is 1 to 30 seconds")
    if tls_dir is not None:
        ca_file = ca_file or tls_dir / "ca.crt"
    if ca_file is None:
        raise CliError("give --ca-file or --tls-dir")
    ca = _read(ca_file, "--ca-file") or b""
    cert = _read(tls_dir / "server.crt", "--tls-dir") if tls_dir and not url else None
    key = _read(tls_dir / "server.key", "--tls-dir") if tls_dir and not url else None
    gpg = _read(gpg_key, "--gpg-key")
    options = workflow.InstallOptions(
        namespace=namespace,
        url=url,
        ca_bundle=ca,
        tls_cert=cert,
        tls_key=key,
        exempt_namespaces=tuple(exempt_namespace or ()),
        opt_out_namespaces=tuple(allow_opt_out or ()),
        default_policy=policy,
        cosign_key=_read(cosign_key, "--cosign-key"),
        gpg_key=gpg.decode(errors="replace") if gpg else None,
        timeout_seconds=timeout,
    )
    if dry_run:
        with _reported(cluster):
            workflow.check(options, None)
        typer.echo(yaml.safe_dump_all(workflow.objects(options), sort_keys=False), nl=False)
        return
    api = _api(cluster)
    with _reported(cluster):
        result = workflow.install(api, options)
    for label in result.applied:
        typer.echo(f"applied {label}")
    for label in result.kept:
        typer.echo(f"kept {label} (it exists)")


@app.command("uninstall")
def uninstall(
    cluster: ClusterOption,
    namespace: NamespaceOption = "moorage-enforce",
    keep_policies: Annotated[
        bool, typer.Option("--keep-policies", help="Keep the CRDs and every policy")
    ] = False,
) -> None:
    """Remove the webhook configurations first, then what else install applied."""
    from moorage.enforce.install import uninstall as workflow

    api = _api(cluster)
    with _reported(cluster):
        removed = workflow(api, namespace, keep_policies)
    for label in removed:
        typer.echo(f"removed {label}")


@app.command("import")
def import_portieris(
    cluster: ClusterOption,
    apply: Annotated[bool, typer.Option("--apply", help="Create them (default: dry run)")] = False,
    output: str = OutputOption,
) -> None:
    """Convert the cluster's Portieris ImagePolicies and ClusterImagePolicies
    to moorage.io ones, saying what could not be converted."""
    from moorage.enforce import portieris

    api = _api(cluster)
    with _reported(cluster):
        planned = portieris.plan(api)
        if apply:
            portieris.apply(api, planned)
    if not planned.found_crds:
        raise CliError("no Portieris policies: the portieris.cloud.ibm.com CRDs are not installed")
    rows: list[dict[str, Any]] = [
        {
            "source": c.source,
            "converted": c.object is not None,
            "applied": c.source in planned.applied,
            "notes": c.notes,
            **({"object": c.object} if output == "json" else {}),
        }
        for c in planned.converted
    ]
    if output == "json":
        emit(rows, None, output)
        return
    emit(
        [{**r, "notes": "; ".join(r["notes"]) or "-"} for r in rows],
        [
            ("source", "PORTIERIS POLICY"),
            ("converted", "CONVERTED"),
            ("applied", "APPLIED"),
            ("notes", "NOTES"),
        ],
        output,
    )
    if not apply:
        typer.echo("dry run: nothing was created; run again with --apply")


@app.command("cache-flush")
def cache_flush(cluster: ClusterOption, namespace: NamespaceOption = "moorage-enforce") -> None:
    """Make every webhook replica forget its verified digests now."""
    from moorage.enforce.install import flush_cache

    api = _api(cluster)
    with _reported(cluster):
        generation = flush_cache(api, namespace)
    typer.echo(f"cache generation {generation}: verified digests are forgotten")
