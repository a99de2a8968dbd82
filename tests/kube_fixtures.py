"""What the Kubernetes tests start once per module: a real control plane with a
default service account, and a real Moorage server with token auth and the
bootstrap administrator key. Fixtures in each module yield from these."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from moorage.client import ManagementClient
from tests.conftest import require_tool
from tests.iam_helpers import ADMIN_KEY
from tests.kube import KubeCluster
from tests.server import MoorageServer, ensure_region_hosts


def running_cluster(factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    for tool in ("kube-apiserver", "etcd", "kubectl"):
        require_tool(tool)
    started = KubeCluster(factory.mktemp("kube") / "cluster").start()
    started.kubectl("-n", "default", "create", "serviceaccount", "default")
    yield started
    started.stop()


def token_registry(factory: pytest.TempPathFactory, name: str) -> Iterator[MoorageServer]:
    ensure_region_hosts()
    tmp = factory.mktemp(name)
    server = MoorageServer(
        tmp / "data", tmp / "server.log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    ).start()
    yield server
    server.stop()


def admin_client(registry: MoorageServer) -> ManagementClient:
    return ManagementClient(f"http://localhost:{registry.port}", ADMIN_KEY)
