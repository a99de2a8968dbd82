"""Files holding secrets (the login profile's API key, auth files, TLS keys, the
server key) cannot be captured by someone who can write to their directory:
a planted ``.tmp`` file or symbolic link receives nothing, the file is the
owner's alone whatever was there before, and a target that is a symbolic link
is refused. The CLI is run as a user runs it, against a real server."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.iam.secrets import load_or_create_key
from moorage.pki import issue
from moorage.privatefile import UnsafeTarget, write_private
from tests.iam_helpers import ADMIN_KEY
from tests.server import MOORAGE, MoorageServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    tmp = tmp_path_factory.mktemp("private-files")
    registry = MoorageServer(
        tmp / "data", tmp / "server.log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    ).start()
    yield registry
    registry.stop()


def login(server: MoorageServer, config: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    url = f"http://localhost:{server.port}"
    return subprocess.run(
        [str(MOORAGE), "login", "--server", url, "--apikey", ADMIN_KEY],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "MOORAGE_CONFIG_DIR": str(config)},
    )


def shared_directory(tmp_path: Path) -> Path:
    """A directory anyone may write to, as /tmp or a shared home is."""
    config = tmp_path / "shared"
    config.mkdir()
    config.chmod(0o1777)
    return config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_planted_temporary_symlink_does_not_receive_the_api_key(
    server: MoorageServer, tmp_path: Path
) -> None:
    config = shared_directory(tmp_path)
    stolen = tmp_path / "stolen"
    stolen.write_text("")
    stolen.chmod(0o666)
    (config / "profile.tmp").symlink_to(stolen)
    done = login(server, config)
    assert done.returncode == 0, done.stderr
    assert ADMIN_KEY not in stolen.read_text()
    profile = config / "profile.json"
    assert json.loads(profile.read_text())["apikey"] == ADMIN_KEY
    assert mode(profile) == 0o600 and not profile.is_symlink()


def test_a_planted_readable_file_does_not_become_the_profile(
    server: MoorageServer, tmp_path: Path
) -> None:
    config = shared_directory(tmp_path)
    planted = config / "profile.tmp"
    planted.write_text("")
    planted.chmod(0o666)  # whoever planted it can read whatever lands in it
    planted_inode = planted.stat().st_ino
    (config / "profile.json").write_text("{}")
    (config / "profile.json").chmod(0o644)  # an older profile, readable by all
    done = login(server, config)
    assert done.returncode == 0, done.stderr
    profile = config / "profile.json"
    assert ADMIN_KEY in profile.read_text()
    assert profile.stat().st_ino != planted_inode
    assert mode(profile) == 0o600
    assert ADMIN_KEY not in planted.read_text()


def test_a_profile_that_is_a_symlink_is_refused_in_one_line(
    server: MoorageServer, tmp_path: Path
) -> None:
    config = shared_directory(tmp_path)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    (config / "profile.json").symlink_to(elsewhere)
    refused = login(server, config)
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "symbolic link" in lines[0], refused.stderr
    assert elsewhere.read_text() == "{}"


def test_a_symlinked_tls_key_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    directory.mkdir()
    target = tmp_path / "target"
    target.write_text("not a key")
    (directory / "server.key").symlink_to(target)
    with pytest.raises(UnsafeTarget):
        issue(directory, ["registry.example.com"])
    assert target.read_text() == "not a key"
    assert (directory / "server.key").is_symlink()


def test_keys_have_their_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        files = issue(tmp_path / "tls", ["registry.example.com"])
    finally:
        os.umask(old)
    assert mode(files.key) == 0o600 and mode(files.ca_key) == 0o600
    assert mode(files.cert) == 0o644
    write_private(tmp_path / "x", b"secret")
    assert mode(tmp_path / "x") == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_the_server_key_is_not_written_through_a_planted_symlink(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    stolen = tmp_path / "stolen"
    stolen.write_bytes(b"")
    (secrets_dir / "server.tmp").symlink_to(stolen)  # where the key used to be staged
    key = load_or_create_key(secrets_dir / "server.key")
    assert len(key) == 32 and stolen.read_bytes() == b""
    assert mode(secrets_dir / "server.key") == 0o600
    assert load_or_create_key(secrets_dir / "server.key") == key  # made once
