"""The test control plane itself: a real kube-apiserver on etcd, with the
ServiceAccount admission plugin copying imagePullSecrets into new pods."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.kube.keyring import Keyring
from tests.conftest import require_tool
from tests.kube import KubeCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    for tool in ("kube-apiserver", "etcd", "kubectl"):
        require_tool(tool)
    started = KubeCluster(tmp_path_factory.mktemp("kube") / "cluster").start()
    yield started
    started.stop()


def test_service_account_pull_secrets_reach_new_pods(cluster: KubeCluster, tmp_path: Path) -> None:
    cluster.namespace("apps")
    cluster.kubectl(
        "-n",
        "apps",
        "create",
        "secret",
        "docker-registry",
        "reg",
        "--docker-server=us.localhost:5000",
        "--docker-username=iamapikey",
        "--docker-password=not-a-real-key",
    )
    cluster.kubectl(
        "-n",
        "apps",
        "patch",
        "serviceaccount",
        "default",
        "-p",
        '{"imagePullSecrets": [{"name": "reg"}]}',
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "apps"},
        "spec": {"containers": [{"name": "c", "image": "us.localhost:5000/team/app:1"}]},
    }
    cluster.kubectl("create", "-f", "-", stdin=json.dumps(pod))
    created = json.loads(cluster.kubectl("-n", "apps", "get", "pod", "p", "-o", "json").stdout)
    assert created["spec"]["imagePullSecrets"] == [{"name": "reg"}]

    secret = json.loads(cluster.kubectl("-n", "apps", "get", "secret", "reg", "-o", "json").stdout)
    ring = Keyring()
    ring.add_secret(secret["type"], secret["data"], "apps/reg")
    (credential,) = ring.lookup("us.localhost:5000/team/app")
    assert (credential.username, credential.password) == ("iamapikey", "not-a-real-key")
    assert base64.b64decode(secret["data"][".dockerconfigjson"])
