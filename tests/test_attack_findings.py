"""Attacks on the hardening change (core at 4c9ba95), each against a live server.

Every test here fails on that code: each one is a finding of the security
review, and passes once the defect it names is fixed. The docstring of each
says what an attacker does and what should happen instead."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests

from tests.helpers import wait_for
from tests.iam_helpers import ADMIN_KEY, Api, bearer
from tests.oci_layout import OCI_MANIFEST, make_image, sha256
from tests.server import MoorageServer, ensure_region_hosts

US = "us.localhost"


def start(tmp: Path) -> MoorageServer:
    ensure_region_hosts()
    return MoorageServer(
        tmp / "data", tmp / "server.log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    ).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    started = start(tmp_path_factory.mktemp("attack"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def admin(server: MoorageServer) -> Api:
    return Api(server, ADMIN_KEY)


def new_account(admin: Api, name: str) -> tuple[Api, str]:
    created = admin.call(
        "POST", "/iam/accounts", {"name": name, "admin_email": f"admin@{name}.test"}, expect=201
    )
    return Api(admin.server, created["apikey"]), created["account_id"]


def invite(api: Api, email: str, password: str) -> dict[str, str]:
    member: dict[str, str] = api.call(
        "POST", "/iam/users", {"email": email, "password": password}, expect=201
    )
    return member


# -- API key locks -------------------------------------------------------------


def test_the_owner_cannot_relock_an_administrators_lock_and_then_undo_it(
    server: MoorageServer, admin: Api
) -> None:
    """An administrator locks a user's key. The owner cannot unlock it (403), but
    may lock it again: that overwrites ``locked_by`` with the owner's ID, and the
    owner's own lock is then the owner's to undo. Locking a key that is already
    locked must not take over the lock (or must keep the administrator's mark)."""
    invite(admin, "relocker@a.test", "relocker-password-1")
    owner = Api(server, "relocker-password-1", user="relocker@a.test")
    key = owner.call("POST", "/iam/api-keys", {"name": "relock-me"}, expect=201)
    mine = Api(server, key["apikey"])
    admin.call("POST", f"/iam/api-keys/{key['id']}/lock", expect=201)
    assert owner.request("POST", f"/iam/api-keys/{key['id']}/unlock").status_code == 403
    assert mine.request("GET", "/iam/me").status_code == 401

    owner.request("POST", f"/iam/api-keys/{key['id']}/lock")  # already locked: "lock" it again
    owner.request("POST", f"/iam/api-keys/{key['id']}/unlock")
    assert mine.request("GET", "/iam/me").status_code == 401, (
        "the owner undid an administrator's lock by locking the key again first"
    )


def test_a_member_cannot_make_their_key_unaddressable_for_administrators(
    server: MoorageServer, admin: Api
) -> None:
    """Key routes find a key by ID *or name*, and a name may look like an ID.
    A member whose key an administrator wants to lock names a second key after
    the first key's ID (and the first after the second's): every reference to
    either key is now ambiguous (409), and the administrator can lock neither.
    An ID must always name exactly its key (or names must not look like IDs)."""
    invite(admin, "evasive@a.test", "evasive-password-1")
    member = Api(server, "evasive-password-1", user="evasive@a.test")
    first = member.call("POST", "/iam/api-keys", {"name": "first"}, expect=201)
    second = member.call("POST", "/iam/api-keys", {"name": "second"}, expect=201)
    # A name that looks like an ID is refused, on creation and on renaming ...
    assert member.request("POST", "/iam/api-keys", {"name": first["id"]}).status_code == 400
    renamed = member.request("PATCH", "/iam/api-keys/second", {"name": first["id"]})
    assert renamed.status_code == 400
    member.call("PATCH", "/iam/api-keys/first", {"name": "twin"}, expect=200)
    member.call("PATCH", "/iam/api-keys/second", {"name": "twin"}, expect=200)
    # ... and an ID always names its key, however the names collide.
    for key in (first, second):
        r = admin.request("POST", f"/iam/api-keys/{key['id']}/lock")
        assert r.status_code == 201, f"the administrator cannot lock {key['id']}: {r.text}"
    assert Api(server, first["apikey"]).request("GET", "/iam/me").status_code == 401


# -- identities across accounts -----------------------------------------------


def test_a_password_chosen_by_one_account_does_not_open_another(
    server: MoorageServer, admin: Api
) -> None:
    """A malicious tenant invites an email it expects another tenant to use
    (``ceo@corp.test``), choosing the password. When corp later invites the same
    person and makes them an Administrator, the identity joins "as it is": with
    the attacker's password. The attacker signs in as that person into corp."""
    evil, _ = new_account(admin, "evil")
    corp, corp_id = new_account(admin, "corp")
    invite(evil, "ceo@corp.test", "chosen-by-the-attacker")
    ceo = invite(corp, "ceo@corp.test", "chosen-by-corp-itself")
    corp.call(
        "POST",
        f"/iam/users/{ceo['id']}/policies",
        {"roles": "Administrator,Manager", "service_name": "container-registry"},
        expect=201,
    )
    corp.namespace("us-south", "corp-private")

    attacker_in_corp = Api(server, "chosen-by-the-attacker", user="ceo@corp.test", account=corp_id)
    members = attacker_in_corp.request("GET", "/iam/users")
    assert members.status_code in (401, 403), f"the other tenant is in corp: {members.text}"
    token = requests.get(
        f"http://{server.host_for(US)}/oauth/token",
        params={"service": US, "scope": "repository:corp-private/app:pull,push"},
        auth=("ceo@corp.test", "chosen-by-the-attacker"),
        timeout=10,
    )
    granted = []
    if token.status_code == 200:
        granted = jwt.decode(token.json()["token"], options={"verify_signature": False})["access"]
    assert granted == [], f"the other tenant may push to corp's namespace: {granted}"


def test_a_new_accounts_administrator_cannot_be_claimed_in_advance(
    server: MoorageServer, admin: Api
) -> None:
    """The same, through account creation: the tenant invites the email that the
    installation's operators will name as a new account's administrator; the new
    account's administrator is then the tenant's identity, password included."""
    squatter, _ = new_account(admin, "squatter")
    invite(squatter, "admin@newco.test", "squatters-password")
    created = admin.call(
        "POST", "/iam/accounts", {"name": "newco", "admin_email": "admin@newco.test"}, expect=201
    )
    as_newco_admin = Api(
        server, "squatters-password", user="admin@newco.test", account=created["account_id"]
    )
    r = as_newco_admin.request("POST", "/iam/service-ids", {"name": "backdoor"})
    assert r.status_code in (401, 403), f"the squatter administers newco: {r.status_code} {r.text}"


def test_inviting_does_not_tell_whether_an_identity_exists(
    server: MoorageServer, admin: Api
) -> None:
    """docs/security.md: inviting an existing email 'gives the same answer as
    creating it, so no account learns another's members'. But the password the
    inviter chose works only for an identity that did not exist: one sign-in
    after the invitation tells any account administrator whether an email
    belongs to another account."""
    invite(admin, "existing@other.test", "the-persons-own-password")
    prober, _ = new_account(admin, "prober")
    answers = {}
    for email in ("existing@other.test", "nobody-yet@other.test"):
        invite(prober, email, "probe-password-123")
        answers[email] = Api(server, "probe-password-123", user=email).request("GET", "/iam/me")
        prober.call("DELETE", f"/iam/users/{email}", expect=204)  # leave no trace
    statuses = {email: r.status_code for email, r in answers.items()}
    assert len(set(statuses.values())) == 1, f"existence shows in the sign-in: {statuses}"


def test_an_account_cannot_enrol_a_person_without_their_consent(
    server: MoorageServer, admin: Api
) -> None:
    """Any account's administrator can make any email a member of their account;
    nothing asks the person. Besides the two attacks above, this breaks the
    person's own sign-in: every management call they make without
    X-Moorage-Account now answers 400 (their CLI and scripts stop working), and
    removing them again voids the refresh tokens their password sign-ins got
    meanwhile. An invitation of an existing identity should wait for consent."""
    invite(admin, "bystander@a.test", "bystanders-password")
    bystander = Api(server, "bystanders-password", user="bystander@a.test")
    assert bystander.request("GET", "/iam/api-keys").status_code == 200
    pest, _ = new_account(admin, "pest")
    invite(pest, "bystander@a.test", "whatever-password")
    r = bystander.request("GET", "/iam/api-keys")
    assert r.status_code == 200, f"another account broke the person's sign-in: {r.text}"


# -- namespace removal ---------------------------------------------------------


def test_tokens_of_a_removed_namespace_stay_void_after_a_restart(tmp_path: Path) -> None:
    """Account A's token for A's namespace; A removes it; B claims the name. The
    token is refused (the in-memory ``NamespaceService._removed``), until the
    server restarts: that memory is gone, and A's token pushes into B's
    namespace for the rest of its lifetime (up to an hour). The same holds
    across processes sharing one database. Removals must be persisted (or the
    namespace's generation be part of the grant)."""
    server = start(tmp_path)
    try:
        admin = Api(server, ADMIN_KEY)
        admin.namespace("us-south", "reclaimed")
        a_token = bearer(server, US, ADMIN_KEY, "repository:reclaimed/app:pull,push")
        admin.call("DELETE", "/cr/us-south/namespaces/reclaimed", expect=204)
        b, _ = new_account(admin, "claimant")
        b.namespace("us-south", "reclaimed")
        upload = f"http://{server.host_for(US)}/v2/reclaimed/app/blobs/uploads/"
        assert requests.post(upload, headers=a_token, timeout=5).status_code == 401

        server.stop()
        server.start()
        after = requests.post(upload, headers=a_token, timeout=5)
        assert after.status_code == 401, (
            f"A's old token writes into B's namespace: {after.status_code}"
        )
    finally:
        server.stop()


def _held_request(
    server: MoorageServer, method: str, path: str, headers: dict[str, str], body: bytes
) -> socket.socket:
    """A request whose head and all but the last byte of its body are sent."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {server.host_for(US)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(head.encode() + body[:-1])
    return sock


def _finish(sock: socket.socket, body: bytes) -> int:
    sock.sendall(body[-1:])
    received = b""
    while b"\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    sock.close()
    return int(received.split(b" ", 2)[1])


def test_a_push_in_flight_cannot_land_in_the_namespace_after_removal(
    server: MoorageServer, admin: Api
) -> None:
    """The push's requests pass the access check before the removal and write
    after it: blobs (monolithic POST) and the manifest PUT each re-create the
    repository (``_ensure_repository`` never asks whether the namespace exists).
    When another account has claimed the name meanwhile, a whole image of the
    former owner appears in the new owner's namespace, under a tag of the former
    owner's choosing. A write must re-check, in its transaction, that the
    namespace still exists and is owned as when the token was issued."""
    admin.namespace("us-south", "handover")
    headers = bearer(server, US, ADMIN_KEY, "repository:handover/app:pull,push")
    image = make_image(1, 2048, "planted")
    base = "/v2/handover/app"
    held = [
        _held_request(server, "POST", f"{base}/blobs/uploads/?digest={sha256(blob)}", headers, blob)
        for blob in (image.config, *image.layers)
    ]
    held.append(
        _held_request(
            server,
            "PUT",
            f"{base}/manifests/latest",
            {**headers, "Content-Type": OCI_MANIFEST},
            image.manifest,
        )
    )
    bodies = [image.config, *image.layers, image.manifest]

    def inflight() -> bool:
        health = requests.get(f"{server.url}/health", timeout=5).json()
        return int(health["inflight_requests"]) >= len(held)

    # Every held request is past its access check (it awaits its body there).
    wait_for(inflight, 30, "the held requests to reach their handlers")
    admin.call("DELETE", "/cr/us-south/namespaces/handover", expect=204)
    newowner, _ = new_account(admin, "newowner")
    newowner.namespace("us-south", "handover")

    statuses = [_finish(sock, body) for sock, body in zip(held, bodies, strict=True)]
    images = newowner.call("GET", "/cr/us-south/images", expect=200)
    planted = [i for i in images if i["repository"] == "handover/app"]
    assert planted == [], (
        f"the former owner's push landed in the new owner's namespace {statuses}: {planted}"
    )


# -- what other principals learn ---------------------------------------------


def test_the_pull_check_does_not_tell_which_namespaces_other_accounts_own(
    server: MoorageServer, admin: Api
) -> None:
    """Any signed-in tenant, with its own API key as the credential, asks the
    pull check about ``<name>/x``: 'does not exist' and 'belongs to another
    account than the credential's' tell apart the namespaces other accounts own
    from free names. For a namespace not of the caller's account the answer
    should be one and the same."""
    admin.namespace("us-south", "secret-project")
    outsider, _ = new_account(admin, "outsider")
    outsider_key = outsider.auth[1]
    causes = {}
    for repository in ("secret-project/app", "no-such-project/app"):
        verdict = outsider.call(
            "POST",
            "/cr/pull-check",
            {
                "registry": US,
                "repository": repository,
                "username": "iamapikey",
                "password": outsider_key,
            },
            expect=201,
        )
        causes[repository] = verdict["cause"].replace(repository.split("/")[0], "<ns>")
    assert len(set(causes.values())) == 1, causes


def test_a_member_who_may_not_view_iam_learns_nothing_of_others_key_names(
    server: MoorageServer, admin: Api
) -> None:
    """A member with only Reader on the registry (no Viewer) probes key names:
    another member's key answers 403, a name nobody uses 404, and two keys
    sharing a name 409 with their count. Keys that are not the caller's should
    answer like keys that do not exist."""
    admin.call("POST", "/iam/service-ids", {"name": "deployer"}, expect=201)
    admin.call("POST", "/iam/service-ids/deployer/api-keys", {"name": "prod-deploy"}, expect=201)
    reader = invite(admin, "reader@a.test", "reader-password-1")
    admin.call(
        "POST",
        f"/iam/users/{reader['id']}/policies",
        {"roles": "Reader", "service_name": "container-registry"},
        expect=201,
    )
    probe = Api(server, "reader-password-1", user="reader@a.test")
    assert probe.request("GET", "/iam/users").status_code == 403  # not a viewer
    taken = probe.request("GET", "/iam/api-keys/prod-deploy")
    free = probe.request("GET", "/iam/api-keys/no-such-key-name")
    assert taken.status_code == free.status_code, (taken.status_code, free.status_code)


# -- cost -------------------------------------------------------------------------


def test_one_token_request_cannot_name_hundreds_of_scopes(
    server: MoorageServer, admin: Api
) -> None:
    """Each scope costs a database look-up on the default thread pool, the one
    uploads hash and write with, and nothing bounds their number. Measured on
    this machine: an anonymous GET with 250 scopes (a 7.5 KiB URL) costs
    ~0.15 s; sixteen anonymous clients repeating it took an 8 MiB blob upload
    from 0.05 s to 1.5-6.7 s. With any key, one 63 KiB form names ~2,100 scopes
    (~0.4 s each). Docker clients send one to three scopes: the number per
    request should be bounded (400), before any look-up."""
    url = f"http://{server.host_for(US)}/oauth/token"
    scopes = "&".join(f"scope=repository:n{i:04d}/x:pull" for i in range(250))
    anonymous = requests.get(f"{url}?service={US}&{scopes}", timeout=60)  # a 7.5 KiB URL
    assert anonymous.status_code == 400, f"{anonymous.status_code}: 250 scopes, anonymously"
    signed_in = requests.post(
        url,
        data={
            "grant_type": "password",
            "username": "iamapikey",
            "password": ADMIN_KEY,
            "service": US,
            "scope": " ".join(f"repository:n{i:04d}/x:pull" for i in range(2100)),
        },
        timeout=60,
    )
    assert signed_in.status_code == 400, f"{signed_in.status_code}: 2,100 scopes in one form"
