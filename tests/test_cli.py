"""The ``moorage`` command: configuration sources, clear errors, garbage collection."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import typer

from tests.helpers import push_blob
from tests.server import MOORAGE, MoorageServer, free_port
from tests.server import test_storage as storage_under_test


def moorage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MOORAGE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_unknown_auth_mode_is_one_clear_error(tmp_path: Path) -> None:
    result = moorage("serve", "--auth", "htpasswd", "--data", str(tmp_path))
    assert result.returncode == 2
    assert "unknown auth mode 'htpasswd'" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_file_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "moorage.toml"
    config.write_text("[server]\nport = 'not a number'\n")
    result = moorage("serve", "--config", str(config))
    assert result.returncode == 2 and "port must be an integer" in result.stderr
    config.write_text("[registry]\nmax_manifest_bytes = 1024\n")
    result = moorage("serve", "--config", str(config))
    assert result.returncode == 2 and "at least 4 MiB" in result.stderr


def test_config_file_environment_and_flags_layer(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "moorage.toml"
    config.write_text(
        f"[server]\nport = {port}\n[storage]\ndata = '{tmp_path / 'from-file'}'\n"
        "[registry]\nmax_manifest_bytes = 5000000\n"
    )
    server = MoorageServer(tmp_path / "from-flag", tmp_path / "log", ("--config", str(config)))
    server.port = port  # the file's port; --port is not given
    server.start()
    try:
        push_blob(server, "cfg/test", b"hello")
        # --data beats the file's data directory (which holds the blobs when
        # they are not in a bucket).
        assert (tmp_path / "from-flag").is_dir()
        if server.storage == "filesystem":
            assert (tmp_path / "from-flag" / "blobs").exists()
        assert not (tmp_path / "from-file").exists()
    finally:
        server.stop()


@pytest.mark.skipif(storage_under_test() == "s3", reason="rewritten with online GC")
def test_gc_deletes_only_unlinked_blobs(registry: MoorageServer) -> None:
    kept = push_blob(registry, "gc/keep", b"kept bytes")
    open_upload = requests.post(f"{registry.url}/v2/gc/keep/blobs/uploads/", timeout=5)
    upload_id = open_upload.headers["Location"].rsplit("/", 1)[1]
    dropped = push_blob(registry, "gc/drop", b"dropped bytes")
    shared = push_blob(registry, "gc/drop", b"shared bytes")
    push_blob(registry, "gc/keep", b"shared bytes")
    for digest in (dropped, shared):
        assert (
            requests.delete(f"{registry.url}/v2/gc/drop/blobs/{digest}", timeout=5).status_code
            == 202
        )
    registry.stop()
    orphan = registry.data_dir / "blobs" / "sha256" / "ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"published just before a crash")

    args = ("--data", str(registry.data_dir), "--grace-seconds", "0")
    # gc opens the installation's database, wherever the server's is.
    dry = moorage("gc", *args, "--dry-run", env=registry.env)
    assert dry.returncode == 0
    assert "would delete 1 unlinked blobs, 1 unrecorded files and 0 stale uploads" in dry.stdout
    assert orphan.exists()

    done = moorage("gc", *args, env=registry.env)
    assert done.returncode == 0, done.stderr
    files = registry.blob_files()
    assert dropped not in files and not orphan.exists()
    assert {kept, shared} <= files
    assert upload_id in registry.upload_files(), "a fresh upload session is not stale"
    stale = moorage("gc", *args, "--upload-max-age", "0", env=registry.env)
    assert "0 unlinked blobs, 0 unrecorded files and 1 stale uploads" in stale.stdout
    assert upload_id not in registry.upload_files()
    registry.start()
    assert (
        requests.get(f"{registry.url}/v2/gc/keep/blobs/{shared}", timeout=5).content
        == b"shared bytes"
    )


def test_help_reads_as_plain_sentences() -> None:
    """Every command's help, as the terminal shows it: no reStructuredText
    literals, and no line broken where the docstring happened to wrap."""
    from moorage.cli.main import app

    def commands(group: typer.Typer) -> Iterator[tuple[str, str]]:
        for command in group.registered_commands:
            yield command.name or "", command.help or ""
        for sub in group.registered_groups:
            if sub.typer_instance is not None:
                yield from commands(sub.typer_instance)

    helps = dict(commands(app))
    assert len(helps) > 50
    for name, text in helps.items():
        assert text, f"{name} has no help"
        assert "``" not in text, name
        for paragraph in text.split("\n\n"):
            assert "\n" not in paragraph, f"{name}: a paragraph broken across lines"
    shown = moorage("ks", "--help", env={"COLUMNS": "200"}).stdout
    assert "``" not in shown and "renamed <namespace>-<domain>, without" in shown
