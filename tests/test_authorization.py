"""Every kind of principal against every route that names something: another
account, another region, another namespace, a lower role, a locked or deleted
key. Each refusal is a 403 or 404 that changed nothing in the database."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from moorage.config import Settings
from tests.helpers import wait_for
from tests.iam_helpers import ADMIN_KEY, Api, all_rows, bearer, push_image_with
from tests.oci_layout import make_image
from tests.server import MoorageServer, ensure_region_hosts

US = "us.localhost"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("authz")
    started = MoorageServer(
        tmp / "data", tmp / "server.log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    ).start()
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


@pytest.fixture(scope="module")
def victim(server: MoorageServer, admin: Api) -> dict[str, str]:
    """Things of the first account in us-south, each with the id a route takes."""
    admin.namespace("us-south", "victim-ns")
    admin.namespace("us-south", "other-ns")
    headers = bearer(server, US, ADMIN_KEY, "repository:victim-ns/app:pull,push")
    pushed = push_image_with(server, US, "victim-ns/app", "v1", make_image(1, 1024, "v"), headers)
    assert pushed.status_code == 201, pushed.text
    token = admin.call("POST", "/cr/us-south/tokens", {"readwrite": True}, expect=201)
    admin.call("POST", "/iam/service-ids", {"name": "victim-sid"}, expect=201)
    policy = admin.call(
        "POST",
        "/iam/service-ids/victim-sid/policies",
        {"roles": "Reader", "service_name": "container-registry"},
        expect=201,
    )
    key = admin.call("POST", "/iam/service-ids/victim-sid/api-keys", {"name": "vk"}, expect=201)
    user = admin.call(
        "POST",
        "/iam/users",
        {"email": "victim@a.test", "password": "victim-password-1"},
        expect=201,
    )
    return {
        "ref_user": user["id"],
        "ref_user_email": "victim@a.test",
        "ref_sid": "victim-sid",
        "key": key["id"],
        "key_name": "vk",
        "id_policy": policy["id"],
        "id_token": token["id"],
        "name": "victim-ns",
        "image": "victim-ns/app:v1",
        "digest": pushed.headers["Docker-Content-Digest"],
        "id_exemption": admin.call(
            "POST",
            "/cr/us-south/exemptions",
            {"scope": "victim-ns", "issue_type": "cve", "issue_id": "CVE-2099-2"},
            expect=201,
        )["id"],
        "admin_key": admin.call("GET", "/iam/me", expect=200)["api_key"],
    }


def attacker(admin: Api, name: str, roles: str, **scope: str) -> Api:
    """A service ID of the first account with one policy on the registry and one on IAM."""
    key = admin.service_key(name, roles, **scope)
    admin.call(
        "POST",
        f"/iam/service-ids/{name}/policies",
        {"roles": "Administrator", "service_name": "container-registry", **scope},
        expect=201,
    )
    return Api(admin.server, key)


def _cosign_public_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


BODIES: dict[str, Any] = {
    "signers": {"name": "intruder", "public_key": _cosign_public_key()},
    "policies": {"roles": "Manager", "service_name": "container-registry"},
    "api-keys": {"name": "stolen"},
    "PATCH": {"name": "renamed"},
    "image-tags": {"source": "victim-ns/app:v1", "target": "victim-ns/app:hijacked"},
    "exemptions": {"scope": "victim-ns/app", "issue_type": "cve", "issue_id": "CVE-2099-1"},
}


def calls_for(path: str, method: str, v: dict[str, str], region: str) -> list[tuple[str, Any]]:
    """The victim-naming variants of one route: (path, body)."""
    subs = {
        "{region}": [region],
        "{name}": [v["name"]],
        "{id}": [v["id_token"]] if "/tokens/" in path else [v["id_policy"]],
        "{key}": [v["key"], v["key_name"]],
        "{signer}": ["victim-signer"],
        "{image}": [v["image"], v["image"].replace(":v1", "@" + v["digest"])],
    }
    if "/exemptions/" in path:
        subs["{id}"] = [v["id_exemption"]]
    if path.startswith("/api/v1/iam/users/"):
        subs["{ref}"] = [v["ref_user"], v["ref_user_email"]]
    elif path.startswith("/api/v1/iam/service-ids/"):
        subs["{ref}"] = [v["ref_sid"]]
    else:
        subs["{ref}"] = [v["key"], v["admin_key"]]
    paths = [path]
    for placeholder, values in subs.items():
        paths = [p.replace(placeholder, value) for p in paths for value in values]
    assert not re.search(r"\{\w+\}", paths[0]), f"no victim for a parameter of {path}"
    body = BODIES["PATCH"] if method == "PATCH" else BODIES.get(path.rsplit("/", 1)[-1])
    return [(p, body) for p in paths]


def test_every_route_that_names_something_refuses_other_scopes(
    server: MoorageServer, admin: Api, victim: dict[str, str]
) -> None:
    other_account, _ = new_account(admin, "intruder")
    other_account.namespace("eu-gb", "their-ns")
    principals = {
        "Manager+Administrator in eu-gb": attacker(admin, "eu-mgr", "Manager", region="eu-gb"),
        "Manager+Administrator on other-ns": attacker(
            admin,
            "ns-mgr",
            "Manager",
            region="us-south",
            resource_type="namespace",
            resource="other-ns",
        ),
        "administrator of another account": other_account,
    }
    document = requests.get(f"{server.url}/api/v1/openapi.json", timeout=5).json()
    routes = [
        (path, method.upper())
        for path, methods in document["paths"].items()
        for method in methods
        if "{" in path
        and path != "/api/v1/cr/{region}/namespaces"
        and not path.endswith(("/images", "/tokens"))
        and not (method == "get" and path.endswith("/exemptions"))  # a listing, below
    ] + [("/api/v1/cr/{region}/image", "GET"), ("/api/v1/cr/{region}/image", "DELETE")]
    assert len(routes) > 25
    before = all_rows(server)
    tried = 0
    for who, api in principals.items():
        # The region of the victim, and for the regional attacker its own region too:
        # a us-south token id through /cr/eu-gb/ must not be found either.
        for region in ("us-south", "eu-gb"):
            for path, method in routes:
                for target, body in calls_for(path, method, victim, region):
                    query = {"image": victim["image"]} if target.endswith("/image") else {}
                    r = api.request(method, target.removeprefix("/api/v1"), body, **query)
                    tried += 1
                    assert r.status_code in (403, 404), f"{who}: {method} {target} -> {r.text}"
    assert tried > 200
    assert all_rows(server) == before
    # Listings in the victim's region show the other scopes nothing of it.
    for who, api in principals.items():
        for listing in (
            "/cr/us-south/namespaces",
            "/cr/us-south/images",
            "/cr/us-south/exemptions",
        ):
            r = api.request("GET", listing)
            assert r.status_code in (200, 403), f"{who}: {listing}"
            assert "victim-ns" not in r.text, f"{who} sees the victim in {listing}"
        r = api.request("GET", "/cr/us-south/tokens")
        assert r.status_code in (200, 403) and victim["id_token"] not in r.text, who


def test_a_regional_manager_cannot_take_another_regions_registry_token(
    server: MoorageServer, admin: Api, victim: dict[str, str]
) -> None:
    eu = attacker(admin, "eu-tokens", "Manager", region="eu-gb")
    token_id = victim["id_token"]
    assert eu.request("GET", f"/cr/eu-gb/tokens/{token_id}").status_code == 404
    assert eu.request("DELETE", f"/cr/eu-gb/tokens/{token_id}").status_code == 404
    assert eu.request("GET", f"/cr/us-south/tokens/{token_id}").status_code == 403
    assert token_id not in eu.request("GET", "/cr/eu-gb/tokens").text
    assert admin.request("GET", f"/cr/us-south/tokens/{token_id}").status_code == 200


def test_the_catalog_shows_only_namespaces_the_caller_may_pull(
    server: MoorageServer, admin: Api
) -> None:
    admin.namespace("us-south", "alpha")
    admin.namespace("us-south", "alpha2")
    write = bearer(server, US, ADMIN_KEY, "repository:alpha/one:pull,push")
    write2 = bearer(server, US, ADMIN_KEY, "repository:alpha2/two:pull,push")
    for repo, headers in (("alpha/one", write), ("alpha2/two", write2)):
        pushed = push_image_with(server, US, repo, "v1", make_image(1, 512, repo), headers)
        assert pushed.status_code == 201
    reader = admin.service_key(
        "alpha-reader", "Reader", region="us-south", resource_type="namespace", resource="alpha"
    )
    headers = bearer(server, US, reader, "registry:catalog:*")
    listed = requests.get(f"http://{server.host_for(US)}/v2/_catalog", headers=headers, timeout=5)
    assert listed.status_code == 200
    assert listed.json()["repositories"] == ["alpha/one"]


def test_an_administrators_lock_is_not_the_owners_to_undo(
    server: MoorageServer, admin: Api
) -> None:
    admin.call(
        "POST", "/iam/users", {"email": "keyowner@a.test", "password": "owner-password-1"}, 201
    )
    owner = Api(server, "owner-password-1", user="keyowner@a.test")
    key = owner.call("POST", "/iam/api-keys", {"name": "mine"}, expect=201)
    mine = Api(server, key["apikey"])
    # The owner's own lock is the owner's to undo.
    owner.call("POST", f"/iam/api-keys/{key['id']}/lock", expect=201)
    assert mine.request("GET", "/iam/me").status_code == 401
    owner.call("POST", f"/iam/api-keys/{key['id']}/unlock", expect=201)
    assert mine.request("GET", "/iam/me").status_code == 200
    # An administrator's lock is not.
    admin.call("POST", f"/iam/api-keys/{key['id']}/lock", expect=201)
    refused = owner.request("POST", f"/iam/api-keys/{key['id']}/unlock")
    assert refused.status_code == 403 and "administrator" in refused.json()["error"]["message"]
    assert mine.request("GET", "/iam/me").status_code == 401
    admin.call("POST", f"/iam/api-keys/{key['id']}/unlock", expect=201)
    assert mine.request("GET", "/iam/me").status_code == 200


def test_a_person_is_one_identity_in_several_accounts(server: MoorageServer, admin: Api) -> None:
    admin.call(
        "POST", "/iam/users", {"email": "dana@a.test", "password": "danas-own-password"}, 201
    )
    other, other_account = new_account(admin, "second")
    third, third_account = new_account(admin, "third")
    # Inviting an email another account uses neither fails nor says so ...
    invited = other.call(
        "POST", "/iam/users", {"email": "Dana@A.test ", "password": "chosen-by-account-b"}, 201
    )
    assert invited["email"] == "dana@a.test"
    assert [u["email"] for u in other.call("GET", "/iam/users", expect=200)] == [
        "admin@second.test",
        "dana@a.test",
    ]
    assert "admin@moorage.local" not in other.request("GET", "/iam/users").text
    assert other.request("GET", "/iam/users/admin@moorage.local/policies").status_code == 404
    # ... and each account's password opens that account only: one identity, whose
    # memberships hold the passwords their accounts chose.
    in_a = Api(server, "danas-own-password", user="dana@a.test").call("GET", "/iam/me", 200)
    in_b = Api(server, "chosen-by-account-b", user="dana@a.test").call("GET", "/iam/me", 200)
    assert in_a["id"] == in_b["id"] == invited["id"]
    assert in_b["accounts"] == [other_account] and other_account not in in_a["accounts"]
    # Where one password opens several accounts, the person names the one to act in.
    third.call("POST", "/iam/users", {"email": "dana@a.test", "password": "chosen-by-account-b"})
    dana = Api(server, "chosen-by-account-b", user="dana@a.test")
    assert sorted(dana.call("GET", "/iam/me", expect=200)["accounts"]) == sorted(
        [other_account, third_account]
    )
    ambiguous = dana.request("GET", "/iam/api-keys")
    assert ambiguous.status_code == 400 and "X-Moorage-Account" in ambiguous.text
    chosen = Api(server, "chosen-by-account-b", user="dana@a.test", account=other_account)
    assert chosen.request("GET", "/iam/api-keys").status_code == 200
    outsider = Api(server, "chosen-by-account-b", user="dana@a.test", account="acct-nope")
    assert outsider.request("GET", "/iam/api-keys").status_code == 403
    # Each account's policies count only in that account's namespaces.
    other.namespace("us-south", "b-space")
    other.call(
        "POST",
        "/iam/users/dana@a.test/policies",
        {"roles": "Writer", "service_name": "container-registry"},
        expect=201,
    )
    third.namespace("us-south", "c-space")
    reply = requests.get(
        f"http://{server.host_for(US)}/oauth/token",
        params=[
            ("service", US),
            ("scope", "repository:b-space/app:pull,push"),
            ("scope", "repository:c-space/app:pull,push"),
        ],
        auth=("dana@a.test", "chosen-by-account-b"),
        timeout=10,
    )
    import jwt

    access = jwt.decode(reply.json()["token"], options={"verify_signature": False})["access"]
    assert access == [{"type": "repository", "name": "b-space/app", "actions": ["pull", "push"]}]
    # Removing the person from one account leaves the identity in the others.
    other.call("DELETE", "/iam/users/dana@a.test", expect=204)
    assert dana.call("GET", "/iam/me", expect=200)["accounts"] == [third_account]


def _raw(server: MoorageServer, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(data)
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


@pytest.mark.parametrize("second_method", ["PATCH", "PUT"])
def test_two_chunks_claiming_one_range_cannot_both_land(
    server: MoorageServer, admin: Api, second_method: str
) -> None:
    """The loser, a PATCH or a closing PUT with the chunk, is refused with the
    winner's Range and leaves the session to the winner."""
    namespace = f"racing-{second_method.lower()}"
    admin.namespace("us-south", namespace)
    headers = bearer(server, US, ADMIN_KEY, f"repository:{namespace}/app:pull,push")
    host = server.host_for(US)
    start = requests.post(
        f"http://{host}/v2/{namespace}/app/blobs/uploads/", headers=headers, timeout=5
    )
    location = start.headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    if server.storage == "s3":
        # The S3 driver writes nothing before a whole part (or the end of the
        # append): it holds the upload once its multipart upload exists.
        part = Settings().s3_part_size
        size, held_after = part + (2 << 20), part + (1 << 20)

        def first_holds() -> bool:
            return upload_id in server.upload_files()
    else:
        # Its first MiB is in the staged file, so it holds the upload.
        size, held_after = 2 << 20, 3 << 19
        staged = server.data_dir / "uploads" / upload_id

        def first_holds() -> bool:
            return staged.stat().st_size >= 1 << 20

    first, second = os.urandom(size), os.urandom(size)

    def patch_head(method: str = "PATCH", target: str = location) -> bytes:
        return (
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: {headers['Authorization']}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Range: 0-{size - 1}\r\n"
            f"Content-Length: {size}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()

    # The first PATCH is appending (and holds the upload) when the second one
    # arrives for the same range. (Waiting for the bytes, not for 100 Continue:
    # the handler reads the session from the database on a worker thread
    # before it takes the upload.)
    one = _raw(server, patch_head())
    assert b"100 Continue" in _read_until(one, b"\r\n\r\n")
    one.sendall(first[:held_after])
    wait_for(first_holds, 30, "the first chunk's bytes in the store")
    closing = f"{location}?digest=sha256:{hashlib.sha256(second).hexdigest()}"
    two = _raw(server, patch_head(second_method, closing if second_method == "PUT" else location))
    assert b"100 Continue" in _read_until(two, b"\r\n\r\n")
    one.sendall(first[held_after:])
    first_reply = _read_until(one, b"\r\n\r\n")
    two.sendall(second)
    second_reply = _read_until(two, b"\r\n\r\n")
    one.close()
    two.close()
    statuses = [int(r.split(b" ", 2)[1]) for r in (first_reply, second_reply)]
    assert statuses == [202, 416], (first_reply[:200], second_reply[:200])
    assert f"range: 0-{size - 1}".encode() in second_reply.lower()
    # The upload holds exactly the chunk that won, and finishes.
    status = requests.get(f"http://{host}{location}", headers=headers, timeout=5)
    assert status.status_code == 204 and status.headers["Range"] == f"0-{size - 1}"
    digest = "sha256:" + hashlib.sha256(first).hexdigest()
    done = requests.put(
        f"http://{host}{location}", params={"digest": digest}, headers=headers, timeout=30
    )
    assert done.status_code == 201, done.text


def test_bad_input_gets_a_clear_4xx(server: MoorageServer, admin: Api) -> None:
    admin.namespace("us-south", "nesting")
    headers = bearer(server, US, ADMIN_KEY, "repository:nesting/app:pull,push")
    before = all_rows(server)
    deep = b"[" * 100_000 + b"]" * 100_000
    r = requests.put(
        f"http://{server.host_for(US)}/v2/nesting/app/manifests/v1",
        data=b'{"schemaVersion": 2, "x": ' + deep + b"}",
        headers={**headers, "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    nested = requests.post(
        f"{server.url}/api/v1/iam/service-ids",
        data=b'{"name": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        auth=("iamapikey", ADMIN_KEY),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert nested.status_code in (400, 413), nested.text
    form = requests.post(
        f"http://{server.host_for(US)}/oauth/token",
        data={"grant_type": "password", "username": "x@y.z", "password": "p" * (70 << 10)},
        timeout=30,
    )
    assert form.status_code == 413, form.text
    for body in (b"not json", b"[]", b'{"name": 5}', b'{"name": "ok", "extra": 1}', b""):
        r = requests.post(
            f"{server.url}/api/v1/iam/service-ids",
            data=body,
            auth=("iamapikey", ADMIN_KEY),
            timeout=5,
        )
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["message"]
    assert all_rows(server) == before


def test_basic_credentials_are_parsed_strictly(server: MoorageServer) -> None:
    for header in ("Basic", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        r = requests.get(
            f"{server.url}/api/v1/iam/me", headers={"Authorization": header}, timeout=5
        )
        assert r.status_code == 401, header


def test_openapi_describes_request_bodies(server: MoorageServer) -> None:
    document = requests.get(f"{server.url}/api/v1/openapi.json", timeout=5).json()
    operation = document["paths"]["/api/v1/iam/service-ids"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["required"] == ["name"] and schema["additionalProperties"] is False
    assert json.dumps(document)  # serialisable as it is served
