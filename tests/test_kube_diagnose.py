"""ks diagnose sends a credential only where it belongs: proved with recording
registries on loopback (attacker stand-ins, tests/registry_recorder.py), a real
kube-apiserver and a real Moorage server whose access log shows what it was
asked."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from moorage.client import ManagementClient
from moorage.kube.diagnose import diagnose_objects
from moorage.kube.pullsecrets import dockerconfigjson
from moorage.kube.registry_check import CredentialChecker, RegistryCheck
from moorage.kube.workflows import apply_cluster_pull_secrets, copy_pull_secrets
from moorage.kube.workloads import BY_KIND
from tests.helpers import wait_for
from tests.iam_helpers import ADMIN_KEY
from tests.kube import KubeCluster, api_client, make_namespace
from tests.kube_fixtures import admin_client, running_cluster, token_registry
from tests.registry_recorder import TOKEN, Recorder, self_signed
from tests.server import MoorageServer
from tests.test_cli_iam_cr import cli

ROBOT = ("robot", "robot-password")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    yield from running_cluster(tmp_path_factory)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    yield from token_registry(tmp_path_factory, "diag")


@pytest.fixture(scope="module")
def management(registry: MoorageServer) -> ManagementClient:
    return admin_client(registry)


@pytest.fixture(scope="module")
def api(cluster: KubeCluster, management: ManagementClient) -> Any:
    api = api_client(cluster)
    apply_cluster_pull_secrets(api, management, "diag")
    return api


@pytest.fixture(scope="module")
def moorage_key(api: Any) -> str:
    """The Moorage API key in the cluster's pull secrets: it must reach no one else."""
    source = client.CoreV1Api(api).read_namespaced_secret("default-us-localhost", "default")
    document = json.loads(base64.b64decode(source.data[".dockerconfigjson"]))
    return str(next(iter(document["auths"].values()))["password"])


def pod_with(api: Any, namespace: str, name: str, image: str, secrets: list[str]) -> None:
    client.CoreV1Api(api).create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="app", image=image)],
                image_pull_secrets=[client.V1LocalObjectReference(name=s) for s in secrets],
            ),
        ),
    )


def external_secret(api: Any, namespace: str, name: str, host: str, user: str, pw: str) -> None:
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            type="kubernetes.io/dockerconfigjson",
            data=dict(dockerconfigjson([host], user, pw)),
        ),
    )


def check_pod(
    api: Any, management: ManagementClient, namespace: str, pod: str, **registries: Any
) -> Any:
    checker = CredentialChecker(management, RegistryCheck(**registries))
    (found,) = diagnose_objects(api, namespace, checker, [(BY_KIND["Pod"], pod)])
    return found.finding


def requests_to_moorage(registry: MoorageServer) -> list[tuple[str, str]]:
    return [(str(e["method"]), str(e["path"])) for e in registry.access_log()]


def leaked(recorder: Recorder, secret: str) -> list[str]:
    """Authorization headers that carried ``secret`` (Basic-encoded or plain)."""
    found = []
    for seen in recorder.seen:
        header = seen.authorization or ""
        decoded = ""
        if header.startswith("Basic "):
            decoded = base64.b64decode(header[6:]).decode(errors="replace")
        if secret in header or secret in decoded:
            found.append(f"{seen.method} {seen.path}")
    return found


def test_plain_http_only_for_registries_registered_insecure(
    api: Any, management: ManagementClient, registry: MoorageServer, moorage_key: str
) -> None:
    recorder = Recorder("basic").start()
    try:
        make_namespace(client.CoreV1Api(api), "vendor")
        copy_pull_secrets(api, to="vendor")  # the Moorage key is in this namespace too
        external_secret(api, "vendor", "vendor-reg", recorder.host, *ROBOT)
        image = f"{recorder.host}/vendor/tool:1.0"
        pod_with(api, "vendor", "tool", image, ["vendor-reg", "vendor-us-localhost"])
        before = len(requests_to_moorage(registry))

        allowed = (recorder.host,)  # its address is allowed; plain HTTP is not
        finding = check_pod(api, management, "vendor", "tool", allow_private=allowed)
        assert finding.verdict == "unknown"
        assert "over https" in finding.cause and "--insecure-registry" in finding.fix
        assert recorder.seen == [], "a plain-HTTP registry got a request it was not registered for"

        finding = check_pod(
            api,
            management,
            "vendor",
            "tool",
            insecure=(recorder.host,),
            allow_private=(recorder.host,),
        )
        assert finding.verdict == "ok", finding
        assert any(s.authorization for s in recorder.seen), "the credential was never tried"
        for seen in recorder.seen:
            assert seen.authorization in (
                None,
                "Basic " + base64.b64encode(b"robot:robot-password").decode(),
            )
        assert leaked(recorder, moorage_key) == []
        moorage_calls = requests_to_moorage(registry)[before:]
        assert all(path in ("/api/v1/cr/regions",) for _, path in moorage_calls), (
            f"Moorage was asked about a third-party image: {moorage_calls}"
        )
    finally:
        recorder.stop()


def test_wrong_password_is_denied_on_that_registry_alone(
    api: Any, management: ManagementClient
) -> None:
    recorder = Recorder("basic").start()
    try:
        make_namespace(client.CoreV1Api(api), "vendor-bad")
        external_secret(api, "vendor-bad", "reg", recorder.host, "robot", "wrong")
        pod_with(api, "vendor-bad", "tool", f"{recorder.host}/vendor/tool:1.0", ["reg"])
        finding = check_pod(
            api,
            management,
            "vendor-bad",
            "tool",
            insecure=(recorder.host,),
            allow_private=(recorder.host,),
        )
        assert finding.verdict == "denied" and "refused" in finding.cause
    finally:
        recorder.stop()


def test_https_registry_with_its_own_ca_and_token_service(
    api: Any, management: ManagementClient, tmp_path: Path, moorage_key: str
) -> None:
    cert, key = self_signed(tmp_path / "tls")
    recorder = Recorder("bearer", tls=(cert, key)).start()
    try:
        make_namespace(client.CoreV1Api(api), "vendor-tls")
        copy_pull_secrets(api, to="vendor-tls")
        external_secret(api, "vendor-tls", "reg", recorder.host, *ROBOT)
        pod_with(
            api,
            "vendor-tls",
            "tool",
            f"{recorder.host}/vendor/tool@sha256:{'1' * 64}",
            ["reg", "vendor-tls-us-localhost"],
        )
        allowed = (recorder.host,)
        untrusted = check_pod(api, management, "vendor-tls", "tool", allow_private=allowed)
        assert untrusted.verdict == "unknown" and recorder.seen == []
        finding = check_pod(
            api, management, "vendor-tls", "tool", ca_bundle=str(cert), allow_private=allowed
        )
        assert finding.verdict == "ok", finding
        token_calls = [s for s in recorder.seen if s.path.startswith("/token")]
        assert token_calls and all(s.authorization.startswith("Basic ") for s in token_calls)  # type: ignore[union-attr]
        assert any(s.authorization == f"Bearer {TOKEN}" for s in recorder.seen)
        assert leaked(recorder, moorage_key) == []
    finally:
        recorder.stop()


def test_token_service_on_another_host_is_not_contacted(
    api: Any, management: ManagementClient
) -> None:
    elsewhere = Recorder("basic").start()  # where the realm points: must hear nothing
    registry = Recorder("bearer", realm=f"{elsewhere.url}/token").start()
    try:
        make_namespace(client.CoreV1Api(api), "vendor-realm")
        external_secret(api, "vendor-realm", "reg", registry.host, *ROBOT)
        pod_with(api, "vendor-realm", "tool", f"{registry.host}/vendor/tool:1", ["reg"])
        finding = check_pod(
            api,
            management,
            "vendor-realm",
            "tool",
            insecure=(registry.host,),
            allow_private=(registry.host,),
        )
        assert finding.verdict == "unknown"
        assert "another host" in finding.cause and "not contacted" in finding.cause
        assert elsewhere.seen == []
        assert all(s.authorization is None for s in registry.seen)
    finally:
        elsewhere.stop()
        registry.stop()


def test_moorage_images_are_checked_through_the_api_only(
    api: Any, management: ManagementClient, registry: MoorageServer
) -> None:
    host = registry.host_for("us.localhost")
    make_namespace(client.CoreV1Api(api), "own")
    copy_pull_secrets(api, to="own")
    pod_with(api, "own", "app", f"{host}/team-none/app:1", ["own-us-localhost"])
    before = len(requests_to_moorage(registry))
    finding = check_pod(api, management, "own", "app")
    # A request's log line is written after its reply: wait for the pull check's.
    asked = wait_for(
        lambda: (
            (got := requests_to_moorage(registry)[before:])
            and ("POST", "/api/v1/cr/pull-check") in got
            and got
        ),
        10,
        "the pull check in the access log",
    )
    assert all(path.startswith("/api/v1/") for _, path in asked), asked  # no /oauth/token, /v2/
    assert finding.verdict == "denied"


def test_cluster_register_keeps_insecure_registries_and_the_cli_uses_them(
    cluster: KubeCluster, registry: MoorageServer, api: Any, tmp_path: Path
) -> None:
    recorder = Recorder("basic").start()
    try:
        make_namespace(client.CoreV1Api(api), "vendor-cli")
        external_secret(api, "vendor-cli", "reg", recorder.host, *ROBOT)
        pod_with(api, "vendor-cli", "tool", f"{recorder.host}/vendor/tool:1", ["reg"])
        config = tmp_path / "config"
        cli(config, "login", "--server", f"http://localhost:{registry.port}", "--apikey", ADMIN_KEY)
        cli(
            config,
            "ks",
            "cluster-register",
            "lab",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--insecure-registry",
            recorder.host,
            "--allow-private",
            recorder.host,
        )
        (entry,) = json.loads(cli(config, "ks", "clusters", "--output", "json").stdout)
        assert entry["insecure_registries"] == [recorder.host]
        assert entry["allow_private"] == [recorder.host]
        result = cli(
            config,
            "ks",
            "diagnose",
            "--cluster",
            "lab",
            "-n",
            "vendor-cli",
            "pod/tool",
            "--output",
            "json",
        )
        assert json.loads(result.stdout)[0]["verdict"] == "ok"
        assert any(s.authorization for s in recorder.seen)
        bad = cli(
            config,
            "ks",
            "cluster-register",
            "x",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--insecure-registry",
            "http://evil/",
            ok=False,
        )
        assert "HOST[:PORT]" in bad.stderr
    finally:
        recorder.stop()
