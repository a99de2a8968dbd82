"""moorage-credential-provider, run as the kubelet runs it, against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.iam_helpers import ADMIN_KEY, Api, skopeo
from tests.oci_layout import make_image, write_layout
from tests.registry_recorder import Recorder
from tests.server import MOORAGE, MoorageServer, ensure_region_hosts

PROVIDER = MOORAGE.with_name("moorage-credential-provider")


def provide(
    key_file: Path, image: str, serves: list[str], allow: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The provider as the kubelet runs it, serving the ``serves`` registries
    (``--registry``) and allowed to reach ``allow`` (default: those) on loopback."""
    request = {
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": image,
    }
    args = [str(PROVIDER), "--apikey-file", str(key_file), "--scheme", "http"]
    for host in serves:
        args += ["--registry", host]
    for host in serves if allow is None else allow:
        args += ["--allow-private", host]
    return subprocess.run(
        args,
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_kubelet_credentials_from_an_api_key_file(tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed: run `make test`")
    ensure_region_hosts()
    registry = MoorageServer(
        tmp_path / "data",
        tmp_path / "log",
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
    ).start()
    try:
        admin = Api(registry, ADMIN_KEY)
        admin.namespace("us-south", "nodes")
        layout = write_layout(make_image(1, 1024, "provider"), tmp_path / "layout")
        image = f"{registry.host_for('us.localhost')}/nodes/app:v1"
        assert (
            skopeo(
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                f"iamapikey:{ADMIN_KEY}",
                f"oci:{layout}:latest",
                f"docker://{image}",
            ).returncode
            == 0
        )
        key_file = tmp_path / "apikey"
        key_file.write_text(admin.service_key("node-puller", "Reader", region="us-south") + "\n")

        serves = [registry.host_for("us.localhost")]
        result = provide(key_file, image, serves)
        assert result.returncode == 0, result.stderr
        response = json.loads(result.stdout)
        assert response["kind"] == "CredentialProviderResponse"
        assert response["cacheKeyType"] == "Registry"
        hours, rest = response["cacheDuration"].split("h")
        minutes = int(rest.split("m")[0])
        assert int(hours) * 60 + minutes < 60  # shorter than the one-hour credential
        ((host, auth),) = response["auth"].items()
        assert host == registry.host_for("us.localhost")
        assert key_file.read_text().strip() not in result.stdout

        with tempfile.TemporaryDirectory() as out:
            pulled = skopeo(
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                f"{auth['username']}:{auth['password']}",
                f"docker://{image}",
                f"dir:{out}",
            )
        assert pulled.returncode == 0, pulled.stderr

        # Locking the key stops new credentials and the ones already handed out.
        admin.call("POST", "/iam/api-keys/node-puller-key/lock", expect=201)
        refused = provide(key_file, image, serves)
        assert refused.returncode == 1 and "refused" in refused.stderr
        with tempfile.TemporaryDirectory() as out:
            stale = skopeo(
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                f"{auth['username']}:{auth['password']}",
                f"docker://{image}",
                f"dir:{out}",
            )
        assert stale.returncode != 0

        bad = subprocess.run(
            [str(PROVIDER), "--apikey-file", str(key_file)],
            input="not json",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert bad.returncode == 1 and bad.stderr.startswith("moorage-credential-provider:")
    finally:
        registry.stop()


def test_the_key_goes_only_to_the_registries_the_provider_serves(tmp_path: Path) -> None:
    key_file = tmp_path / "apikey"
    key_file.write_text("node-api-key-that-must-stay-home\n")
    recorder = Recorder("basic").start()  # any host the kubelet's "*.localhost:*" matches
    try:
        port = int(recorder.host.rsplit(":", 1)[1])
        image = f"{recorder.host}/team/app:v1"
        for serves, allow, why in (
            # the registry domain on another port: the kubelet matched it, the provider not
            ([f"127.0.0.1:{port + 1}"], [recorder.host], "not a registry this provider serves"),
            (["us.localhost"], [recorder.host], "not a registry this provider serves"),
            # served, but on loopback and not allowed there
            ([recorder.host], [], "loopback"),
            # served and allowed by name only for another port
            ([recorder.host], [f"127.0.0.1:{port + 1}"], "loopback"),
            ([], [recorder.host], "no --registry"),
        ):
            refused = provide(key_file, image, serves, allow)
            assert refused.returncode == 1, (serves, allow)
            assert why in refused.stderr and refused.stdout == "", refused.stderr
            assert refused.stderr.count("\n") == 1  # one line
        assert recorder.seen == [], "the API key was sent to a registry the provider does not serve"
    finally:
        recorder.stop()
