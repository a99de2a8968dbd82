from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import ROOT, MoorageServer

ARTIFACTS = Path(os.environ.get("MOORAGE_TEST_ARTIFACTS", ROOT / "test-artifacts")).resolve()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[object]:
    started: list[MoorageServer] = []

    def make(data_dir: Path | None = None, *args: str) -> MoorageServer:
        data = data_dir or tmp_path / f"data{len(started)}"
        server = MoorageServer(data, tmp_path / f"server{len(started)}.log", args)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def registry(server_factory) -> MoorageServer:  # type: ignore[no-untyped-def]
    return server_factory()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def shared_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """One server for a module of read-mostly tests (each uses its own repositories)."""
    tmp = tmp_path_factory.mktemp("shared")
    server = MoorageServer(tmp / "data", tmp / "server.log").start()
    yield server
    server.stop()


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make test`, which installs it")
    return path
