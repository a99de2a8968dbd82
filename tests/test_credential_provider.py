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
from tests.server import MOORAGE, MoorageServer, ensure_region_hosts

PROVIDER = MOORAGE.with_name("moorage-credential-provider")


def provide(key_file: Path, image: str) -> subprocess.CompletedProcess[str]:
    request = {
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": image,
    }
    return subprocess.run(
        [str(PROVIDER), "--apikey-file", str(key_file), "--scheme", "http"],
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

        result = provide(key_file, image)
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
        refused = provide(key_file, image)
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
