"""Three replicas over one PostgreSQL database, behind HAProxy: what one
replica does, the others see; a replica killed mid-push costs the client a
retry, not the image; tokens, rotations and the sign-in throttle are the
installation's, not a replica's."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests

from tests.conftest import ARTIFACTS, require_tool
from tests.helpers import wait_for
from tests.iam_helpers import ADMIN_KEY, Api, push_image_with
from tests.oci_layout import OCI_MANIFEST, Image, make_image, sha256, write_layout
from tests.replicas import Replicas
from tests.server import MOORAGE, MoorageServer, ensure_region_hosts, free_port
from tests.test_conformance import run_suite

US = "us.localhost"


def token(server: MoorageServer | object, key: str, scope: str) -> str:
    host = server.host_for(US)  # type: ignore[attr-defined]
    r = requests.get(
        f"http://{host}/oauth/token",
        params={"service": US, "scope": scope},
        auth=("iamapikey", key),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    ensure_region_hosts()
    started = Replicas(
        tmp_path_factory.mktemp("replicas"),
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
        # Every client reaches the replicas through HAProxy's one address.
        extra_args=("--config", str(_config(tmp_path_factory))),
    ).start()
    Api(started.servers[0], ADMIN_KEY).namespace("us-south", "shared")
    yield started
    started.stop()


def _config(factory: pytest.TempPathFactory) -> Path:
    path = factory.mktemp("config") / "moorage.toml"
    path.write_text("[server]\nmax_connections_per_client = 0\n")
    return path


def test_conformance_suite_passes_through_haproxy(replicas: Replicas) -> None:
    """Every request of the suite goes to the next replica in turn: an upload
    started on one is continued and finished on others."""
    admin = Api(replicas.servers[0], ADMIN_KEY)
    admin.namespace("us-south", "conformance")
    key = admin.service_key(
        "conformance",
        "Manager",
        region="us-south",
        resource_type="namespace",
        resource="conformance",
    )
    run_suite(
        f"http://{replicas.proxy.host_for(US)}",
        ARTIFACTS / "conformance-replicas",
        OCI_USERNAME="iamapikey",
        OCI_PASSWORD=key,
    )
    # Round robin really spread the suite over all three.
    for server in replicas.servers:
        assert any(e.get("repository") for e in server.access_log()), server.log_path


def test_an_image_pushed_through_one_replica_is_pulled_through_another_at_once(
    replicas: Replicas,
) -> None:
    first, second, third = replicas.servers
    scope = "repository:shared/app:pull,push,delete"
    image = make_image(2, 2048, "at-once")
    bearer = {"Authorization": f"Bearer {token(first, ADMIN_KEY, scope)}"}
    _push(first, "shared/app", "v1", image, bearer)
    for other in (second, third):
        headers = {
            "Authorization": f"Bearer {token(other, ADMIN_KEY, scope)}",
            "Accept": OCI_MANIFEST,
        }
        got = requests.get(
            f"http://{other.host_for(US)}/v2/shared/app/manifests/v1", headers=headers, timeout=30
        )
        assert got.status_code == 200, got.text
        assert got.content == image.manifest
        blob = requests.get(
            f"http://{other.host_for(US)}/v2/shared/app/blobs/{sha256(image.layers[0])}",
            headers=headers,
            timeout=30,
        )
        assert blob.status_code == 200 and blob.content == image.layers[0]

    # The tag moves on the first replica; the others had the old manifest in their
    # caches (they just served it) and drop it when the change reaches them.
    moved = make_image(1, 1024, "moved")
    _push(first, "shared/app", "v1", moved, bearer)
    for other in (second, third):
        headers = {
            "Authorization": f"Bearer {token(other, ADMIN_KEY, scope)}",
            "Accept": OCI_MANIFEST,
        }

        def fresh(server: MoorageServer = other, h: dict[str, str] = headers) -> bool:
            return (
                requests.get(
                    f"http://{server.host_for(US)}/v2/shared/app/manifests/v1",
                    headers=h,
                    timeout=30,
                ).content
                == moved.manifest
            )

        started = time.monotonic()
        wait_for(fresh, 5, "the moved tag on another replica")
        assert time.monotonic() - started < 1.0
    # Deleted on one, gone on all.
    deleted = requests.delete(
        f"http://{first.host_for(US)}/v2/shared/app/manifests/{moved.manifest_digest}",
        headers=bearer,
        timeout=30,
    )
    assert deleted.status_code == 202
    for other in (second, third):
        headers = {
            "Authorization": f"Bearer {token(other, ADMIN_KEY, scope)}",
            "Accept": OCI_MANIFEST,
        }
        wait_for(
            lambda s=other, h=headers: (
                requests.get(
                    f"http://{s.host_for(US)}/v2/shared/app/manifests/v1", headers=h, timeout=30
                ).status_code
                == 404
            ),
            5,
            "the deleted manifest gone",
        )


def _push(
    server: MoorageServer, repo: str, tag: str, image: Image, headers: dict[str, str]
) -> None:
    r = push_image_with(server, US, repo, tag, image, headers)
    assert r.status_code == 201, r.text


def test_a_token_signed_by_one_replica_is_accepted_by_all(replicas: Replicas) -> None:
    kids = set()
    for issuer in replicas.servers:
        signed = token(issuer, ADMIN_KEY, "repository:shared/tokens:pull,push")
        kids.add(jwt.get_unverified_header(signed)["kid"])
        for verifier in replicas.servers:
            r = requests.get(
                f"http://{verifier.host_for(US)}/v2/shared/tokens/tags/list",
                headers={"Authorization": f"Bearer {signed}"},
                timeout=30,
            )
            # 404: the repository does not exist, which only a valid token learns.
            assert r.status_code == 404, (issuer.port, verifier.port, r.text)
    assert len(kids) == 1  # one installation, one current key
    jwks = [
        requests.get(f"http://{s.host_for(US)}/oauth/jwks.json", timeout=30).json()
        for s in replicas.servers
    ]
    assert all(j == jwks[0] for j in jwks)


def thirty_guesses(group: Replicas, email: str) -> Counter[int]:
    """A user with a password, then thirty wrong guesses at it sent at once,
    spread over the replicas: the answers counted by status."""
    Api(group.servers[0], ADMIN_KEY).call(
        "POST", "/iam/users", {"email": email, "password": "right-password-1"}, 201
    )

    def guess(i: int) -> int:
        server = group.servers[i % len(group.servers)]
        return requests.get(
            f"http://{server.host_for(US)}/oauth/token",
            params={"service": US},
            auth=(email, f"guess-{i}"),
            timeout=60,
        ).status_code

    with ThreadPoolExecutor(30) as pool:
        return Counter(pool.map(guess, range(30)))


def test_sign_in_throttling_holds_across_replicas(replicas: Replicas) -> None:
    """Thirty guesses at one password, sent at once and spread over the three
    replicas: ten are checked, twenty throttled, as on a single server."""
    assert thirty_guesses(replicas, "target@a.test") == {401: 10, 429: 20}
    for server in replicas.servers:  # even the right password waits, everywhere
        r = requests.get(
            f"http://{server.host_for(US)}/oauth/token",
            params={"service": US},
            auth=("target@a.test", "right-password-1"),
            timeout=60,
        )
        assert r.status_code == 429


def test_a_push_completes_when_a_replica_is_killed_during_it(
    replicas: Replicas, tmp_path: Path
) -> None:
    """skopeo pushes an 80 MiB image through HAProxy; one replica is killed with
    SIGKILL as soon as the push has begun. The push completes (skopeo retries
    what failed), and every replica left serves the image."""
    require_tool("skopeo")
    victim = replicas.servers[2]
    image = make_image(10, 8 << 20, "killed")
    layout = write_layout(image, tmp_path / "layout")
    admin_auth = tmp_path / "auth.json"
    creds = f"iamapikey:{ADMIN_KEY}".encode()
    admin_auth.write_text(
        json.dumps(
            {"auths": {replicas.proxy.host_for(US): {"auth": base64.b64encode(creds).decode()}}}
        )
    )
    push = subprocess.Popen(
        [
            "skopeo",
            "copy",
            "--retry-times",
            "5",
            "--dest-tls-verify=false",
            "--authfile",
            str(admin_auth),
            f"oci:{layout}:latest",
            f"docker://{replicas.proxy.host_for(US)}/shared/survivor:v1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Kill the victim once it is taking part in the push.
    wait_for(
        lambda: any(
            e.get("repository") == "shared/survivor" and e.get("method") in ("PATCH", "PUT", "POST")
            for e in victim.access_log()
        ),
        60,
        "the victim to take part in the push",
    )
    assert push.poll() is None, "the push ended before the replica could be killed"
    victim.kill9()
    out, _ = push.communicate(timeout=300)
    assert push.returncode == 0, out
    replicas.proxy.wait_up(2)
    survivors = replicas.servers[:2]
    pulled = tmp_path / "pulled"
    for server in survivors:
        subprocess.run(["rm", "-rf", str(pulled)], check=True)
        result = subprocess.run(
            [
                "skopeo",
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                f"iamapikey:{ADMIN_KEY}",
                f"docker://{server.host_for(US)}/shared/survivor:v1",
                f"dir:{pulled}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        for layer in image.layers:
            assert (pulled / sha256(layer).split(":", 1)[1]).read_bytes() == layer
    # The victim comes back and serves it too.
    victim.start()
    replicas.proxy.wait_up(3)
    pull = token(victim, ADMIN_KEY, "repository:shared/survivor:pull")
    r = requests.get(
        f"http://{victim.host_for(US)}/v2/shared/survivor/manifests/v1",
        headers={"Authorization": f"Bearer {pull}", "Accept": "*/*"},
        timeout=30,
    )
    assert r.status_code == 200


def test_key_rotation_is_coordinated(tmp_path: Path) -> None:
    """With a 2-second rotation period, three replicas issuing tokens as fast
    as they can make one key per rotation between them, not one each, and
    every replica verifies every key."""
    ensure_region_hosts()
    config = tmp_path / "moorage.toml"
    config.write_text("[auth]\nkey_rotation = 2\n")
    group = Replicas(
        tmp_path / "rotation",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
        extra_args=("--config", str(config)),
    ).start()
    try:
        Api(group.servers[0], ADMIN_KEY).namespace("us-south", "rotate")
        # Each replica makes a key as it starts if the newest is due, and they
        # start one after another: on a busy machine that takes more than one
        # period, so more than one key may be made before the first token.
        before = {k for (k,) in group.servers[0].query("SELECT kid FROM signing_keys")}
        stop = threading.Event()
        issued: list[str] = []

        def issue(server: MoorageServer) -> None:
            while not stop.is_set():
                issued.append(token(server, ADMIN_KEY, "repository:rotate/app:pull"))

        threads = [threading.Thread(target=issue, args=(s,)) for s in group.servers]
        for t in threads:
            t.start()
        try:
            wait_for(
                lambda: len({jwt.get_unverified_header(t)["kid"] for t in list(issued)}) >= 4,
                60,
                "three rotations",
            )
        finally:
            stop.set()
            for t in threads:
                t.join()
        kids = {jwt.get_unverified_header(t)["kid"] for t in issued}
        stored = group.servers[0].query(
            "SELECT kid, created_at FROM signing_keys ORDER BY created_at"
        )
        # Every key made while tokens were issued signed tokens (the one made
        # by the rotation a token asked for), and no two were made within one
        # period.
        made = {k for k, _ in stored} - before
        assert kids <= {k for k, _ in stored} and made <= kids, (stored, before, kids)
        times = [c for _, c in stored]
        assert all((b - a).total_seconds() >= 2 for a, b in itertools.pairwise(times))
        # Tokens of every key pass on every replica.
        by_kid = {jwt.get_unverified_header(t)["kid"]: t for t in issued}
        for signed in by_kid.values():
            for server in group.servers:
                r = requests.get(
                    f"http://{server.host_for(US)}/v2/",
                    headers={"Authorization": f"Bearer {signed}"},
                    timeout=30,
                )
                assert r.status_code == 200, r.text
    finally:
        group.stop()


def test_a_replica_without_the_installations_secret_is_refused(tmp_path: Path) -> None:
    """On a shared database a replica must be given the server secret, and the
    same one as the others: otherwise it would not open API keys, registry
    tokens or signing keys, so it does not start."""
    group = Replicas(tmp_path / "secret", count=1, auth="none")
    group.servers[0].start()
    group.servers[0].stop()
    data = group.data
    base = {**group.env, "MOORAGE_SECRET_FILE": ""}
    for env, expected in (
        ({**base}, "needs the installation's server secret"),
        ({**base, "MOORAGE_SECRET": "c2hvcnQ="}, "must be 32 bytes"),
        (
            {**base, "MOORAGE_SECRET": base64.b64encode(b"x" * 32).decode()},
            "set up with another server secret",
        ),
    ):
        result = subprocess.run(
            [str(MOORAGE), "serve", "--auth", "none", "--port", "0", "--data", str(data)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr, result.stderr


def test_sign_in_throttling_through_redis(tmp_path: Path) -> None:
    """With [auth] redis_url, the count lives in Redis (a real redis-server):
    the same ten answers out of thirty parallel guesses across replicas."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.fail("redis-server is not installed: run `make test-deps`")
    port = free_port()
    redis = subprocess.Popen(
        [
            redis_server,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _redis_ping(port), 30, "redis to answer")
        group = Replicas(
            tmp_path / "redis",
            env={
                "MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY,
                "MOORAGE_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            },
        ).start()
        try:
            assert thirty_guesses(group, "r@a.test") == {401: 10, 429: 20}
            # Counted in Redis, not in the database.
            assert not group.servers[0].query("SELECT * FROM signin_failures")
        finally:
            group.stop()
    finally:
        os.killpg(redis.pid, signal.SIGTERM)
        redis.wait(10)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False
