"""The README's quick start, run as a newcomer would: its commands verbatim,
against a real server, with real skopeo and podman. Only the port (a free one,
not 5000) and the administrator key that `make run` prints are filled in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.iam_helpers import ADMIN_KEY
from tests.server import REGION_HOSTS, MoorageServer, ensure_region_hosts

ROOT = Path(__file__).resolve().parent.parent


def quick_start_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def commands(block: str) -> list[str]:
    """The commands of a block, comments and continuation lines folded."""
    joined = block.replace("\\\n", " ")
    return [line.split("#", 1)[0].strip() for line in joined.splitlines() if line.strip()]


def test_the_quick_start_sets_up_with_exactly_make_run_and_make_test() -> None:
    assert commands(quick_start_blocks()[0]) == ["make run", "make test"]


def test_the_hosts_line_in_the_readme_names_every_default_domain() -> None:
    hosts_block = next(b for b in quick_start_blocks() if "/etc/hosts" in b)
    assert f"'127.0.0.1 {REGION_HOSTS}'" in hosts_block
    script = (ROOT / "scripts" / "check-hosts.py").read_text()
    assert all(f'"{name}"' in script for name in REGION_HOSTS.split())


def test_the_quick_start_pushes_and_pulls_verbatim(tmp_path: Path) -> None:
    ensure_region_hosts()
    server = MoorageServer(
        tmp_path / "data",
        tmp_path / "server.log",
        auth="token",  # as `make run` serves
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
    ).start()
    try:
        block = next(b for b in quick_start_blocks() if b.startswith("KEY="))
        script = re.sub(r"^KEY=\.\.\..*$", f"KEY={ADMIN_KEY}", block, count=1, flags=re.M)
        script = script.replace(":5000", f":{server.port}")
        # The relative paths the README uses, from a scratch directory.
        work = tmp_path / "clone"
        work.mkdir()
        (work / "scripts").symlink_to(ROOT / "scripts")
        (work / ".venv").symlink_to(Path(sys.prefix))
        storage = tmp_path / "storage.conf"
        storage.write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path / "graph"}"\n'
            f'runroot = "{tmp_path / "run"}"\n'
        )
        env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(storage), "HOME": str(tmp_path)}
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        assert "Writing manifest to image destination" in done.stderr + done.stdout
        assert "myteam/app" in done.stdout, done.stdout
        pulled = subprocess.run(
            ["podman", "image", "exists", f"us.localhost:{server.port}/myteam/app:1.0"],
            env=env,
            capture_output=True,
        )
        assert pulled.returncode == 0, "podman did not keep the pulled image"
    finally:
        server.stop()


def test_make_run_warns_with_the_hosts_line_when_a_name_does_not_resolve() -> None:
    """check-hosts.py against a resolver that knows none of the names: it
    prints the line to add and still lets the server start (exit 0)."""
    code = (
        "import runpy, socket\n"
        "def fail(*a, **k): raise socket.gaierror('no such host')\n"
        "socket.getaddrinfo = fail\n"
        f"runpy.run_path({str(ROOT / 'scripts' / 'check-hosts.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0
    assert "us.localhost" in done.stderr
    assert f"127.0.0.1 {REGION_HOSTS}" in done.stderr
