"""A push may outlive its token, but not its principal, its key or its rights;
and removing a namespace ends everything it held, upload sessions included."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest
import requests

from tests.helpers import wait_for
from tests.iam_helpers import ADMIN_KEY, Api, bearer
from tests.server import MoorageServer, ensure_region_hosts

US = "us.localhost"
CHUNK = 64 << 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("uploads")
    started = MoorageServer(
        tmp / "data",
        tmp / "server.log",
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY, "MOORAGE_TOKEN_LIFETIME": "5"},
    ).start()
    yield started
    started.stop()


class Upload:
    """One upload session, driven chunk by chunk with a fixed token."""

    def __init__(self, server: MoorageServer, repo: str, headers: dict[str, str]) -> None:
        self.host = server.host_for(US)
        self.headers = headers
        self.data = b""
        r = requests.post(
            f"http://{self.host}/v2/{repo}/blobs/uploads/", headers=headers, timeout=5
        )
        assert r.status_code == 202, r.text
        self.location = r.headers["Location"]
        self.repo = repo

    def patch(self, size: int = 64 << 10) -> int:
        chunk = os.urandom(size)
        r = requests.patch(
            f"http://{self.host}{self.location}", data=chunk, headers=self.headers, timeout=10
        )
        if r.status_code == 202:
            self.data += chunk
        return r.status_code

    def finish(self) -> int:
        digest = "sha256:" + hashlib.sha256(self.data).hexdigest()
        r = requests.put(
            f"http://{self.host}{self.location}",
            params={"digest": digest},
            headers=self.headers,
            timeout=10,
        )
        return r.status_code


def expired(server: MoorageServer, repo: str, headers: dict[str, str]) -> bool:
    r = requests.get(
        f"http://{server.host_for(US)}/v2/{repo}/tags/list", headers=headers, timeout=5
    )
    return r.status_code == 401


def test_an_upload_outlives_its_token_only_while_its_principal_may_push(
    server: MoorageServer,
) -> None:
    admin = Api(server, ADMIN_KEY)
    admin.namespace("us-south", "long-push")
    key = admin.service_key("pusher", "Writer", region="us-south")
    headers = bearer(server, US, key, "repository:long-push/app:pull,push")
    upload = Upload(server, "long-push/app", headers)
    assert upload.patch() == 202
    wait_for(lambda: expired(server, "long-push/app", headers), 30, "the token to expire")
    assert upload.patch() == 202  # the promise: a long push survives its token

    admin.call("POST", "/iam/service-ids/pusher/api-keys/pusher-key/lock", expect=201)
    assert upload.patch() == 401
    admin.call("POST", "/iam/service-ids/pusher/api-keys/pusher-key/unlock", expect=201)
    assert upload.patch() == 202

    policy = admin.call("GET", "/iam/service-ids/pusher/policies", expect=200)[0]
    admin.call("DELETE", f"/iam/policies/{policy['id']}", expect=204)
    assert upload.patch() == 401
    admin.call(
        "POST",
        "/iam/service-ids/pusher/policies",
        {"roles": "Reader", "service_name": "container-registry"},
        expect=201,
    )
    assert upload.patch() == 401  # pull is not push
    admin.call(
        "POST",
        "/iam/service-ids/pusher/policies",
        {"roles": "Writer", "service_name": "container-registry", "region": "us-south"},
        expect=201,
    )
    assert upload.patch() == 202

    admin.call("DELETE", "/iam/service-ids/pusher", expect=204)
    assert upload.patch() == 401
    assert upload.finish() == 401


def test_an_upload_with_a_valid_token_lacking_push_needs_push_now(server: MoorageServer) -> None:
    """The owner's token for pull only does not carry on a session it started."""
    admin = Api(server, ADMIN_KEY)
    admin.namespace("us-south", "scope-drop")
    key = admin.service_key("dropper", "Writer", region="us-south")
    upload = Upload(
        server, "scope-drop/app", bearer(server, US, key, "repository:scope-drop/app:pull,push")
    )
    assert upload.patch() == 202
    upload.headers = bearer(server, US, key, "repository:scope-drop/app:pull")
    assert upload.patch() == 202  # still a Writer: the session is its own
    policy = admin.call("GET", "/iam/service-ids/dropper/policies", expect=200)[0]
    admin.call("DELETE", f"/iam/policies/{policy['id']}", expect=204)
    assert upload.patch() == 401


def test_removing_a_namespace_ends_its_uploads_and_its_tokens(server: MoorageServer) -> None:
    admin = Api(server, ADMIN_KEY)
    admin.namespace("us-south", "contested")
    headers = bearer(server, US, ADMIN_KEY, "repository:contested/app:pull,push")
    upload = Upload(server, "contested/app", headers)
    assert upload.patch() == 202
    upload_id = upload.location.rsplit("/", 1)[1]
    assert upload_id in server.upload_files()  # staged bytes, on disk or in the bucket

    admin.call("DELETE", "/cr/us-south/namespaces/contested", expect=204)
    assert upload_id not in server.upload_files()
    assert not server.query("SELECT * FROM uploads WHERE repository LIKE 'contested%'")
    assert not server.query("SELECT * FROM repositories WHERE namespace='contested'")

    # Another account claims the name; the first account's session and token are void.
    created = admin.call(
        "POST", "/iam/accounts", {"name": "claimant", "admin_email": "c@claim.test"}, expect=201
    )
    claimant = Api(server, created["apikey"])
    claimant.namespace("us-south", "contested")
    assert upload.patch() in (401, 404)
    assert upload.finish() in (401, 404)
    assert (
        requests.post(
            f"http://{server.host_for(US)}/v2/contested/app/blobs/uploads/",
            headers=headers,
            timeout=5,
        ).status_code
        == 401
    )
    theirs = Upload(
        server,
        "contested/app",
        bearer(server, US, created["apikey"], "repository:contested/app:pull,push"),
    )
    assert theirs.patch() == 202 and theirs.finish() == 201


def test_a_refresh_token_is_not_a_bearer_token(server: MoorageServer) -> None:
    admin = Api(server, ADMIN_KEY)
    admin.namespace("us-south", "refresh-ns")
    host = server.host_for(US)
    reply = requests.get(
        f"http://{host}/oauth/token",
        params={
            "service": US,
            "scope": "repository:refresh-ns/app:pull,push",
            "offline_token": "true",
        },
        auth=("iamapikey", ADMIN_KEY),
        timeout=10,
    ).json()
    upload = Upload(server, "refresh-ns/app", {"Authorization": f"Bearer {reply['token']}"})
    assert upload.patch() == 202
    upload.headers = {"Authorization": f"Bearer {reply['refresh_token']}"}
    assert upload.patch() == 401
    base = requests.get(f"http://{host}/v2/", headers=upload.headers, timeout=5)
    assert base.status_code == 401


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_a_refused_request_leaves_the_upload_resumable(
    server: MoorageServer, algorithm: str
) -> None:
    """Out of order (PATCH or closing PUT), a wrong digest, a Content-Length
    that is not the Content-Range: each is refused, and the session keeps its
    offset and bytes; the client resumes from the Range a GET reports."""
    admin = Api(server, ADMIN_KEY)
    namespace = f"resume-{algorithm}"
    admin.namespace("us-south", namespace)
    repo = f"{namespace}/app"
    scope = f"repository:{repo}:pull,push"
    data = os.urandom(3 * CHUNK)
    digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    upload = Upload(server, repo, bearer(server, US, ADMIN_KEY, scope))
    url = f"http://{upload.host}{upload.location}"

    def send(method: str, start: int, end: int, **extra: object) -> requests.Response:
        """Bytes ``start`` to ``end`` (exclusive) as one chunk, with a fresh token."""
        headers = {
            **bearer(server, US, ADMIN_KEY, scope),
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{end - 1}",
            **extra.pop("headers", {}),  # type: ignore[dict-item]
        }
        return requests.request(
            method, url, data=data[start:end], headers=headers, timeout=10, **extra
        )

    def resumes_at() -> str:
        r = requests.get(url, headers=bearer(server, US, ADMIN_KEY, scope), timeout=5)
        assert r.status_code == 204, r.text
        return r.headers["Range"]

    assert send("PATCH", 0, CHUNK).status_code == 202
    refused = [
        send("PATCH", 2 * CHUNK, 3 * CHUNK),  # skips ahead
        send("PATCH", 0, CHUNK),  # sent again
        send("PUT", 2 * CHUNK, 3 * CHUNK, params={"digest": digest}),  # last, out of order
    ]
    assert [r.status_code for r in refused] == [416, 416, 416]
    assert all(r.headers["Range"] == f"0-{CHUNK - 1}" for r in refused)
    assert resumes_at() == f"0-{CHUNK - 1}"

    wrong = f"{algorithm}:{hashlib.new(algorithm, data + b'!').hexdigest()}"
    assert send("PUT", CHUNK, 3 * CHUNK, params={"digest": wrong}).status_code == 400
    assert resumes_at() == f"0-{CHUNK - 1}"
    # A Content-Range of 5 bytes on a body of CHUNK bytes.
    mismatched = send("PATCH", CHUNK, 2 * CHUNK, headers={"Content-Range": f"{CHUNK}-{CHUNK + 4}"})
    assert mismatched.status_code == 400
    assert resumes_at() == f"0-{CHUNK - 1}"

    assert send("PATCH", CHUNK, 2 * CHUNK).status_code == 202
    assert (
        requests.put(
            url,
            params={"digest": wrong},
            headers=bearer(server, US, ADMIN_KEY, scope),
            timeout=10,
        ).status_code
        == 400
    )
    assert resumes_at() == f"0-{2 * CHUNK - 1}"
    assert send("PUT", 2 * CHUNK, 3 * CHUNK, params={"digest": digest}).status_code == 201
    blob = requests.get(
        f"http://{upload.host}/v2/{repo}/blobs/{digest}",
        headers=bearer(server, US, ADMIN_KEY, f"repository:{repo}:pull"),
        timeout=10,
    )
    assert blob.status_code == 200 and blob.content == data
