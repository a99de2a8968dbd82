"""The pull-secret controller, in process, against a real kube-apiserver and a
real Moorage server: what it repairs, how fast, and that once settled it leaves
the API server alone (counted by the API server itself)."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from moorage.client import ManagementClient
from moorage.kube.controller import Controller
from moorage.kube.informer import Informer
from moorage.kube.pullsecrets import KEY_ANNOTATION
from moorage.kube.workflows import ClusterKeys, apply_cluster_pull_secrets
from tests.kube import KubeCluster, api_client, make_namespace, wait_for
from tests.kube_fixtures import admin_client, running_cluster, token_registry
from tests.server import MoorageServer

SELECTOR = "moorage-test=managed"
LABELS = {"moorage-test": "managed"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    yield from running_cluster(tmp_path_factory)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    yield from token_registry(tmp_path_factory, "ctl")


@pytest.fixture(scope="module")
def management(registry: MoorageServer) -> ManagementClient:
    return admin_client(registry)


@pytest.fixture(scope="module")
def core(cluster: KubeCluster) -> Any:
    return client.CoreV1Api(api_client(cluster))


class RecordingKeys(ClusterKeys):
    """The real ClusterKeys, which also notes, at the moment it retires keys, which
    key every copy in the cluster holds (read from the API server)."""

    def __init__(self, management: ManagementClient, cluster: str, core: Any) -> None:
        super().__init__(management, cluster)
        self.core = core
        self.at_retire: list[tuple[str, set[str]]] = []

    def retire(self, keep: str) -> list[str]:
        ending = {
            n.metadata.name
            for n in self.core.list_namespace().items
            if n.metadata.deletion_timestamp is not None
        }
        copies = self.core.list_secret_for_all_namespaces(
            label_selector="app.kubernetes.io/managed-by=moorage"
        ).items
        held = {
            (s.metadata.annotations or {}).get(KEY_ANNOTATION, "")
            for s in copies
            if s.metadata.namespace not in ending
        }
        self.at_retire.append((keep, held))
        return super().retire(keep)


@pytest.fixture(scope="module")
def controller(
    cluster: KubeCluster, management: ManagementClient, core: Any
) -> Iterator[Controller]:
    keys = RecordingKeys(management, "ctl-test", core)
    keys.ensure_service_id()
    worker = Controller(api_client(cluster), management.registry_hosts(), keys, selector=SELECTOR)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    assert wait_for(lambda: worker.settled, 60), "the controller never settled"
    yield worker
    stop.set()
    thread.join(30)
    assert not thread.is_alive(), "the controller did not stop"


def attached(core: Any, namespace: str) -> list[str]:
    account = core.read_namespaced_service_account("default", namespace)
    return [r.name for r in account.image_pull_secrets or []]


def secret(core: Any, namespace: str, name: str) -> Any | None:
    try:
        return core.read_namespaced_secret(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def supplied(core: Any, namespace: str) -> bool:
    copy = secret(core, namespace, f"{namespace}-us-localhost")
    source = secret(core, "default", "default-us-localhost")
    return (
        copy is not None
        and source is not None
        and copy.data == source.data
        and f"{namespace}-us-localhost" in attached(core, namespace)
    )


def test_first_start_writes_the_sources(controller: Controller, core: Any) -> None:
    source = secret(core, "default", "default-us-localhost")
    assert source is not None and source.metadata.annotations[KEY_ANNOTATION]
    assert "default-us-localhost" in attached(core, "default")


def test_namespaces_supplied_by_selector_opt_out_and_prefix(
    controller: Controller, core: Any
) -> None:
    make_namespace(core, "ctl-new", LABELS)
    make_namespace(core, "ctl-off", {**LABELS, "moorage.io/pull-secrets": "disabled"})
    make_namespace(core, "ctl-other", {"moorage-test": "other"})
    make_namespace(core, "kube-ctl", LABELS)
    core.patch_namespaced_service_account(
        "default", "ctl-new", {"imagePullSecrets": [{"name": "someone-elses"}]}
    )
    assert wait_for(lambda: supplied(core, "ctl-new"))
    assert attached(core, "ctl-new")[0] == "someone-elses"
    # A labelled namespace made after those is supplied too, so the others were seen.
    make_namespace(core, "ctl-later", LABELS)
    assert wait_for(lambda: supplied(core, "ctl-later"))
    for untouched in ("ctl-off", "ctl-other", "kube-ctl"):
        assert secret(core, untouched, f"{untouched}-us-localhost") is None
        assert attached(core, untouched) == []


def test_a_namespace_labelled_later_is_supplied(controller: Controller, core: Any) -> None:
    make_namespace(core, "ctl-relabel", {"moorage-test": "other"})
    core.patch_namespace("ctl-relabel", {"metadata": {"labels": LABELS}})
    assert wait_for(lambda: supplied(core, "ctl-relabel"))


def test_deleted_copy_is_restored(controller: Controller, core: Any) -> None:
    make_namespace(core, "ctl-del", LABELS)
    assert wait_for(lambda: supplied(core, "ctl-del"))
    before = secret(core, "ctl-del", "ctl-del-us-localhost")
    core.delete_namespaced_secret("ctl-del-us-localhost", "ctl-del")
    began = time.monotonic()
    restored = wait_for(lambda: secret(core, "ctl-del", "ctl-del-us-localhost"), 10)
    assert restored is not None and restored.metadata.uid != before.metadata.uid
    assert restored.data == before.data
    assert time.monotonic() - began < 5


def test_copy_edited_by_hand_is_repaired(controller: Controller, core: Any) -> None:
    make_namespace(core, "ctl-edit", LABELS)
    assert wait_for(lambda: supplied(core, "ctl-edit"))
    garbage = base64.b64encode(b'{"auths": {}}').decode()
    core.patch_namespaced_secret(
        "ctl-edit-uk-localhost", "ctl-edit", {"data": {".dockerconfigjson": garbage}}
    )
    source = secret(core, "default", "default-uk-localhost")
    assert wait_for(
        lambda: secret(core, "ctl-edit", "ctl-edit-uk-localhost").data == source.data, 10
    )
    # Taking our label off hides it from the controller's watch; it is put back.
    core.patch_namespaced_secret(
        "ctl-edit-de-localhost",
        "ctl-edit",
        {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}},
    )
    assert wait_for(
        lambda: (
            (secret(core, "ctl-edit", "ctl-edit-de-localhost").metadata.labels or {}).get(
                "app.kubernetes.io/managed-by"
            )
            == "moorage"
        ),
        10,
    )


def test_detached_secret_is_attached_again(controller: Controller, core: Any) -> None:
    make_namespace(core, "ctl-detach", LABELS)
    assert wait_for(lambda: supplied(core, "ctl-detach"))
    core.patch_namespaced_service_account(
        "default", "ctl-detach", {"imagePullSecrets": [{"name": "keep-me"}]}
    )
    names = wait_for(lambda: "ctl-detach-us-localhost" in attached(core, "ctl-detach"), 10)
    assert names
    assert attached(core, "ctl-detach")[0] == "keep-me"
    assert len(attached(core, "ctl-detach")) == len(set(attached(core, "ctl-detach")))


def test_changed_source_reaches_every_copy(
    controller: Controller, cluster: KubeCluster, management: ManagementClient, core: Any
) -> None:
    make_namespace(core, "ctl-src", LABELS)
    assert wait_for(lambda: supplied(core, "ctl-src"))
    # The cluster-pull-secret-apply workflow, in process: a new key in the sources.
    applied = apply_cluster_pull_secrets(api_client(cluster), management, "ctl-test")

    def holds_new_key() -> bool:
        copy = secret(core, "ctl-src", "ctl-src-us-localhost")
        return copy is not None and copy.metadata.annotations[KEY_ANNOTATION] == applied.api_key_id

    assert wait_for(holds_new_key, 10)
    assert wait_for(lambda: supplied(core, "ctl-src"))


def test_terminating_namespace_is_left_alone(controller: Controller, core: Any) -> None:
    make_namespace(core, "ctl-ending", LABELS)
    make_namespace(core, "ctl-alive", LABELS)
    assert wait_for(lambda: supplied(core, "ctl-ending") and supplied(core, "ctl-alive"))
    # No namespace controller runs here, so the namespace stays Terminating.
    core.delete_namespace("ctl-ending")
    assert wait_for(lambda: core.read_namespace("ctl-ending").status.phase == "Terminating")
    core.delete_namespaced_secret("ctl-ending-us-localhost", "ctl-ending")
    # Events of one watch arrive in order and the worker takes them in order: once
    # the later deletion is repaired, the earlier one has been decided on.
    core.delete_namespaced_secret("ctl-alive-us-localhost", "ctl-alive")
    assert wait_for(lambda: secret(core, "ctl-alive", "ctl-alive-us-localhost"), 10)
    assert wait_for(lambda: controller.settled)
    assert secret(core, "ctl-ending", "ctl-ending-us-localhost") is None


def test_steady_state_makes_no_api_calls(
    controller: Controller, cluster: KubeCluster, core: Any
) -> None:
    names = [f"ctl-steady-{i:02d}" for i in range(30)]
    for name in names:
        make_namespace(core, name, LABELS)
    assert wait_for(lambda: all(supplied(core, n) for n in names), 60)
    assert wait_for(lambda: controller.settled, 30)
    writes = controller.writes
    before = cluster.calls()
    window = 20.0  # nothing else talks to the API server meanwhile
    time.sleep(window)
    after = cluster.calls()
    assert controller.writes == writes
    # The old one-second loop made about 57 calls a second with six namespaces.
    assert after - before <= 1, f"{after - before} API calls in {window:.0f} s of steady state"
    # Still alive and watching: a deletion is repaired, with a single write.
    core.delete_namespaced_secret(f"{names[0]}-jp-localhost", names[0])
    assert wait_for(lambda: secret(core, names[0], f"{names[0]}-jp-localhost"), 10)
    assert wait_for(lambda: controller.settled)
    assert controller.writes == writes + 1


def test_rotation_retires_only_after_every_copy_holds_the_new_key(
    cluster: KubeCluster, management: ManagementClient, core: Any, controller: Controller
) -> None:
    """A second controller with a short rotation period over the same namespaces."""
    keys = RecordingKeys(management, "ctl-rotate", core)
    keys.ensure_service_id()
    rotating = Controller(
        api_client(cluster), management.registry_hosts(), keys, selector=SELECTOR, rotate_every=3
    )
    # Both copy the same sources, so the first controller follows the rotations too.
    stop = threading.Event()
    thread = threading.Thread(target=rotating.run, args=(stop,), daemon=True)
    try:
        thread.start()
        assert wait_for(lambda: len(keys.at_retire) >= 2, 60), "no two rotations finished"
    finally:
        stop.set()
        thread.join(30)
    for keep, held in keys.at_retire:
        assert held == {keep}, f"retired with copies holding {held}, not only {keep}"
    live = {
        k["id"] for k in management.request("GET", f"/iam/service-ids/{keys.service_id}/api-keys")
    }
    assert keys.at_retire[-1][0] in live and len(live) <= 2


def test_expired_resource_version_is_listed_again(tmp_path: Path) -> None:
    """A real 410: with the watch cache off, watches go to etcd, and compacting
    etcd past the informer's last version makes its next watch expire."""
    cluster = KubeCluster(tmp_path / "cluster", ("--watch-cache=false",)).start()
    try:
        core = client.CoreV1Api(api_client(cluster))
        seen: list[str] = []
        informer = Informer(
            "namespaces",
            core.list_namespace,
            lambda old, new: seen.append(new.metadata.name if new else ""),
            watch_seconds=(1, 2),
        )
        stop = threading.Event()
        thread = threading.Thread(target=informer.run, args=(stop,), daemon=True)
        thread.start()
        try:
            assert informer.synced.wait(30) and informer.lists == 1
            make_namespace(core, "before-compaction")
            assert wait_for(lambda: "before-compaction" in seen)
            revision = 0
            for i in range(5):  # later revisions the namespace watch does not see
                made = core.create_namespaced_config_map(
                    "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"bump-{i}"))
                )
                revision = int(made.metadata.resource_version)
            request = urllib.request.Request(
                f"{cluster.etcd_url}/v3/kv/compaction",
                data=json.dumps({"revision": str(revision), "physical": True}).encode(),
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as reply:
                assert reply.status == 200
            assert wait_for(lambda: informer.lists >= 2, 30), "no relist after the 410"
            make_namespace(core, "after-compaction")
            assert wait_for(lambda: informer.get("", "after-compaction") is not None)
            assert informer.get("", "before-compaction") is not None
        finally:
            stop.set()
            informer.stop()
            thread.join(30)
    finally:
        cluster.stop()
