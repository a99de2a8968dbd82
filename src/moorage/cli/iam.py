"""``moorage iam``: the seed's ``ibmcloud iam`` commands against Moorage's IAM."""

from __future__ import annotations

from typing import Annotated

import typer

from moorage.cli.client import CliError, Connection
from moorage.cli.output import OutputOption, emit
from moorage.client import segment

app = typer.Typer(no_args_is_help=True, help="Users, service IDs, API keys and policies.")

ServerOption = Annotated[str | None, typer.Option("--server", help="Moorage server URL")]
KeyOption = Annotated[str | None, typer.Option("--apikey", help="API key to sign in with")]
Description = Annotated[str, typer.Option("--description", "-d")]
NewName = Annotated[str | None, typer.Option("--name", "-n", help="The new name")]
NewDescription = Annotated[
    str | None, typer.Option("--description", "-d", help="The new description")
]
Force = Annotated[bool, typer.Option("--force", "-f", help="Do not ask for confirmation")]
SERVICE_ID_COLUMNS = [
    ("name", "NAME"),
    ("id", "ID"),
    ("description", "DESCRIPTION"),
    ("created_at", "CREATED"),
]
KEY_COLUMNS = [
    ("name", "NAME"),
    ("id", "ID"),
    ("description", "DESCRIPTION"),
    ("locked", "LOCKED"),
    ("created_at", "CREATED"),
]
POLICY_COLUMNS = [
    ("id", "POLICY ID"),
    ("roles", "ROLES"),
    ("service_name", "SERVICE"),
    ("region", "REGION"),
    ("resource_type", "RESOURCE TYPE"),
    ("resource", "RESOURCE"),
]
SERVICE_HELP = (
    "container-registry, containers-kubernetes, or iam-identity (members, service IDs, "
    "API keys; platform roles only). Giving access to a service takes Administrator on it."
)
PRESERVE = "Please preserve the API key! It cannot be retrieved after it's created."


def _create_policy(
    path: str,
    server: str | None,
    apikey: str | None,
    output: str,
    roles: str,
    service_name: str,
    region: str | None,
    resource_type: str | None,
    resource: str | None,
) -> None:
    body = {
        "roles": roles,
        "service_name": service_name,
        "region": region,
        "resource_type": resource_type,
        "resource": resource,
    }
    emit(Connection.resolve(server, apikey).request("POST", path, body), None, output)


def _show_key(created: dict[str, object], output: str) -> None:
    if output == "json":
        emit(created, None, output)
        return
    typer.echo(
        f"Name          {created['name']}\nID            {created['id']}\n"
        f"Description   {created['description']}\nCreated At    {created['created_at']}\n"
        f"API Key       {created['apikey']}\nLocked        {created['locked']}\n"
    )
    typer.echo(PRESERVE)


@app.command("service-id-create")
def service_id_create(
    name: str,
    description: Description = "",
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Create a service ID."""
    row = Connection.resolve(server, apikey).request(
        "POST", "/iam/service-ids", {"name": name, "description": description}
    )
    emit(
        row if output == "json" else {k: row[k] for k in ("name", "id", "description")},
        None,
        output,
    )


@app.command("service-ids")
def service_ids(
    output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """List service IDs."""
    emit(
        Connection.resolve(server, apikey).request("GET", "/iam/service-ids"),
        SERVICE_ID_COLUMNS,
        output,
    )


@app.command("service-id")
def service_id(
    ref: str, output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """Show one service ID (by name or ID)."""
    emit(
        Connection.resolve(server, apikey).request("GET", f"/iam/service-ids/{segment(ref)}"),
        None,
        output,
    )


@app.command("service-id-delete")
def service_id_delete(
    ref: str,
    force: Annotated[bool, typer.Option("--force", "-f")] = False,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Delete a service ID, its API keys and its policies."""
    if not force:
        typer.confirm(f"Delete service ID {ref}?", abort=True)
    Connection.resolve(server, apikey).request("DELETE", f"/iam/service-ids/{segment(ref)}")
    typer.echo(f"Service ID {ref} deleted")


@app.command("service-policy-create")
def service_policy_create(
    service_id: str,
    roles: Annotated[str, typer.Option("--roles", "-r")],
    service_name: Annotated[str, typer.Option("--service-name", help=SERVICE_HELP)] = (
        "container-registry"
    ),
    region: Annotated[str | None, typer.Option("--region")] = None,
    resource_type: Annotated[str | None, typer.Option("--resource-type")] = None,
    resource: Annotated[str | None, typer.Option("--resource")] = None,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Give a service ID roles on a service, optionally scoped to a region and namespace."""
    _create_policy(
        f"/iam/service-ids/{segment(service_id)}/policies",
        server,
        apikey,
        output,
        roles,
        service_name,
        region,
        resource_type,
        resource,
    )


@app.command("service-policies")
def service_policies(
    service_id: str,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """List the policies of a service ID."""
    emit(
        Connection.resolve(server, apikey).request(
            "GET", f"/iam/service-ids/{segment(service_id)}/policies"
        ),
        POLICY_COLUMNS,
        output,
    )


@app.command("service-api-key-create")
def service_api_key_create(
    name: str,
    service_id: str,
    description: Description = "",
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Create an API key for a service ID; the key is shown this one time."""
    created = Connection.resolve(server, apikey).request(
        "POST",
        f"/iam/service-ids/{segment(service_id)}/api-keys",
        {"name": name, "description": description},
    )
    _show_key(created, output)


@app.command("service-api-keys")
def service_api_keys(
    service_id: str,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """List the API keys of a service ID."""
    emit(
        Connection.resolve(server, apikey).request(
            "GET", f"/iam/service-ids/{segment(service_id)}/api-keys"
        ),
        KEY_COLUMNS,
        output,
    )


@app.command("api-key-create")
def api_key_create(
    name: str,
    description: Description = "",
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Create an API key for yourself; the key is shown this one time."""
    created = Connection.resolve(server, apikey).request(
        "POST", "/iam/api-keys", {"name": name, "description": description}
    )
    _show_key(created, output)


@app.command("api-keys")
def api_keys(
    output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """List your API keys."""
    emit(Connection.resolve(server, apikey).request("GET", "/iam/api-keys"), KEY_COLUMNS, output)


def _key_action(action: str, path: str, ref: str, server: str | None, apikey: str | None) -> None:
    connection = Connection.resolve(server, apikey)
    if action == "delete":
        connection.request("DELETE", path)
    else:
        connection.request("POST", f"{path}/{action}")
    typer.echo(f"API key {ref} {action}{'d' if action.endswith('e') else 'ed'}")


def _own_key(ref: str) -> str:
    return f"/iam/api-keys/{segment(ref)}"


def _service_key(name: str, service_id: str) -> str:
    return f"/iam/service-ids/{segment(service_id)}/api-keys/{segment(name)}"


def _update_key(
    path: str,
    new_name: str | None,
    description: str | None,
    output: str,
    server: str | None,
    apikey: str | None,
) -> None:
    if new_name is None and description is None:
        raise CliError("give --name or --description to change")
    body = {k: v for k, v in (("name", new_name), ("description", description)) if v is not None}
    emit(Connection.resolve(server, apikey).request("PATCH", path, body), None, output)


@app.command("api-key")
def api_key(
    ref: str, output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """Show one API key of yours (by name or ID)."""
    emit(Connection.resolve(server, apikey).request("GET", _own_key(ref)), None, output)


@app.command("api-key-update")
def api_key_update(
    ref: str,
    new_name: NewName = None,
    description: NewDescription = None,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Rename one of your API keys or change its description."""
    _update_key(_own_key(ref), new_name, description, output, server, apikey)


@app.command("api-key-lock")
def api_key_lock(ref: str, server: ServerOption = None, apikey: KeyOption = None) -> None:
    """Lock an API key: it is refused from the next sign-in on."""
    _key_action("lock", _own_key(ref), ref, server, apikey)


@app.command("api-key-unlock")
def api_key_unlock(ref: str, server: ServerOption = None, apikey: KeyOption = None) -> None:
    """Unlock an API key. One an administrator locked only an administrator unlocks."""
    _key_action("unlock", _own_key(ref), ref, server, apikey)


@app.command("api-key-delete")
def api_key_delete(
    ref: str, force: Force = False, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """Delete an API key."""
    if not force:
        typer.confirm(f"Delete API key {ref}?", abort=True)
    _key_action("delete", _own_key(ref), ref, server, apikey)


@app.command("service-api-key")
def service_api_key(
    name: str,
    service_id: str,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Show one API key of a service ID (by name or ID)."""
    connection = Connection.resolve(server, apikey)
    emit(connection.request("GET", _service_key(name, service_id)), None, output)


@app.command("service-api-key-update")
def service_api_key_update(
    name: str,
    service_id: str,
    new_name: NewName = None,
    description: NewDescription = None,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Rename an API key of a service ID or change its description."""
    _update_key(_service_key(name, service_id), new_name, description, output, server, apikey)


@app.command("service-api-key-lock")
def service_api_key_lock(
    name: str, service_id: str, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """Lock an API key of a service ID: it is refused from the next sign-in on."""
    _key_action("lock", _service_key(name, service_id), name, server, apikey)


@app.command("service-api-key-unlock")
def service_api_key_unlock(
    name: str, service_id: str, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """Unlock an API key of a service ID."""
    _key_action("unlock", _service_key(name, service_id), name, server, apikey)


@app.command("service-api-key-delete")
def service_api_key_delete(
    name: str,
    service_id: str,
    force: Force = False,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Delete an API key of a service ID."""
    if not force:
        typer.confirm(f"Delete API key {name} of service ID {service_id}?", abort=True)
    _key_action("delete", _service_key(name, service_id), name, server, apikey)


@app.command("user-create")
def user_create(
    email: str,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Create a user who signs in with email and password."""
    emit(
        Connection.resolve(server, apikey).request(
            "POST", "/iam/users", {"email": email, "password": password}
        ),
        None,
        output,
    )


@app.command("users")
def users(
    output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """List the users of the account."""
    emit(
        Connection.resolve(server, apikey).request("GET", "/iam/users"),
        [("email", "EMAIL"), ("id", "ID"), ("created_at", "CREATED")],
        output,
    )


@app.command("user-remove")
def user_remove(
    email: str, force: Force = False, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """Remove a user from the account, with the user's API keys and policies in it."""
    if not force:
        typer.confirm(f"Remove {email} from the account?", abort=True)
    Connection.resolve(server, apikey).request("DELETE", f"/iam/users/{segment(email)}")
    typer.echo(f"User {email} removed from the account")


@app.command("user-policy-create")
def user_policy_create(
    email: str,
    roles: Annotated[str, typer.Option("--roles", "-r")],
    service_name: Annotated[str, typer.Option("--service-name", help=SERVICE_HELP)],
    region: Annotated[str | None, typer.Option("--region")] = None,
    resource_type: Annotated[str | None, typer.Option("--resource-type")] = None,
    resource: Annotated[str | None, typer.Option("--resource")] = None,
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Give a user roles on a service."""
    _create_policy(
        f"/iam/users/{segment(email)}/policies",
        server,
        apikey,
        output,
        roles,
        service_name,
        region,
        resource_type,
        resource,
    )


@app.command("user-policies")
def user_policies(
    email: str, output: str = OutputOption, server: ServerOption = None, apikey: KeyOption = None
) -> None:
    """List the policies of a user."""
    emit(
        Connection.resolve(server, apikey).request("GET", f"/iam/users/{segment(email)}/policies"),
        POLICY_COLUMNS,
        output,
    )


@app.command("policy-delete")
def policy_delete(policy_id: str, server: ServerOption = None, apikey: KeyOption = None) -> None:
    """Delete a policy by its ID."""
    Connection.resolve(server, apikey).request("DELETE", f"/iam/policies/{segment(policy_id)}")
    typer.echo(f"Policy {policy_id} deleted")


@app.command("account-create")
def account_create(
    name: str,
    admin_email: Annotated[str, typer.Option("--admin-email")],
    output: str = OutputOption,
    server: ServerOption = None,
    apikey: KeyOption = None,
) -> None:
    """Create another account with its own administrator; the key is shown once."""
    created = Connection.resolve(server, apikey).request(
        "POST", "/iam/accounts", {"name": name, "admin_email": admin_email}
    )
    if output == "json":
        emit(created, None, output)
        return
    typer.echo(
        f"Account      {created['account_id']}\nAPI key ID   {created['api_key_id']}\n"
        f"API Key      {created['apikey']}\n"
    )
    typer.echo(PRESERVE)
