"""A role on one service manages access to that service only. Administrator on
containers-kubernetes gives no access to the registry, nor to IAM itself;
account-wide IAM (members, service IDs, others' keys, policies on iam-identity)
is iam-identity's. Tried against a live server: every (role on service A,
policy on service B) pair, every scope, every identity one could act through,
and every management route of the app's router."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from moorage.config import Settings
from moorage.iam.roles import (
    IAM_IDENTITY,
    KUBERNETES,
    PLATFORM_ROLES,
    REGISTRY,
    RESOURCE_SERVICES,
    ROLE_ORDER,
    SERVICES,
)
from tests.iam_helpers import ADMIN_KEY, Api, all_rows
from tests.server import MoorageServer, ensure_region_hosts

US = "us.localhost"
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("scope")
    started = MoorageServer(
        tmp / "data", tmp / "server.log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    ).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def admin(server: MoorageServer) -> Api:
    return Api(server, ADMIN_KEY)


def roles_on(service: str) -> list[str]:
    """The roles a policy on ``service`` may carry: iam-identity has no service roles."""
    return ROLE_ORDER if service in RESOURCE_SERVICES else list(PLATFORM_ROLES)


def a_role_for(service: str, unlike: str | None = None) -> str:
    """What a policy made in a test gives: the issue's Manager where it exists,
    and never the role ``unlike`` (a policy identical to one held is refused)."""
    first = "Manager" if service in RESOURCE_SERVICES else "Viewer"
    return first if first != unlike else "Operator"


def service_id(admin: Api, *policies: dict[str, str]) -> tuple[str, str]:
    """A new service ID with ``policies``, made by the bootstrap administrator: its name and ID."""
    name = f"sid-{next(_names)}"
    created = admin.call("POST", "/iam/service-ids", {"name": name}, expect=201)
    for policy in policies:
        admin.call("POST", f"/iam/service-ids/{name}/policies", policy, expect=201)
    return name, created["id"]


def holder(admin: Api, *policies: dict[str, str]) -> tuple[Api, str]:
    """A service ID holding ``policies``, signed in with a key of its own."""
    name, _ = service_id(admin, *policies)
    key = admin.call("POST", f"/iam/service-ids/{name}/api-keys", {"name": "k"}, expect=201)
    return Api(admin.server, key["apikey"]), name


HOLDERS = [(role, service) for service in SERVICES for role in roles_on(service)]


@pytest.mark.parametrize("target", ["itself", "another service ID"])
@pytest.mark.parametrize("change", ["create", "delete"])
@pytest.mark.parametrize("policy_service", SERVICES)
@pytest.mark.parametrize(("role", "held_service"), HOLDERS)
def test_a_role_on_one_service_gives_access_to_that_service_only(
    server: MoorageServer,
    admin: Api,
    role: str,
    held_service: str,
    policy_service: str,
    change: str,
    target: str,
) -> None:
    """Only Administrator on B creates or deletes a policy on B, for anyone,
    the holder itself included; a refusal changes nothing."""
    api, own_name = holder(admin, {"roles": role, "service_name": held_service})
    name = own_name if target == "itself" else service_id(admin)[0]
    policy = {"roles": a_role_for(policy_service, role), "service_name": policy_service}
    allowed = role == "Administrator" and held_service == policy_service
    before = all_rows(server)
    if change == "create":
        r = api.request("POST", f"/iam/service-ids/{name}/policies", policy)
        expected = 201
    else:
        made = admin.call("POST", f"/iam/service-ids/{name}/policies", policy, expect=201)
        before = all_rows(server)
        r = api.request("DELETE", f"/iam/policies/{made['id']}")
        expected = 204
    assert r.status_code == (expected if allowed else 403), r.text
    if not allowed:
        assert all_rows(server) == before


SCOPES: dict[str, dict[str, str]] = {
    "the whole service": {},
    "us-south": {"region": "us-south"},
    "eu-gb": {"region": "eu-gb"},
    "us-south/team-a": {"region": "us-south", "resource_type": "namespace", "resource": "team-a"},
    "us-south/team-b": {"region": "us-south", "resource_type": "namespace", "resource": "team-b"},
    "team-a anywhere": {"resource_type": "namespace", "resource": "team-a"},
}
# Which scopes an Administrator limited to each scope may give (or take away).
WITHIN = {
    "the whole service": set(SCOPES),
    "us-south": {"us-south", "us-south/team-a", "us-south/team-b"},
    "us-south/team-a": {"us-south/team-a"},
    "team-a anywhere": {"team-a anywhere", "us-south/team-a"},
}


@pytest.mark.parametrize("change", ["create", "delete"])
@pytest.mark.parametrize("wanted", list(SCOPES))
@pytest.mark.parametrize("held", list(WITHIN))
def test_an_administrator_gives_access_only_within_its_own_scope(
    server: MoorageServer, admin: Api, held: str, wanted: str, change: str
) -> None:
    api, _ = holder(
        admin, {"roles": "Administrator,Manager", "service_name": REGISTRY, **SCOPES[held]}
    )
    name, _ = service_id(admin)
    policy = {"roles": "Manager", "service_name": REGISTRY, **SCOPES[wanted]}
    allowed = wanted in WITHIN[held]
    if change == "create":
        before = all_rows(server)
        r = api.request("POST", f"/iam/service-ids/{name}/policies", policy)
        expected = 201
    else:
        made = admin.call("POST", f"/iam/service-ids/{name}/policies", policy, expect=201)
        before = all_rows(server)
        r = api.request("DELETE", f"/iam/policies/{made['id']}")
        expected = 204
    assert r.status_code == (expected if allowed else 403), r.text
    if not allowed:
        assert all_rows(server) == before


@pytest.mark.parametrize(
    "policy",
    [
        {"roles": "Manager", "service_name": ""},
        {"roles": "Manager", "service_name": "*"},
        {"roles": "Manager", "service_name": "Container-Registry"},
        {"roles": "Manager", "service_name": " container-registry"},
        {"roles": "Manager", "service_name": "iam"},
        {"roles": "Manager", "service_name": IAM_IDENTITY},
        {"roles": "Administrator", "service_name": IAM_IDENTITY, "region": "us-south"},
        {
            "roles": "Administrator",
            "service_name": IAM_IDENTITY,
            "resource_type": "namespace",
            "resource": "team-a",
        },
    ],
)
def test_a_policy_on_no_service_or_every_service_is_refused(
    server: MoorageServer, admin: Api, policy: dict[str, str]
) -> None:
    """No wildcard: even the bootstrap administrator names one real service,
    and iam-identity takes platform roles and no region or namespace."""
    name, _ = service_id(admin)
    before = all_rows(server)
    r = admin.request("POST", f"/iam/service-ids/{name}/policies", policy)
    assert r.status_code == 400, r.text
    assert all_rows(server) == before


def _token_access(server: MoorageServer, key: str, scope: str) -> list[dict[str, Any]]:
    reply = requests.get(
        f"http://{server.host_for(US)}/oauth/token",
        params={"service": US, "scope": scope},
        auth=("iamapikey", key),
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    access: list[dict[str, Any]] = jwt.decode(
        reply.json()["token"], options={"verify_signature": False}
    )["access"]
    return access


def test_a_kubernetes_administrator_cannot_reach_the_registry(
    server: MoorageServer, admin: Api
) -> None:
    """The reported attack: Administrator on containers-kubernetes only gave
    itself Manager on container-registry, then pulled, pushed and deleted in
    every namespace. Every way around is closed too: another identity's key,
    a new service ID, a new member, iam-identity itself."""
    admin.namespace("us-south", "kube-target")
    admin.call("POST", "/iam/service-ids", {"name": "kube-admin"}, expect=201)
    admin.call(
        "POST",
        "/iam/service-ids/kube-admin/policies",
        {"roles": "Administrator,Manager", "service_name": KUBERNETES},
        expect=201,
    )
    created = admin.call("POST", "/iam/service-ids/kube-admin/api-keys", {"name": "k"}, expect=201)
    kube = Api(server, created["apikey"])
    registry_manager, _ = service_id(admin, {"roles": "Manager", "service_name": REGISTRY})
    bootstrap = admin.call("GET", "/iam/me", expect=200)["id"]
    before = all_rows(server)
    attempts = [
        (
            "POST",
            "/iam/service-ids/kube-admin/policies",
            {"roles": "Manager", "service_name": REGISTRY},
        ),
        (
            "POST",
            "/iam/service-ids/kube-admin/policies",
            {"roles": "Administrator", "service_name": IAM_IDENTITY},
        ),
        ("POST", f"/iam/service-ids/{registry_manager}/api-keys", {"name": "stolen"}),
        ("POST", "/iam/service-ids", {"name": "sock-puppet"}),
        ("POST", "/iam/users", {"email": "puppet@a.test", "password": "puppet-password-1"}),
        ("POST", f"/iam/users/{bootstrap}/policies", {"roles": "Reader", "service_name": REGISTRY}),
        ("POST", "/cr/us-south/namespaces", {"name": "kube-made"}),
        ("POST", "/cr/us-south/tokens", {"readwrite": True}),
        ("POST", "/iam/accounts", {"name": "elsewhere", "admin_email": "kube@else.test"}),
    ]
    for method, path, body in attempts:
        r = kube.request(method, path, body)
        assert r.status_code == 403, f"{method} {path}: {r.status_code} {r.text}"
    assert all_rows(server) == before
    scope = "repository:kube-target/app:pull,push,delete"
    assert _token_access(server, created["apikey"], scope) == []


def test_whoever_makes_a_key_for_an_identity_must_administer_all_it_holds(
    server: MoorageServer, admin: Api
) -> None:
    """Editor on iam-identity manages identities, but whoever holds a key acts
    as its owner: keys, locks, renames and removal of an identity take
    Administrator over every policy that identity holds."""
    api, own = holder(
        admin,
        {"roles": "Editor", "service_name": IAM_IDENTITY},
        {"roles": "Administrator", "service_name": REGISTRY},
    )
    # Its own work: a service ID it gives registry access to, and keys for it.
    api.call("POST", "/iam/service-ids", {"name": "editors-sid"}, expect=201)
    api.call(
        "POST",
        "/iam/service-ids/editors-sid/policies",
        {"roles": "Writer", "service_name": REGISTRY},
        expect=201,
    )
    made = api.call("POST", "/iam/service-ids/editors-sid/api-keys", {"name": "k"}, expect=201)
    api.call("POST", f"/iam/service-ids/editors-sid/api-keys/{made['id']}/lock", expect=201)
    api.call("POST", f"/iam/service-ids/editors-sid/api-keys/{made['id']}/unlock", expect=201)
    # Identities holding more than it administers are out of its reach.
    kube_sid, _ = service_id(admin, {"roles": "Reader", "service_name": KUBERNETES})
    iam_sid, _ = service_id(admin, {"roles": "Viewer", "service_name": IAM_IDENTITY})
    kube_key = admin.call("POST", f"/iam/service-ids/{kube_sid}/api-keys", {"name": "k"}, 201)
    me = admin.call("GET", "/iam/me", expect=200)
    before = all_rows(server)
    attempts: list[tuple[str, str, Any]] = [
        ("POST", f"/iam/service-ids/{kube_sid}/api-keys", {"name": "stolen"}),
        ("POST", f"/iam/service-ids/{iam_sid}/api-keys", {"name": "stolen"}),
        ("POST", f"/iam/service-ids/{kube_sid}/api-keys/{kube_key['id']}/lock", None),
        ("PATCH", f"/iam/service-ids/{kube_sid}/api-keys/{kube_key['id']}", {"name": "x"}),
        ("DELETE", f"/iam/service-ids/{kube_sid}/api-keys/{kube_key['id']}", None),
        ("DELETE", f"/iam/service-ids/{kube_sid}", None),
        # The account's first administrator: its key, and itself.
        ("POST", f"/iam/api-keys/{me['api_key']}/lock", None),
        ("DELETE", f"/iam/api-keys/{me['api_key']}", None),
        ("DELETE", f"/iam/users/{me['id']}", None),
        # Nor may it raise itself.
        (
            "POST",
            f"/iam/service-ids/{own}/policies",
            {"roles": "Administrator", "service_name": IAM_IDENTITY},
        ),
        (
            "POST",
            f"/iam/service-ids/{own}/policies",
            {"roles": "Manager", "service_name": KUBERNETES},
        ),
    ]
    for method, path, body in attempts:
        r = api.request(method, path, body)
        assert r.status_code == 403, f"{method} {path}: {r.status_code} {r.text}"
    assert all_rows(server) == before


def test_the_bootstrap_administrator_administers_every_service(
    server: MoorageServer, admin: Api
) -> None:
    """The installation's first administrator (and each new account's) holds
    Administrator on every service, iam-identity included."""
    me = admin.call("GET", "/iam/me", expect=200)
    held = {
        p["service_name"]: p["roles"]
        for p in admin.call("GET", f"/iam/users/{me['id']}/policies", expect=200)
    }
    assert held == {
        REGISTRY: ["Manager", "Administrator"],
        KUBERNETES: ["Manager", "Administrator"],
        IAM_IDENTITY: ["Administrator"],
    }
    created = admin.call(
        "POST", "/iam/accounts", {"name": "second", "admin_email": "a@second.test"}, expect=201
    )
    other = Api(server, created["apikey"])
    other.call("POST", "/iam/service-ids", {"name": "theirs"}, expect=201)
    for service in SERVICES:
        other.call(
            "POST",
            "/iam/service-ids/theirs/policies",
            {"roles": "Administrator", "service_name": service},
            expect=201,
        )


# -- every route of the management API ----------------------------------------

# Whose Administrator (or Manager) each route needs, for the routes that change
# something: "iam-identity", "container-registry", or "policy" (the policy's own
# service, given here as one the caller does not administer). None: the route
# changes nothing (or only the caller's own keys). A new route fails the test
# below until it is listed here.
ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/iam/me"): None,
    ("POST", "/iam/accounts"): IAM_IDENTITY,
    ("GET", "/iam/users"): None,
    ("POST", "/iam/users"): IAM_IDENTITY,
    ("DELETE", "/iam/users/{ref}"): IAM_IDENTITY,
    ("GET", "/iam/users/{ref}/policies"): None,
    ("POST", "/iam/users/{ref}/policies"): "policy",
    ("GET", "/iam/service-ids"): None,
    ("POST", "/iam/service-ids"): IAM_IDENTITY,
    ("GET", "/iam/service-ids/{ref}"): None,
    ("DELETE", "/iam/service-ids/{ref}"): IAM_IDENTITY,
    ("GET", "/iam/service-ids/{ref}/policies"): None,
    ("POST", "/iam/service-ids/{ref}/policies"): "policy",
    ("GET", "/iam/service-ids/{ref}/api-keys"): None,
    ("POST", "/iam/service-ids/{ref}/api-keys"): IAM_IDENTITY,
    ("GET", "/iam/service-ids/{ref}/api-keys/{key}"): None,
    ("PATCH", "/iam/service-ids/{ref}/api-keys/{key}"): IAM_IDENTITY,
    ("POST", "/iam/service-ids/{ref}/api-keys/{key}/lock"): IAM_IDENTITY,
    ("POST", "/iam/service-ids/{ref}/api-keys/{key}/unlock"): IAM_IDENTITY,
    ("DELETE", "/iam/service-ids/{ref}/api-keys/{key}"): IAM_IDENTITY,
    ("DELETE", "/iam/policies/{id}"): "policy",
    ("GET", "/iam/api-keys"): None,
    ("POST", "/iam/api-keys"): None,  # users only, for themselves
    ("GET", "/iam/api-keys/{ref}"): None,
    ("PATCH", "/iam/api-keys/{ref}"): IAM_IDENTITY,
    ("POST", "/iam/api-keys/{ref}/lock"): IAM_IDENTITY,
    ("POST", "/iam/api-keys/{ref}/unlock"): IAM_IDENTITY,
    ("DELETE", "/iam/api-keys/{ref}"): IAM_IDENTITY,
    ("GET", "/cr/regions"): None,
    ("POST", "/cr/pull-check"): None,  # a diagnosis: reads only
    ("GET", "/cr/{region}/namespaces"): None,
    ("POST", "/cr/{region}/namespaces"): REGISTRY,
    ("DELETE", "/cr/{region}/namespaces/{name}"): REGISTRY,
    ("GET", "/cr/{region}/namespaces/{name}/signers"): None,
    ("POST", "/cr/{region}/namespaces/{name}/signers"): REGISTRY,
    ("DELETE", "/cr/{region}/namespaces/{name}/signers/{signer}"): REGISTRY,
    ("GET", "/cr/{region}/images"): None,
    ("GET", "/cr/{region}/image"): None,
    ("DELETE", "/cr/{region}/image"): REGISTRY,
    ("POST", "/cr/{region}/image-tags"): REGISTRY,
    ("GET", "/cr/{region}/tokens"): None,
    ("POST", "/cr/{region}/tokens"): REGISTRY,
    ("GET", "/cr/{region}/tokens/{id}"): REGISTRY,  # shows a secret
    ("DELETE", "/cr/{region}/tokens/{id}"): REGISTRY,
    ("GET", "/cr/{region}/va/{image}"): None,
    ("GET", "/cr/exemption-types"): None,
    ("GET", "/cr/{region}/exemptions"): None,
    ("POST", "/cr/{region}/exemptions"): REGISTRY,
    ("GET", "/cr/{region}/exemptions/{id}"): None,
    ("DELETE", "/cr/{region}/exemptions/{id}"): REGISTRY,
}


def router_routes(data: Path) -> set[tuple[str, str]]:
    """Every management route the application's router has (``/api/v1/...``)."""
    from moorage.server import create_app

    registry = create_app(Settings(data_dir=str(data)))
    try:
        application = registry.build()
        return {
            (route.method, route.resource.canonical.removeprefix("/api/v1"))
            for route in application.router.routes()
            if route.resource is not None
            and route.resource.canonical.startswith("/api/v1/")
            and route.method != "HEAD"
        } - {("GET", "/openapi.json")}
    finally:
        for cleanup in registry.cleanups:
            cleanup()


def test_every_route_is_in_the_table(tmp_path: Path) -> None:
    assert router_routes(tmp_path / "data") == set(ROUTES)


@pytest.fixture(scope="module")
def victim(server: MoorageServer, admin: Api) -> dict[str, str]:
    """Things of the account, each by the value a route takes for it; policies
    on each service, so a route can name one on a service the caller does not
    administer."""
    admin.namespace("us-south", "victim-ns")
    token = admin.call("POST", "/cr/us-south/tokens", {"readwrite": True}, expect=201)
    sid, _ = service_id(admin, {"roles": "Reader", "service_name": REGISTRY})
    key = admin.call("POST", f"/iam/service-ids/{sid}/api-keys", {"name": "vk"}, expect=201)
    user = admin.call(
        "POST", "/iam/users", {"email": "victim@a.test", "password": "victim-password-1"}, 201
    )
    values = {"ref_sid": sid, "ref_user": user["id"], "key": key["id"], "token": token["id"]}
    for service in SERVICES:
        made = admin.call(
            "POST",
            f"/iam/users/{user['id']}/policies",
            {"roles": a_role_for(service), "service_name": service},
            expect=201,
        )
        values[f"policy {service}"] = made["id"]
    values["own_key"] = admin.call("GET", "/iam/me", expect=200)["api_key"]
    return values


def _request(path: str, v: dict[str, str], foreign: str) -> tuple[str, Any, dict[str, str]]:
    """A route filled in with the victim's things; a policy on service ``foreign``."""
    if path.startswith("/iam/users/"):
        ref = v["ref_user"]
    elif path.startswith("/iam/service-ids/"):
        ref = v["ref_sid"]
    else:
        ref = v["own_key"]  # another's key: the bootstrap administrator's
    filled = (
        path.replace("{ref}", ref)
        .replace("{key}", v["key"])
        .replace("{region}", "us-south")
        .replace("{name}", "victim-ns")
        .replace("{signer}", "victim-signer")
        .replace("{image}", "victim-ns/app:v1")
        .replace("{id}", v["token"] if "/tokens/" in path else v[f"policy {foreign}"])
    )
    assert not re.search(r"\{\w+\}", filled), f"no value for a parameter of {path}"
    bodies: dict[str, Any] = {
        "/policies": {"roles": a_role_for(foreign), "service_name": foreign},
        "/iam/accounts": {"name": "elsewhere", "admin_email": "x@else.test"},
        "/iam/users": {"email": "new@a.test", "password": "new-password-123"},
        "/iam/service-ids": {"name": "intruder"},
        "/api-keys": {"name": "stolen"},
        "/namespaces": {"name": "intruder-ns"},
        "/signers": {"name": "intruder", "public_key": "x"},
        "/image-tags": {"source": "victim-ns/app:v1", "target": "victim-ns/app:x"},
        "/tokens": {"readwrite": True},
        "/pull-check": {"registry": US, "repository": "victim-ns/app"},
        "/exemptions": {"scope": "victim-ns", "issue_type": "cve", "issue_id": "CVE-2099-3"},
    }
    body = next((b for suffix, b in bodies.items() if filled.endswith(suffix)), None)
    if body is None and filled.rsplit("/", 1)[-1] not in ("lock", "unlock"):
        body = {"name": "renamed"}
    query = {"image": "victim-ns/app:v1"} if filled.endswith("/image") else {}
    return filled, body, query


@pytest.mark.parametrize(
    "held",
    [
        {"roles": "Administrator,Manager", "service_name": KUBERNETES},
        {"roles": "Administrator,Manager", "service_name": REGISTRY},
        {"roles": "Administrator", "service_name": IAM_IDENTITY},
    ],
    ids=lambda held: held["service_name"],
)
def test_every_route_refuses_an_administrator_of_another_service(
    server: MoorageServer, admin: Api, victim: dict[str, str], held: dict[str, str]
) -> None:
    """For every route of the router: what belongs to a service the caller does
    not administer is refused, and nothing changes in the database."""
    api, _ = holder(admin, held)
    mine = held["service_name"]
    foreign = next(s for s in SERVICES if s != mine)
    before = all_rows(server)
    tried = 0
    for (method, path), needs in ROUTES.items():
        if needs == mine:
            continue
        target, body, query = _request(path, victim, foreign)
        r = api.request(method, target, body if method != "GET" else None, **query)
        tried += 1
        if needs is None:
            assert r.status_code < 500, f"{method} {target}: {r.status_code} {r.text}"
        else:
            assert r.status_code in (403, 404), f"{mine}: {method} {target} -> {r.text}"
    assert tried > 25
    assert all_rows(server) == before
