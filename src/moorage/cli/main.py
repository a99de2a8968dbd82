"""The ``moorage`` command: ``serve``, ``gc``, ``login``, and the ``iam``, ``cr``, ``ks``,
``tls``, ``enforce`` and ``va`` groups."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from moorage.cli import cr as cr_commands
from moorage.cli import enforce as enforce_commands
from moorage.cli import iam as iam_commands
from moorage.cli import ks as ks_commands
from moorage.cli import tls as tls_commands
from moorage.cli import va as va_commands
from moorage.cli.client import CliError, Connection, load_profile, save_profile
from moorage.cli.output import flow_help
from moorage.config import ConfigError, load_settings

app = typer.Typer(no_args_is_help=True, help="Moorage: a self-hosted private container registry.")
app.add_typer(iam_commands.app, name="iam")
app.add_typer(cr_commands.app, name="cr")
app.add_typer(ks_commands.app, name="ks")
app.add_typer(tls_commands.app, name="tls")
app.add_typer(enforce_commands.app, name="enforce")
app.add_typer(va_commands.app, name="va")


@app.command()
def login(
    server: Annotated[str, typer.Option("--server", help="e.g. https://localhost:5000")],
    apikey: Annotated[str, typer.Option("--apikey", prompt=True, hide_input=True)],
    region: Annotated[str | None, typer.Option("--region")] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            envvar="MOORAGE_CA_FILE",
            help="CA certificate to trust for this server (e.g. the ca.crt of `moorage tls init`)",
        ),
    ] = None,
) -> None:
    """Remember a server, an API key, a region and a CA in the login profile."""
    ca = str(ca_file.resolve()) if ca_file else None
    if ca is not None and not Path(ca).is_file():
        raise CliError(f"--ca-file {ca_file}: no such file")
    connection = Connection.resolve(server, apikey, ca)
    me = connection.request("GET", "/iam/me")
    profile = {
        "server": connection.server,
        "apikey": apikey,
        "region": region or load_profile().get("region") or "us-south",
    }
    if ca is not None:
        profile["ca_file"] = ca
    save_profile(profile)
    typer.echo(
        f"Logged in to {connection.server} as {me['id']} (account {me['account_id']}), "
        f"region {profile['region']}."
    )


@app.callback()
def _root() -> None:
    """Keeps ``serve`` a sub-command even while it is the only one."""


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [default: 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 5000]")] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", envvar="MOORAGE_DATA", help="Data directory [default: ./moorage-data]"
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML configuration file")] = None,
    auth: Annotated[
        str | None,
        typer.Option(help="'token' (default) or 'none', which opens the registry to all"),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="Certificate (PEM, chain after the leaf)")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="Its private key")] = None,
    tls_certs_dir: Annotated[
        Path | None,
        typer.Option("--tls-certs-dir", help="Directory of <name>.crt + <name>.key, chosen by SNI"),
    ] = None,
    insecure_http: Annotated[
        bool | None,
        typer.Option(
            "--insecure-http",
            help="Allow plain HTTP on an address other than loopback",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Processes serving the port, each with its own event loop [default: 1]",
        ),
    ] = None,
) -> None:
    """Start the registry."""
    from moorage.server import serve as run

    try:
        settings = load_settings(
            config,
            host=host,
            port=port,
            data_dir=str(data) if data else None,
            auth=auth,
            tls_cert=str(tls_cert) if tls_cert else None,
            tls_key=str(tls_key) if tls_key else None,
            tls_certs_dir=str(tls_certs_dir) if tls_certs_dir else None,
            allow_insecure_http=insecure_http,
            workers=workers,
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        run(settings)
    except ConfigError as exc:  # found while starting: data directory, certificates
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def gc(
    data: Annotated[Path | None, typer.Option("--data", envvar="MOORAGE_DATA")] = None,
    config: Annotated[Path | None, typer.Option("--config")] = None,
    grace_seconds: Annotated[
        float | None,
        typer.Option(help="Keep links and blobs touched more recently (default: [gc] grace)"),
    ] = None,
    upload_max_age: Annotated[
        int | None,
        typer.Option(help="Delete upload sessions older than this many seconds"),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
) -> None:
    """Drop links no manifest needs and delete blobs nothing links, and abandoned upload sessions.

    Safe while the registry serves; the scheduled collector does the same every [gc] interval."""
    from moorage.gc import collect_garbage

    try:
        settings = load_settings(config, data_dir=str(data) if data else None)
        report = collect_garbage(
            settings,
            grace_seconds=settings.gc_grace if grace_seconds is None else grace_seconds,
            dry_run=dry_run,
            upload_max_age=(
                settings.gc_upload_max_age if upload_max_age is None else upload_max_age
            ),
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(report.summary())


flow_help(app)


def main() -> None:
    try:
        app()
    except CliError as exc:
        typer.echo(f"FAILED: {exc.message}", err=True)
        sys.exit(exc.exit_code)
