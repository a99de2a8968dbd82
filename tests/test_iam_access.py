"""The access matrix of issue 3, enforced against real skopeo and podman over
the Docker token protocol, on the regional, global and legacy domains."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import require_tool
from tests.helpers import wait_for
from tests.iam_helpers import ADMIN_KEY, Api, dockerconfigjson, skopeo
from tests.oci_layout import make_image, write_layout
from tests.server import MoorageServer, ensure_region_hosts, table_rows


@pytest.fixture(scope="module")
def iam_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    require_tool("skopeo")
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("iam")
    server = MoorageServer(
        tmp / "data", tmp / "server.log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_layout(make_image(2, 4096, "iam"), tmp_path_factory.mktemp("layout") / "img")


@pytest.fixture(scope="module")
def admin(iam_registry: MoorageServer) -> Api:
    api = Api(iam_registry, ADMIN_KEY)
    for region, name in [
        ("us-south", "team-a"),
        ("us-south", "team-b"),
        ("eu-de", "team-a"),
        ("global", "public"),
    ]:
        api.namespace(region, name)
    return api


def push(registry: MoorageServer, layout: Path, domain: str, ref: str, creds: str) -> bool:
    result = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        f"oci:{layout}:latest",
        f"docker://{registry.host_for(domain)}/{ref}",
    )
    return result.returncode == 0


def pull(registry: MoorageServer, domain: str, ref: str, *auth: str) -> bool:
    with tempfile.TemporaryDirectory() as out:
        result = skopeo(
            "copy",
            "--src-tls-verify=false",
            *auth,
            f"docker://{registry.host_for(domain)}/{ref}",
            f"dir:{out}",
        )
    return result.returncode == 0


def creds(key: str) -> tuple[str, str]:
    return ("--src-creds", f"iamapikey:{key}")


def test_reader_writer_manager(
    iam_registry: MoorageServer, admin: Api, layout: Path, tmp_path: Path
) -> None:
    reader = admin.service_key("reader", "Reader", region="us-south")
    writer = admin.service_key("writer", "Writer", region="us-south")
    manager = admin.service_key("manager", "Manager", region="us-south")
    us = "us.localhost"

    assert push(iam_registry, layout, us, "team-a/app:v1", f"iamapikey:{writer}")
    assert not push(iam_registry, layout, us, "team-a/app:v2", f"iamapikey:{reader}")
    assert pull(iam_registry, us, "team-a/app:v1", *creds(reader))
    # The same pull through an auth file in .dockerconfigjson form.
    authfile = dockerconfigjson(
        tmp_path / "config.json", iam_registry.host_for(us), "iamapikey", reader
    )
    assert pull(iam_registry, us, "team-a/app:v1", "--authfile", str(authfile))

    target = f"docker://{iam_registry.host_for(us)}/team-a/app:v1"
    denied = skopeo("delete", "--tls-verify=false", "--creds", f"iamapikey:{writer}", target)
    assert denied.returncode != 0
    deleted = skopeo("delete", "--tls-verify=false", "--creds", f"iamapikey:{manager}", target)
    assert deleted.returncode == 0, deleted.stderr
    assert not pull(iam_registry, us, "team-a/app:v1", *creds(manager))


def test_push_needs_an_existing_namespace_of_the_account(
    iam_registry: MoorageServer, admin: Api, layout: Path
) -> None:
    assert push(iam_registry, layout, "us.localhost", "team-a/exists:v1", f"iamapikey:{ADMIN_KEY}")
    assert not push(
        iam_registry, layout, "us.localhost", "no-such-ns/app:v1", f"iamapikey:{ADMIN_KEY}"
    )
    # Another account cannot push into this account's namespace, whatever its roles.


def test_namespace_and_region_scopes(iam_registry: MoorageServer, admin: Api, layout: Path) -> None:
    for domain, ref in [
        ("us.localhost", "team-a/scoped:v1"),
        ("us.localhost", "team-b/scoped:v1"),
        ("de.localhost", "team-a/scoped:v1"),
    ]:
        assert push(iam_registry, layout, domain, ref, f"iamapikey:{ADMIN_KEY}")
    only_a = admin.service_key(
        "only-team-a", "Reader", region="us-south", resource_type="namespace", resource="team-a"
    )
    assert pull(iam_registry, "us.localhost", "team-a/scoped:v1", *creds(only_a))
    assert not pull(iam_registry, "us.localhost", "team-b/scoped:v1", *creds(only_a))

    us_only = admin.service_key("us-only", "Reader", region="us-south")
    assert pull(iam_registry, "us.localhost", "team-a/scoped:v1", *creds(us_only))
    assert not pull(iam_registry, "de.localhost", "team-a/scoped:v1", *creds(us_only))
    everywhere = admin.service_key("everywhere", "Reader")
    assert pull(iam_registry, "de.localhost", "team-a/scoped:v1", *creds(everywhere))


def test_locked_and_deleted_keys_are_refused_at_once(
    iam_registry: MoorageServer, admin: Api, layout: Path
) -> None:
    key = admin.service_key("lockme", "Reader")
    assert push(iam_registry, layout, "us.localhost", "team-a/lock:v1", f"iamapikey:{ADMIN_KEY}")
    assert pull(iam_registry, "us.localhost", "team-a/lock:v1", *creds(key))
    admin.call("POST", "/iam/api-keys/lockme-key/lock", expect=201)
    assert not pull(iam_registry, "us.localhost", "team-a/lock:v1", *creds(key))
    admin.call("POST", "/iam/api-keys/lockme-key/unlock", expect=201)
    assert pull(iam_registry, "us.localhost", "team-a/lock:v1", *creds(key))
    admin.call("DELETE", "/iam/api-keys/lockme-key", expect=204)
    assert not pull(iam_registry, "us.localhost", "team-a/lock:v1", *creds(key))


def test_anonymous_pulls_only_from_global_public_namespaces(
    iam_registry: MoorageServer, admin: Api, layout: Path
) -> None:
    assert push(iam_registry, layout, "localhost", "public/base:v1", f"iamapikey:{ADMIN_KEY}")
    assert push(iam_registry, layout, "us.localhost", "team-a/private:v1", f"iamapikey:{ADMIN_KEY}")
    assert pull(iam_registry, "localhost", "public/base:v1")
    assert not pull(iam_registry, "us.localhost", "team-a/private:v1")
    assert not push(iam_registry, layout, "localhost", "public/base:v2", "nobody:nothing")


def test_registry_tokens_work_only_on_their_legacy_domain(
    iam_registry: MoorageServer, admin: Api, layout: Path
) -> None:
    assert push(iam_registry, layout, "us.localhost", "team-a/legacy:v1", f"iamapikey:{ADMIN_KEY}")
    read_only = admin.call("POST", "/cr/us-south/tokens", {"description": "ro"}, expect=201)
    read_write = admin.call("POST", "/cr/us-south/tokens", {"readwrite": True}, expect=201)
    legacy = "registry.ng.localhost"
    assert pull(
        iam_registry, legacy, "team-a/legacy:v1", "--src-creds", f"token:{read_only['token']}"
    )
    assert not pull(
        iam_registry,
        "us.localhost",
        "team-a/legacy:v1",
        "--src-creds",
        f"token:{read_only['token']}",
    )
    assert not push(iam_registry, layout, legacy, "team-a/legacy:v2", f"token:{read_only['token']}")
    assert push(iam_registry, layout, legacy, "team-a/legacy:v2", f"token:{read_write['token']}")
    # API keys are refused on legacy domains, and tokens of one region in another.
    assert not pull(iam_registry, legacy, "team-a/legacy:v1", *creds(ADMIN_KEY))
    assert not pull(
        iam_registry,
        "registry.eu-de.localhost",
        "team-a/legacy:v1",
        "--src-creds",
        f"token:{read_only['token']}",
    )
    again = admin.call("GET", f"/cr/us-south/tokens/{read_only['id']}", expect=200)
    assert again["token"] == read_only["token"]
    admin.call("DELETE", f"/cr/us-south/tokens/{read_only['id']}", expect=204)
    assert not pull(
        iam_registry, legacy, "team-a/legacy:v1", "--src-creds", f"token:{read_only['token']}"
    )


def test_secrets_are_not_stored_in_plaintext(iam_registry: MoorageServer, admin: Api) -> None:
    key = admin.service_key("at-rest", "Reader")
    token = admin.call("POST", "/cr/us-south/tokens", {}, expect=201)["token"]
    dump = repr(table_rows(iam_registry.database_url))
    # The database's own files too, on SQLite (its log and free pages included).
    blob = b"".join(p.read_bytes() for p in iam_registry.data_dir.glob("metadata.db*"))
    for secret in (key, token, ADMIN_KEY):
        assert secret not in dump and secret.encode() not in blob
    assert ADMIN_KEY not in iam_registry.log_text()


def test_failed_sign_ins_are_throttled(tmp_path: Path) -> None:
    # A server of its own: the address-wide ceiling would block the other tests.
    registry = MoorageServer(
        tmp_path / "data",
        tmp_path / "log",
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
    ).start()
    try:
        _throttling(registry)
    finally:
        registry.stop()


def _throttling(iam_registry: MoorageServer) -> None:
    url = f"http://{iam_registry.host_for('us.localhost')}/oauth/token"

    def attempt(key: str) -> requests.Response:
        return requests.get(
            url, params={"service": "us.localhost"}, auth=("iamapikey", key), timeout=5
        )

    # One credential guessed at over and over is stopped after ten failures.
    codes = [attempt("the-same-wrong-key").status_code for _ in range(12)]
    assert codes == [401] * 10 + [429, 429]
    assert int(attempt("the-same-wrong-key").headers["Retry-After"]) > 0
    # Many different guesses from one address are stopped too, at a higher ceiling.
    codes = [attempt(f"guess-{i}").status_code for i in range(101)]
    assert codes[0] == 401 and codes[-1] == 429
    # The management API shares the ceiling.
    blocked = requests.get(
        f"http://{iam_registry.host}/api/v1/iam/me", auth=("iamapikey", ADMIN_KEY), timeout=5
    )
    assert blocked.status_code == 429


def test_token_protocol_details(iam_registry: MoorageServer, admin: Api) -> None:
    host = iam_registry.host_for("us.localhost")
    r = requests.get(f"http://{host}/v2/team-a/app/manifests/v1", timeout=5)
    assert r.status_code == 401
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="http://{host}/oauth/token",service="us.localhost"')
    assert 'scope="repository:team-a/app:pull"' in challenge

    params = [
        ("service", "us.localhost"),
        ("scope", "repository:team-a/app:pull,push,delete"),
        ("scope", "repository:team-b/app:pull"),
        ("offline_token", "true"),
    ]
    key = admin.service_key(
        "protocol", "Writer", region="us-south", resource_type="namespace", resource="team-a"
    )
    reply = requests.get(
        f"http://{host}/oauth/token", params=params, auth=("iamapikey", key), timeout=5
    ).json()
    import jwt as pyjwt

    claims = pyjwt.decode(reply["token"], options={"verify_signature": False})
    # Exactly the intersection: push and pull on team-a, nothing on team-b, no delete.
    assert claims["access"] == [
        {"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}
    ]
    header = pyjwt.get_unverified_header(reply["token"])
    jwks = requests.get(f"http://{host}/oauth/jwks.json", timeout=5).json()
    assert header["alg"] == "ES256" and header["kid"] in [k["kid"] for k in jwks["keys"]]
    assert reply["expires_in"] <= 3600 and "refresh_token" in reply

    refreshed = requests.post(
        f"http://{host}/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": reply["refresh_token"],
            "service": "us.localhost",
            "scope": "repository:team-a/app:pull",
        },
        timeout=5,
    )
    assert refreshed.status_code == 200
    admin.call("POST", "/iam/api-keys/protocol-key/lock", expect=201)
    revoked = requests.post(
        f"http://{host}/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": reply["refresh_token"],
            "service": "us.localhost",
        },
        timeout=5,
    )
    assert revoked.status_code == 401
    assert key not in iam_registry.log_text()


def test_expired_token_is_refused_but_an_upload_it_started_completes(
    server_factory,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    ensure_region_hosts()
    registry = MoorageServer(
        tmp_path / "data",
        tmp_path / "log",
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY, "MOORAGE_TOKEN_LIFETIME": "5"},
    )
    registry.start()
    try:
        Api(registry, ADMIN_KEY).namespace("us-south", "slow")
        host = registry.host_for("us.localhost")
        token = requests.get(
            f"http://{host}/oauth/token",
            params={"service": "us.localhost", "scope": "repository:slow/app:pull,push"},
            auth=("iamapikey", ADMIN_KEY),
            timeout=5,
        ).json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        start = requests.post(
            f"http://{host}/v2/slow/app/blobs/uploads/", headers=bearer, timeout=5
        )
        assert start.status_code == 202
        data = os.urandom(3 << 20)
        location = start.headers["Location"]
        r = requests.patch(
            f"http://{host}{location}", data=data[: 1 << 20], headers=bearer, timeout=5
        )
        assert r.status_code == 202
        # Until the token has expired (5 s, plus the verifier's 5 s leeway).
        wait_for(
            lambda: (
                requests.get(
                    f"http://{host}/v2/slow/app/tags/list", headers=bearer, timeout=5
                ).status_code
                == 401
            ),
            30,
            "the token to expire",
        )
        r = requests.patch(
            f"http://{host}{r.headers['Location']}", data=data[1 << 20 :], headers=bearer, timeout=5
        )
        assert r.status_code == 202, r.text
        import hashlib

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        done = requests.put(
            f"http://{host}{r.headers['Location']}",
            params={"digest": digest},
            headers=bearer,
            timeout=5,
        )
        assert done.status_code == 201, done.text
    finally:
        registry.stop()


def test_podman_with_creds_and_dockerconfigjson(
    iam_registry: MoorageServer, admin: Api, layout: Path, tmp_path: Path
) -> None:
    podman = require_tool("podman")
    runroot = Path(tempfile.mkdtemp(prefix="podrun", dir="/tmp"))  # podman caps its length

    def pod(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                podman,
                "--root",
                str(tmp_path / "root"),
                "--runroot",
                str(runroot),
                "--storage-driver=vfs",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

    reader = admin.service_key("pod-reader", "Reader", region="us-south")
    writer = admin.service_key("pod-writer", "Writer", region="us-south")
    host = iam_registry.host_for("us.localhost")
    assert pod("pull", f"oci:{layout}:latest").returncode == 0
    image = f"{host}/team-a/podman:v1"
    image_id = pod("images", "-q").stdout.split()[0]
    assert pod("tag", image_id, image).returncode == 0

    refused = pod("push", "--tls-verify=false", "--creds", f"iamapikey:{reader}", image)
    assert refused.returncode != 0
    pushed = pod("push", "--tls-verify=false", "--creds", f"iamapikey:{writer}", image)
    assert pushed.returncode == 0, pushed.stderr
    assert pod("rmi", "-f", image).returncode == 0

    authfile = dockerconfigjson(tmp_path / "auth.json", host, "iamapikey", reader)
    pulled = pod("pull", "--tls-verify=false", "--authfile", str(authfile), image)
    assert pulled.returncode == 0, pulled.stderr
    other = dockerconfigjson(tmp_path / "other.json", host, "iamapikey", "not-a-key")
    assert pod("pull", "--tls-verify=false", "--authfile", str(other), image).returncode != 0


def test_bootstrap_key_is_shown_once_and_works(tmp_path: Path) -> None:
    registry = MoorageServer(tmp_path / "data", tmp_path / "server.log", auth="token").start()
    try:
        shown = registry.stdout_path.read_text()
        assert "Please preserve the API key! It cannot be retrieved after it's created." in shown
        key = shown.split("API key", 1)[1].split("\n\n", 2)[1].strip()
        assert key not in registry.log_text()
        me = requests.get(f"{registry.url}/api/v1/iam/me", auth=("iamapikey", key), timeout=5)
        assert me.status_code == 200 and me.json()["kind"] == "user"
        registry.stop()
        registry.start()
        assert registry.stdout_path.read_text() == shown  # not printed again
    finally:
        registry.stop()


def test_openapi_document_lists_the_management_api(iam_registry: MoorageServer) -> None:
    document = requests.get(f"{iam_registry.url}/api/v1/openapi.json", timeout=5).json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path in (
        "/api/v1/iam/service-ids",
        "/api/v1/iam/service-ids/{ref}/policies",
        "/api/v1/cr/{region}/namespaces",
        "/api/v1/cr/{region}/tokens",
    ):
        assert path in paths
    assert "post" in paths["/api/v1/iam/service-ids"]
    unauthenticated = requests.get(f"{iam_registry.url}/api/v1/iam/service-ids", timeout=5)
    assert unauthenticated.status_code == 401
