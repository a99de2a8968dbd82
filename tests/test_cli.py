"""The ``moorage`` command: configuration sources, clear errors, garbage collection."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import typer

from tests.helpers import push_blob
from tests.server import MOORAGE, MoorageServer, free_port


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
