"""The data directory is readable by its owner only, and Moorage refuses one
that other users could have tampered with."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import requests

from tests.conftest import require_tool
from tests.iam_helpers import ADMIN_KEY, Api, skopeo
from tests.oci_layout import make_image, write_layout
from tests.server import MOORAGE, MoorageServer, ensure_region_hosts, free_port


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_everything_written_after_a_real_push_is_owner_only(tmp_path: Path) -> None:
    require_tool("skopeo")
    ensure_region_hosts()
    data = tmp_path / "data"
    registry = MoorageServer(
        data, tmp_path / "log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    ).start()
    try:
        Api(registry, ADMIN_KEY).namespace("us-south", "perm")
        layout = write_layout(make_image(2, 4096, "perm"), tmp_path / "layout")
        pushed = skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            f"iamapikey:{ADMIN_KEY}",
            f"oci:{layout}:latest",
            f"docker://{registry.host_for('us.localhost')}/perm/app:v1",
        )
        assert pushed.returncode == 0, pushed.stderr
        # An upload left in progress, so that uploads/ holds a file too.
        token = requests.get(
            f"http://{registry.host_for('us.localhost')}/oauth/token",
            params={"service": "us.localhost", "scope": "repository:perm/open:pull,push"},
            auth=("iamapikey", ADMIN_KEY),
            timeout=10,
        ).json()["token"]
        started = requests.post(
            f"http://{registry.host_for('us.localhost')}/v2/perm/open/blobs/uploads/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert started.status_code == 202
        patched = requests.patch(
            f"http://{registry.host_for('us.localhost')}{started.headers['Location']}",
            data=b"x" * 1000,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert patched.status_code == 202

        # While the server runs: SQLite's WAL and shared memory exist too. (On
        # PostgreSQL the metadata and the secret live elsewhere.)
        expected = [
            "metadata.db",
            "metadata.db-wal",
            "metadata.db-shm",
            "secrets/server.key",
        ]
        if registry.database_url.startswith("sqlite"):
            for name in expected:
                assert (data / name).exists(), name
        # Signing keys are in the database, sealed, for every replica to share.
        assert registry.query("SELECT kid FROM signing_keys"), "no signing key"
        # The bytes are in the data directory (so the modes below cover them),
        # or in the bucket on S3.
        assert len(registry.blob_files()) >= 3
        assert len(registry.upload_files()) == 1
        assert mode(data) == 0o700
        for path in data.rglob("*"):
            wanted = 0o700 if path.is_dir() else 0o600
            assert mode(path) == wanted, f"{path.relative_to(data)} is {mode(path):04o}"
    finally:
        registry.stop()


def test_a_data_directory_others_can_read_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "leftover").write_text("from an older version")
    os.chmod(data / "leftover", 0o644)
    registry = MoorageServer(data, tmp_path / "log").start()
    try:
        assert mode(data) == 0o700
        assert mode(data / "leftover") == 0o600
        assert "was readable by other users (mode 0755): now 0700" in registry.log_text()
    finally:
        registry.stop()


def serve_exit(data: Path, *command: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [str(MOORAGE), *command, "--data", str(data)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"moorage {command[0]} started on {data} instead of refusing it")


def test_a_directory_others_can_write_to_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o777)
    for command in (("serve", "--port", str(free_port())), ("gc",)):
        result = serve_exit(data, *command)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "writable by other users (mode 0777)" in lines[0], lines
    assert sorted(os.listdir(data)) == []  # refused before anything was written
    assert mode(data) == 0o777


def test_a_directory_another_user_owns_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        return  # only root can give a directory away; the tests run as root
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)  # nobody
    result = serve_exit(data, "serve", "--port", str(free_port()))
    assert result.returncode == 2
    assert "belongs to uid 65534, not to uid 0" in result.stderr
    assert os.listdir(data) == []
