"""The ks workflows called in process (no CLI in between) against a real
kube-apiserver and a real Moorage server: their typed results, their typed
errors, and the one table of workload kinds."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from moorage.client import ManagementClient
from moorage.kube import migrate
from moorage.kube.diagnose import diagnose_objects
from moorage.kube.errors import KubeApiError, PreconditionFailed
from moorage.kube.pullsecrets import KEY_ANNOTATION, dockerconfigjson
from moorage.kube.registry_check import CredentialChecker, RegistryCheck
from moorage.kube.workflows import (
    apply_cluster_pull_secrets,
    attach_pull_secrets,
    copy_pull_secrets,
    create_registry_pull_secret,
    create_service_id_pull_secrets,
)
from moorage.kube.workloads import KINDS, kind_named
from tests.kube import KubeCluster, api_client, make_namespace
from tests.kube_fixtures import admin_client, running_cluster, token_registry
from tests.server import MoorageServer

DOMAINS = ["us", "uk", "de", "au", "jp"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    yield from running_cluster(tmp_path_factory)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    yield from token_registry(tmp_path_factory, "wf")


@pytest.fixture(scope="module")
def management(registry: MoorageServer) -> ManagementClient:
    return admin_client(registry)


@pytest.fixture(scope="module")
def api(cluster: KubeCluster) -> Any:
    return api_client(cluster)


@pytest.fixture(scope="module")
def core(api: Any) -> Any:
    return client.CoreV1Api(api)


def attached(core: Any, namespace: str) -> list[str]:
    return [
        r.name
        for r in core.read_namespaced_service_account("default", namespace).image_pull_secrets or []
    ]


def key_ids(management: ManagementClient, service_id: str) -> set[str]:
    return {k["id"] for k in management.request("GET", f"/iam/service-ids/{service_id}/api-keys")}


def token_secret(core: Any, namespace: str, host: str) -> None:
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="old-token"),
            type="kubernetes.io/dockerconfigjson",
            data=dict(dockerconfigjson([host], "token", "a-registry-token")),
        ),
    )


def test_migration_needs_the_cluster_secrets_first(
    api: Any, core: Any, management: ManagementClient, registry: MoorageServer
) -> None:
    make_namespace(core, "early")
    token_secret(core, "early", registry.host_for("registry.ng.localhost"))
    planned = migrate.plan(api, management)
    assert [(s.namespace, s.secret) for s in planned.token_secrets] == [("early", "old-token")]
    with pytest.raises(PreconditionFailed, match="cluster-pull-secret-apply first"):
        migrate.apply(api, planned)
    core.delete_namespaced_secret("old-token", "early")


def test_apply_then_rotate(api: Any, core: Any, management: ManagementClient) -> None:
    first = apply_cluster_pull_secrets(api, management, "wf")
    expected = {f"default-{d}-localhost" for d in DOMAINS} | {"default-localhost"}
    assert set(first.secrets) == expected
    assert set(attached(core, "default")) == expected
    assert first.api_key_id in key_ids(management, first.service_id)

    second = apply_cluster_pull_secrets(api, management, "wf", combined=True)
    assert second.retired_api_keys == [first.api_key_id]
    assert key_ids(management, second.service_id) == {second.api_key_id}
    assert "all-localhost" in second.secrets
    assert len(attached(core, "default")) == len(set(attached(core, "default"))) == 7
    for name in second.secrets:
        secret = core.read_namespaced_secret(name, "default")
        assert secret.metadata.annotations[KEY_ANNOTATION] == second.api_key_id


def test_copy_by_selector_and_attach_merges(
    api: Any, core: Any, management: ManagementClient
) -> None:
    apply_cluster_pull_secrets(api, management, "wf")
    make_namespace(core, "web-a", {"tier": "web"})
    make_namespace(core, "db-a", {"tier": "db"})
    attach_pull_secrets(api, "web-a", ["mine"])
    copied = copy_pull_secrets(api, selector="tier=web", attach=True)
    assert [c.namespace for c in copied] == ["web-a"]
    assert "web-a-us-localhost" in copied[0].secrets
    assert attached(core, "web-a")[0] == "mine"
    assert attach_pull_secrets(api, "web-a", ["mine", "web-a-us-localhost"]) == attached(
        core, "web-a"
    )
    assert core.list_namespaced_secret("db-a").items == []
    with pytest.raises(KubeApiError) as missing:
        attach_pull_secrets(api, "no-such-namespace", ["x"])
    assert missing.value.status == 404


def test_create_scoped_and_external_secrets(
    api: Any, core: Any, management: ManagementClient
) -> None:
    make_namespace(core, "team")
    made = create_service_id_pull_secrets(
        api, management, "wf", "team", region="us-south", resource="team-ns", attach=True
    )
    assert made.service_id == "wf-team-id" and made.secrets == ["team-us-localhost"]
    policies = management.request("GET", "/iam/service-ids/wf-team-id/policies")
    assert [(p["region"], p["resource"]) for p in policies] == [("us-south", "team-ns")]
    assert attached(core, "team") == ["team-us-localhost"]
    external = create_registry_pull_secret(
        api, "team", "ext", "registry.example.test:5000", "robot", "pw"
    )
    secret = core.read_namespaced_secret("ext", "team")
    document = json.loads(base64.b64decode(secret.data[".dockerconfigjson"]))
    assert external.secrets == ["ext"] and list(document["auths"]) == ["registry.example.test:5000"]


def pod_template(image: str) -> Any:
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels={"app": "w"}),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="c", image=image)], restart_policy="OnFailure"
        ),
    )


def make_every_kind(api: Any, namespace: str, image: str) -> None:
    """One object of each kind that makes pods (no controller-manager runs, so
    none makes any)."""
    apps, batch, core = client.AppsV1Api(api), client.BatchV1Api(api), client.CoreV1Api(api)
    meta = client.V1ObjectMeta(name="w")
    selector = client.V1LabelSelector(match_labels={"app": "w"})
    template = pod_template(image)
    always = pod_template(image)
    always.spec.restart_policy = "Always"
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(metadata=meta, spec=client.V1PodSpec(containers=template.spec.containers)),
    )
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=meta, spec=client.V1DeploymentSpec(selector=selector, template=always)
        ),
    )
    apps.create_namespaced_replica_set(
        namespace,
        client.V1ReplicaSet(
            metadata=meta, spec=client.V1ReplicaSetSpec(selector=selector, template=always)
        ),
    )
    apps.create_namespaced_stateful_set(
        namespace,
        client.V1StatefulSet(
            metadata=meta,
            spec=client.V1StatefulSetSpec(selector=selector, template=always, service_name="w"),
        ),
    )
    apps.create_namespaced_daemon_set(
        namespace,
        client.V1DaemonSet(
            metadata=meta, spec=client.V1DaemonSetSpec(selector=selector, template=always)
        ),
    )
    batch.create_namespaced_job(
        namespace, client.V1Job(metadata=meta, spec=client.V1JobSpec(template=template))
    )
    batch.create_namespaced_cron_job(
        namespace,
        client.V1CronJob(
            metadata=meta,
            spec=client.V1CronJobSpec(
                schedule="0 0 * * *",
                job_template=client.V1JobTemplateSpec(spec=client.V1JobSpec(template=template)),
            ),
        ),
    )
    core.create_namespaced_replication_controller(
        namespace,
        client.V1ReplicationController(
            metadata=meta,
            spec=client.V1ReplicationControllerSpec(selector={"app": "w"}, template=always),
        ),
    )


def test_one_table_reads_lists_and_diagnoses_every_kind(
    api: Any, core: Any, management: ManagementClient, registry: MoorageServer
) -> None:
    make_namespace(core, "kinds")
    image = f"{registry.host_for('us.localhost')}/kinds/app:1"
    make_every_kind(api, "kinds", image)
    assert {k.kind for k in KINDS} == {
        "Pod",
        "Deployment",
        "ReplicaSet",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "CronJob",
        "ReplicationController",
    }
    for kind in KINDS:
        obj = kind.read(api, "kinds", "w")
        assert [c.image for c in kind.containers(obj)] == [image], kind.kind
        assert [o.metadata.name for o in kind.list(api, "kinds")] == ["w"]
        assert kind.pod_spec(api.sanitize_for_serialization(obj))["containers"][0]["image"] == image
    checker = CredentialChecker(management, RegistryCheck())
    found = diagnose_objects(api, "kinds", checker, [(k, "w") for k in KINDS])
    assert [d.object for d in found] == [f"{k.name}/w" for k in KINDS]
    assert all("no image pull secrets" in d.finding.cause for d in found)


def test_migration_plan_then_apply(
    api: Any, core: Any, management: ManagementClient, registry: MoorageServer
) -> None:
    apply_cluster_pull_secrets(api, management, "wf")
    legacy_host = registry.host_for("registry.ng.localhost")
    new_host = registry.host_for("us.localhost")
    make_namespace(core, "legacy")
    token_secret(core, "legacy", legacy_host)
    core.patch_namespaced_service_account(
        "default", "legacy", {"imagePullSecrets": [{"name": "old-token"}]}
    )
    make_every_kind(api, "legacy", f"{legacy_host}/team/app:1")
    planned = migrate.plan(api, management)
    assert planned.moves[legacy_host] == new_host
    kinds = sorted(i.kind for i in planned.legacy_images if i.namespace == "legacy")
    assert kinds == sorted(k.kind for k in KINDS)  # none is owned here, so all are listed
    assert all(i.new_image == f"{new_host}/team/app:1" for i in planned.legacy_images)

    # A Job's pod template cannot change: while it exists, the token secret stays.
    done = migrate.apply(api, planned, rewrite_images=True)
    assert "legacy-us-localhost" in done.created_secrets
    assert "Job/legacy/w/c" not in done.rewritten_images
    assert "Deployment/legacy/w/c" in done.rewritten_images
    assert done.removed_secrets == []
    assert (
        kind_named("CronJob")
        .read(api, "legacy", "w")
        .spec.job_template.spec.template.spec.containers[0]
        .image.startswith(new_host)
    )

    # Background: no orphan finalizer, which only a garbage collector would remove.
    client.BatchV1Api(api).delete_namespaced_job("w", "legacy", propagation_policy="Background")
    replanned = migrate.plan(api, management)
    assert [i.kind for i in replanned.legacy_images if i.namespace == "legacy"] == []
    finished = migrate.apply(api, replanned)
    assert finished.removed_secrets == ["legacy/old-token"]
    assert "old-token" not in attached(core, "legacy")
    assert "legacy-us-localhost" in attached(core, "legacy")
