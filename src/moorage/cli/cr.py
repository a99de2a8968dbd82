"""``moorage cr``: the seed's ``ibmcloud cr`` commands, on the targeted region."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from moorage.cli.client import (
    CliError,
    Connection,
    load_profile,
    save_profile,
    write_private_json,
)
from moorage.cli.output import OutputOption, emit
from moorage.client import segment

app = typer.Typer(no_args_is_help=True, help="Registry namespaces, images and registry tokens.")

ServerOption = Annotated[str | None, typer.Option("--server", help="Moorage server URL")]
KeyOption = Annotated[str | None, typer.Option("--apikey", help="API key to sign in with")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Do not ask for confirmation")]


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


@app.command("api")
def api(output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None) -> None:
    """Show the targeted region and the registry address its clients use."""
    connection = Connection.resolve(server, apikey)
    emit(
        {
            "Registry": connection.region_domain(),
            "Region": connection.region,
            "API endpoint": f"{connection.server}/api/v1",
        },
        None,
        output,
    )


@app.command("region-set")
def region_set(region: str, server: ServerOption = None, apikey: KeyOption = None) -> None:
    """Target a region for the commands that follow."""
    connection = Connection.resolve(server, apikey)
    names = [r["name"] for r in connection.request("GET", "/cr/regions")]
    if region not in names:
        raise CliError(f"unknown region {region!r}; choose one of {', '.join(names)}")
    profile = load_profile()
    profile["region"] = region
    save_profile(profile)
    typer.echo(
        f"The region is set to '{region}', the registry is "
        f"'{Connection.resolve(server, apikey).region_domain(region)}'."
    )


@app.command("region")
def region(server: ServerOption = None, apikey: KeyOption = None) -> None:
    """Show the targeted region."""
    typer.echo(Connection.resolve(server, apikey).region)


def _default_authfile() -> Path:
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return Path(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    return Path.home() / ".docker" / "config.json"


@app.command("login")
def login(
    authfile: Annotated[Path | None, typer.Option("--authfile", help="auth.json to write")] = None,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Write the API key for the targeted registry into a Docker/Podman auth file."""
    connection = Connection.resolve(server, apikey)
    host = connection.region_domain()
    connection.request("GET", "/iam/me")  # refuse to write a key that does not work
    path = authfile or _default_authfile()
    try:
        config: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        raise CliError(f"{path} is not valid JSON; not overwriting it") from None
    auth = base64.b64encode(f"iamapikey:{connection.apikey}".encode()).decode()
    config.setdefault("auths", {})[host] = {"auth": auth}
    write_private_json(path, config)
    typer.echo(f"Logged in to '{host}' (credentials in {path}).")


@app.command("namespace-add")
def namespace_add(
    name: str, output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """Add a namespace to the targeted region."""
    connection = Connection.resolve(server, apikey)
    row = connection.request("POST", f"/cr/{connection.region}/namespaces", {"name": name})
    if output == "json":
        emit(row, None, output)
    else:
        typer.echo(f"Successfully added namespace '{name}' in {connection.region}")


@app.command("namespaces")
@app.command("namespace-list")
def namespace_list(
    output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """List your namespaces in the targeted region (also: namespaces)."""
    connection = Connection.resolve(server, apikey)
    rows = connection.request("GET", f"/cr/{connection.region}/namespaces")
    emit(rows, [("name", "NAMESPACE"), ("created_at", "CREATED")], output)


@app.command("namespace-rm")
def namespace_rm(
    name: str, force: Force = False, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """Remove a namespace and every image in it."""
    connection = Connection.resolve(server, apikey)
    if not force:
        typer.confirm(f"Remove namespace '{name}' and all images in it?", abort=True)
    connection.request("DELETE", f"/cr/{connection.region}/namespaces/{segment(name)}")
    typer.echo(f"Successfully removed namespace '{name}'")


IMAGE_COLUMNS = [
    ("repository", "REPOSITORY"),
    ("tag", "TAG"),
    ("digest", "DIGEST"),
    ("namespace", "NAMESPACE"),
    ("created", "CREATED"),
    ("size", "SIZE"),
    ("security_status", "SECURITY STATUS"),
]


Restrict = Annotated[str | None, typer.Option("--restrict", help="Only this namespace")]
IncludeVa = Annotated[
    bool,
    typer.Option("--include-va", help="Show the Vulnerability Advisor's counts of issues"),
]
VA_COLUMNS = [
    ("vulnerabilities", "VULNERABILITIES"),
    ("fixable", "FIXABLE"),
    ("configuration_issues", "CONFIG ISSUES"),
    ("exempted", "EXEMPTED"),
]


@app.command("image-list")
@app.command("images")
def images(
    output: str = OutputOption,
    restrict: Restrict = None,
    include_va: IncludeVa = False,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """List the images of your namespaces in the targeted region (also: image-list),
    with the Vulnerability Advisor's status of each."""
    connection = Connection.resolve(server, apikey)
    host = connection.region_domain()
    rows = connection.images(include_va)
    columns = IMAGE_COLUMNS + (VA_COLUMNS if include_va else [])
    if restrict:
        rows = [r for r in rows if r["namespace"] == restrict]
    if output != "json":
        rows = [
            {
                **r,
                "repository": f"{host}/{r['repository']}",
                "digest": r["digest"][7:19],
                "size": _human_size(r["size"]),
                "created": r["created"][:19],
                **(r.get("va") or {}),
                "security_status": r["security_status"],
            }
            for r in rows
        ]
    emit(rows, columns, output)


@app.command("image-rm")
def image_rm(image: str, server: ServerOption = None, apikey: KeyOption = None) -> None:
    """Delete an image: its digest goes, with every tag that names it."""
    connection = Connection.resolve(server, apikey)
    result = connection.request("DELETE", f"/cr/{connection.region}/image", image=image)
    typer.echo(f"Deleted image '{result['deleted']}'")


@app.command("image-tag")
def image_tag(
    source: str, target: str, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """Tag an image, in its repository or into another one of the region."""
    connection = Connection.resolve(server, apikey)
    result = connection.request(
        "POST", f"/cr/{connection.region}/image-tags", {"source": source, "target": target}
    )
    typer.echo(f"Tagged '{result['tagged']}' ({result['digest']})")


@app.command("image-inspect")
def image_inspect(image: str, server: ServerOption = None, apikey: KeyOption = None) -> None:
    """Show an image's digest, manifest, signatures and attestations (kind, signer,
    verified; an attestation's predicate type)."""
    connection = Connection.resolve(server, apikey)
    emit(connection.request("GET", f"/cr/{connection.region}/image", image=image), None, "json")


SIGNER_COLUMNS = [("name", "NAME"), ("kind", "KIND"), ("key_ids", "KEYS"), ("created_at", "ADDED")]


def _signers_path(connection: Connection, namespace: str) -> str:
    return f"/cr/{connection.region}/namespaces/{segment(namespace)}/signers"


@app.command("signer-add")
def signer_add(
    namespace: str,
    name: str,
    key: Annotated[
        Path,
        typer.Option(
            "--key", exists=True, dir_okay=False, help="cosign public key (PEM) or armored GPG key"
        ),
    ],
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Trust a public key to sign the namespace's images."""
    connection = Connection.resolve(server, apikey)
    body = {"name": name, "public_key": key.read_text()}
    row = connection.request("POST", _signers_path(connection, namespace), body)
    emit(
        row if output == "json" else {k: row[k] for k in ("name", "kind", "key_ids")}, None, output
    )


@app.command("signers")
def signers(
    namespace: str,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """List the keys a namespace trusts to sign its images."""
    connection = Connection.resolve(server, apikey)
    emit(connection.request("GET", _signers_path(connection, namespace)), SIGNER_COLUMNS, output)


@app.command("signer-rm")
def signer_rm(
    namespace: str, name: str, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """Stop trusting a signer's key."""
    connection = Connection.resolve(server, apikey)
    connection.request("DELETE", f"{_signers_path(connection, namespace)}/{segment(name)}")
    typer.echo(f"Removed signer {name} of {namespace}")


TOKEN_COLUMNS = [
    ("id", "TOKEN ID"),
    ("readwrite", "READWRITE"),
    ("expires_at", "EXPIRY"),
    ("description", "DESCRIPTION"),
]


@app.command("token-add")
def token_add(
    description: Annotated[str, typer.Option("--description")] = "",
    non_expiring: Annotated[bool, typer.Option("--non-expiring")] = False,
    readwrite: Annotated[bool, typer.Option("--readwrite")] = False,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Add a (deprecated) registry token for the targeted region's legacy domain."""
    connection = Connection.resolve(server, apikey)
    row = connection.request(
        "POST",
        f"/cr/{connection.region}/tokens",
        {"description": description, "non_expiring": non_expiring, "readwrite": readwrite},
    )
    emit(
        {"Token identifier": row["id"], "Token": row["token"]} if output != "json" else row,
        None,
        output,
    )


@app.command("token-list")
def token_list(
    output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """List the registry tokens of the targeted region."""
    connection = Connection.resolve(server, apikey)
    emit(connection.request("GET", f"/cr/{connection.region}/tokens"), TOKEN_COLUMNS, output)


@app.command("token-get")
def token_get(token_id: str, server: ServerOption = None, apikey: KeyOption = None) -> None:
    """Print a registry token's value."""
    connection = Connection.resolve(server, apikey)
    typer.echo(
        connection.request("GET", f"/cr/{connection.region}/tokens/{segment(token_id)}")["token"]
    )


@app.command("token-rm")
def token_rm(
    token_id: str, force: Force = False, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """Remove a registry token."""
    connection = Connection.resolve(server, apikey)
    if not force:
        typer.confirm(f"Remove token {token_id}?", abort=True)
    connection.request("DELETE", f"/cr/{connection.region}/tokens/{segment(token_id)}")
    typer.echo(f"Removed token {token_id}")


# -- the Vulnerability Advisor --------------------------------------------------

VaOutput = Annotated[str, typer.Option("--output", help="table, json or sarif")]
FINDING_COLUMNS = [
    ("id", "ADVISORY"),
    ("severity", "SEVERITY"),
    ("package", "PACKAGE"),
    ("installed", "INSTALLED"),
    ("fixed", "FIXED"),
    ("fix", "FIX"),
    ("exempted_by", "EXEMPTED BY"),
]
CONFIG_COLUMNS = [
    ("id", "CHECK"),
    ("description", "ISSUE"),
    ("fix", "FIX"),
    ("exempted_by", "EXEMPTED BY"),
]


@app.command("vulnerability-assessment")
@app.command("va")
def va(
    image: str,
    output: VaOutput = "table",
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """The Vulnerability Advisor's report of an image (also: vulnerability-assessment):
    each platform's status, its vulnerabilities with the command that fixes each, and
    its configuration issues."""
    if output not in ("table", "json", "sarif"):
        raise CliError("--output must be table, json or sarif", 2)
    connection = Connection.resolve(server, apikey)
    report = connection.va_report(image)
    if output == "json":
        emit(report, None, "json")
        return
    if output == "sarif":
        from moorage.va.assess import sarif

        emit(sarif(report), None, "json")
        return
    typer.echo(f"Image:  {report['repository']}@{report['digest']}")
    typer.echo(f"Status: {report['status']}")
    for platform in report["platforms"]:
        os_name = (platform.get("os") or {}).get("pretty_name") or "unknown operating system"
        where = platform["platform"] or "image"
        reason = f" ({platform['reason']})" if platform.get("reason") else ""
        typer.echo(f"\n{where}: {platform['status']}, {os_name}{reason}")
        if platform["findings"]:
            typer.echo("Vulnerabilities:")
            emit(platform["findings"], FINDING_COLUMNS, "table")
        if platform["config_issues"]:
            typer.echo("Configuration issues:")
            emit(platform["config_issues"], CONFIG_COLUMNS, "table")
        if not platform["findings"] and not platform["config_issues"]:
            typer.echo("No issues found.")


EXEMPTION_COLUMNS = [
    ("id", "ID"),
    ("scope", "SCOPE"),
    ("issue_type", "ISSUE TYPE"),
    ("issue_id", "ISSUE ID"),
    ("expires", "EXPIRES"),
    ("reason", "REASON"),
]
Scope = Annotated[
    str,
    typer.Option(
        "--scope",
        help="* (the account), NAMESPACE, NAMESPACE/REPO, NAMESPACE/REPO:TAG or "
        "NAMESPACE/REPO@DIGEST",
    ),
]
IssueType = Annotated[str, typer.Option("--issue-type", help="cve or configuration")]
IssueId = Annotated[
    str, typer.Option("--issue-id", help="CVE-..., any alias of an advisory, or a check ID")
]


@app.command("exemption-add")
def exemption_add(
    scope: Scope,
    issue_type: IssueType,
    issue_id: IssueId,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Date or date and time it ends (UTC)")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why it is accepted")] = "",
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Exempt an issue within a scope: the images there are assessed without it."""
    connection = Connection.resolve(server, apikey)
    created = connection.exemption_add(scope, issue_type, issue_id, expires, reason)
    typer.echo(f"Added exemption {created['id']} for {issue_type} {issue_id} in {scope}")


@app.command("exemptions")
@app.command("exemption-list")
def exemption_list(
    output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """List the exemptions of the targeted region (also: exemptions)."""
    connection = Connection.resolve(server, apikey)
    emit(connection.exemptions(), EXEMPTION_COLUMNS, output)


@app.command("exemption-rm")
def exemption_rm(exemption_id: str, server: ServerOption = None, apikey: KeyOption = None) -> None:
    """Remove an exemption; the images it covered are assessed again."""
    connection = Connection.resolve(server, apikey)
    connection.exemption_rm(exemption_id)
    typer.echo(f"Removed exemption {exemption_id}")


@app.command("exemption-types")
def exemption_types(
    output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """The issue types an exemption may name."""
    connection = Connection.resolve(server, apikey)
    emit(
        connection.exemption_types(),
        [("issue_type", "ISSUE TYPE"), ("description", "DESCRIPTION")],
        output,
    )
