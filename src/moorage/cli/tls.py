"""``moorage tls init``: a private CA and a server certificate for the
configured domains, and how to make each client trust them."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from moorage.config import ConfigError, load_settings

app = typer.Typer(no_args_is_help=True, help="TLS certificates for the registry.")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


@app.command("init")
def init(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to write the files [default: <data>/tls]"),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", envvar="MOORAGE_DATA")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML configuration file")] = None,
    days: Annotated[int, typer.Option(help="Validity of the server certificate")] = 397,
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="Another host name or address to include (repeatable)"),
    ] = None,
    ca_dir: Annotated[
        Path | None,
        typer.Option(
            "--ca-dir",
            help="Where the CA's key lives, apart from what the server reads "
            "[default: <dir>-ca, or <data>-ca without --dir]",
        ),
    ] = None,
    new_ca: Annotated[
        bool, typer.Option("--new-ca", help="Replace the CA (clients must trust the new one)")
    ] = False,
) -> None:
    """Create a CA (once) and a server certificate for every configured domain.

    Run it again to renew the server certificate or after adding a region
    under the base domain: the CA stays, so clients that trust it need
    nothing new. The CA may sign only the configured domains (and their
    subdomains) and the addresses given."""
    from moorage.datadir import restrict_umask
    from moorage.pki import PkiError, default_ca_dir, issue, trust_instructions
    from moorage.server import regions_of

    restrict_umask()
    try:
        settings = load_settings(config, data_dir=str(data) if data else None)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not 1 <= days <= 3650:
        typer.echo("error: --days must be between 1 and 3650", err=True)
        raise typer.Exit(2)
    regions = regions_of(settings)
    domains: list[str] = []
    for region in regions.regions.values():
        domains += [region.domain] + ([region.legacy_domain] if region.legacy_domain else [])
    names = list(dict.fromkeys([*domains, settings.base_domain, *(name or [])]))
    names += ["127.0.0.1", "::1"]
    target = (directory or settings.data_path / "tls").resolve()
    # By default the CA's key stays out of the data directory the server owns.
    if ca_dir is None and directory is None:
        ca_dir = default_ca_dir(settings.data_path)
    try:
        files = issue(target, names, days, ca_dir.resolve() if ca_dir else None, new_ca=new_ca)
    except PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

    template = settings.public_url or (
        "https://{domain}" + ("" if settings.port == 443 else f":{settings.port}")
    )
    hosts = [n for n in names if not _is_ip(n)]
    addresses = [template.split("://", 1)[1].replace("{domain}", h) for h in hosts]
    api_domain = next((r.domain for r in regions.regions.values() if r.is_global), hosts[0])
    if files.ca_key_moved_from is not None:
        typer.echo(
            f"Moved the CA key {files.ca_key_moved_from} to {files.ca_key}: the server "
            "never reads it"
        )
    if files.ca_created:
        typer.echo(f"Created a private CA: {files.ca_cert} (its key: {files.ca_key})")
        if new_ca:
            typer.echo("The CA is new: every client must trust the new ca.crt (see below)")
    else:
        typer.echo(f"Reused the CA in {files.ca_cert} (its key: {files.ca_key})")
    if files.ca_unconstrained:
        typer.echo(
            "warning: this CA predates name constraints and may sign any name; "
            "`moorage tls init --new-ca` makes one limited to the configured domains",
            err=True,
        )
    typer.echo(
        f"Issued {files.cert} (key {files.key}), valid until {files.not_after:%Y-%m-%d}, for:\n"
        f"    {', '.join(names)}"
    )
    typer.echo(trust_instructions(files, addresses, template.replace("{domain}", api_domain)))
