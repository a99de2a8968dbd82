"""The seed's pull-secret workflows against a real kube-apiserver, each ending
in a real pull: credentials are resolved from the live API objects exactly as
the kubelet would (moorage.kube.keyring), then handed to skopeo."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.kube.keyring import Credential, Keyring, repository_of
from tests.conftest import require_tool
from tests.iam_helpers import ADMIN_KEY, Api, skopeo
from tests.kube import KubeCluster
from tests.oci_layout import make_image, write_layout
from tests.server import MOORAGE, MoorageServer, ensure_region_hosts
from tests.test_cli_iam_cr import cli


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    for tool in ("kube-apiserver", "etcd", "kubectl", "skopeo"):
        require_tool(tool)
    started = KubeCluster(tmp_path_factory.mktemp("kube") / "cluster").start()
    started.kubectl("-n", "default", "create", "serviceaccount", "default")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("ks")
    server = MoorageServer(
        tmp / "data", tmp / "server.log", auth="token", env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY}
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def image(registry: MoorageServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image in us-south, pushed by the administrator; returns its reference."""
    Api(registry, ADMIN_KEY).namespace("us-south", "team-k8s")
    layout = write_layout(make_image(2, 4096, "ks"), tmp_path_factory.mktemp("img") / "layout")
    reference = f"{registry.host_for('us.localhost')}/team-k8s/app:v1"
    pushed = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"iamapikey:{ADMIN_KEY}",
        f"oci:{layout}:latest",
        f"docker://{reference}",
    )
    assert pushed.returncode == 0, pushed.stderr
    return reference


@pytest.fixture(scope="module")
def config(
    cluster: KubeCluster, registry: MoorageServer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    directory = tmp_path_factory.mktemp("config")
    cli(directory, "login", "--server", f"http://localhost:{registry.port}", "--apikey", ADMIN_KEY)
    cli(directory, "ks", "cluster-register", "mycluster", "--kubeconfig", str(cluster.kubeconfig))
    return directory


def kubelet_credentials(
    cluster: KubeCluster, namespace: str, pod_spec: dict[str, Any], image: str
) -> list[Credential]:
    """What the kubelet would try for ``image``: only the pod's own imagePullSecrets."""
    ring = Keyring()
    for ref in pod_spec.get("imagePullSecrets") or []:
        got = cluster.kubectl(
            "-n", namespace, "get", "secret", ref["name"], "-o", "json", check=False
        )
        if got.returncode == 0:
            secret = json.loads(got.stdout)
            ring.add_secret(secret["type"], secret.get("data") or {}, f"{namespace}/{ref['name']}")
    return ring.lookup(repository_of(image))


def real_pull(image: str, credentials: list[Credential]) -> str | None:
    """Pull with each credential in the kubelet's order; the digest of the first success."""
    for credential in credentials:
        with tempfile.TemporaryDirectory() as out:
            pulled = skopeo(
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                f"{credential.username}:{credential.password}",
                f"docker://{image}",
                f"dir:{out}",
            )
            if pulled.returncode == 0:
                manifest = (Path(out) / "manifest.json").read_bytes()
                return "sha256:" + hashlib.sha256(manifest).hexdigest()
    return None


def create_pod(
    cluster: KubeCluster,
    namespace: str,
    name: str,
    image: str,
    pull_secrets: list[str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
    if pull_secrets is not None:
        spec["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    cluster.kubectl("create", "-f", "-", stdin=json.dumps(pod))
    created = json.loads(cluster.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout)
    return created["spec"]  # type: ignore[no-any-return]


def deployment_of(
    namespace: str, name: str, image: str, pull_secrets: list[str] | None = None
) -> str:
    """A Deployment manifest (no controller-manager runs, so it starts no pods)."""
    spec: dict[str, Any] = {"containers": [{"name": name, "image": image}]}
    if pull_secrets is not None:
        spec["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
            },
        }
    )


def digest_of(registry: MoorageServer, image: str) -> str:
    raw = skopeo(
        "inspect",
        "--tls-verify=false",
        "--raw",
        "--creds",
        f"iamapikey:{ADMIN_KEY}",
        f"docker://{image}",
    )
    return "sha256:" + hashlib.sha256(raw.stdout.encode()).hexdigest()


def test_default_namespace_apply_rotate_and_pull(
    cluster: KubeCluster, registry: MoorageServer, image: str, config: Path
) -> None:
    applied = json.loads(
        cli(
            config, "ks", "cluster-pull-secret-apply", "--cluster", "mycluster", "--output", "json"
        ).stdout
    )
    expected = [
        "default-us-localhost",
        "default-uk-localhost",
        "default-de-localhost",
        "default-au-localhost",
        "default-jp-localhost",
        "default-localhost",
    ]
    assert sorted(applied["secrets"]) == sorted(expected)
    account = json.loads(
        cluster.kubectl("-n", "default", "get", "serviceaccount", "default", "-o", "json").stdout
    )
    assert sorted(r["name"] for r in account["imagePullSecrets"]) == sorted(expected)

    spec = create_pod(cluster, "default", "app", image)  # the admission plugin copies them in
    first = kubelet_credentials(cluster, "default", spec, image)
    assert [c.username for c in first] == ["iamapikey"]
    assert real_pull(image, first) == digest_of(registry, image)

    # A second run rotates: new key in place, old key gone, nothing duplicated.
    again = json.loads(
        cli(
            config, "ks", "cluster-pull-secret-apply", "--cluster", "mycluster", "--output", "json"
        ).stdout
    )
    assert again["api_key_id"] != applied["api_key_id"]
    assert again["retired_api_keys"] == [applied["api_key_id"]]
    account = json.loads(
        cluster.kubectl("-n", "default", "get", "serviceaccount", "default", "-o", "json").stdout
    )
    assert len(account["imagePullSecrets"]) == len(expected)
    second = kubelet_credentials(cluster, "default", spec, image)
    assert second[0].password != first[0].password
    assert real_pull(image, second) == digest_of(registry, image)
    assert real_pull(image, first) is None, "the retired key still pulls"


def test_copy_to_another_namespace_and_attach(
    cluster: KubeCluster, registry: MoorageServer, image: str, config: Path
) -> None:
    cli(config, "ks", "cluster-pull-secret-apply", "--cluster", "mycluster")
    cluster.namespace("dev")
    cluster.kubectl("-n", "dev", "create", "secret", "generic", "unrelated", "--from-literal=a=b")
    cluster.kubectl(
        "-n",
        "dev",
        "patch",
        "serviceaccount",
        "default",
        "-p",
        '{"imagePullSecrets": [{"name": "keep-me"}]}',
    )
    # Without secrets in the namespace a pod cannot pull.
    bare = create_pod(cluster, "dev", "before", image, pull_secrets=[])
    assert kubelet_credentials(cluster, "dev", bare, image) == []

    copied = json.loads(
        cli(
            config,
            "ks",
            "pull-secret-copy",
            "--cluster",
            "mycluster",
            "--from",
            "default",
            "--to",
            "dev",
            "--output",
            "json",
        ).stdout
    )
    assert "dev-us-localhost" in copied[0]["secrets"]
    secret = json.loads(
        cluster.kubectl("-n", "dev", "get", "secret", "dev-us-localhost", "-o", "json").stdout
    )
    source = json.loads(
        cluster.kubectl(
            "-n", "default", "get", "secret", "default-us-localhost", "-o", "json"
        ).stdout
    )
    assert secret["metadata"]["uid"] != source["metadata"]["uid"]
    assert secret["data"] == source["data"]

    for _ in range(2):  # twice: never duplicated
        cli(
            config,
            "ks",
            "sa-add-pull-secret",
            "--cluster",
            "mycluster",
            "--namespace",
            "dev",
            "--secret",
            "dev-us-localhost",
        )
    account = json.loads(
        cluster.kubectl("-n", "dev", "get", "serviceaccount", "default", "-o", "json").stdout
    )
    assert [r["name"] for r in account["imagePullSecrets"]] == ["keep-me", "dev-us-localhost"]

    spec = create_pod(cluster, "dev", "after", image)
    assert real_pull(image, kubelet_credentials(cluster, "dev", spec, image)) == digest_of(
        registry, image
    )


def test_seed_kubectl_patch_variants_and_a_deployment(
    cluster: KubeCluster, registry: MoorageServer, image: str, config: Path
) -> None:
    cli(config, "ks", "cluster-pull-secret-apply", "--cluster", "mycluster")
    for namespace, patch in [
        ("replace-variant", ["-p", '{"imagePullSecrets":[{"name": "NS-us-localhost"}]}']),
        (
            "append-variant",
            [
                "--type=json",
                "-p",
                '[{"op":"add","path":"/imagePullSecrets/-","value":{"name":"NS-us-localhost"}}]',
            ],
        ),
    ]:
        cluster.namespace(namespace)
        if "append" in namespace:
            cluster.kubectl(
                "-n",
                namespace,
                "patch",
                "serviceaccount",
                "default",
                "-p",
                '{"imagePullSecrets":[{"name":"existing"}]}',
            )
        cli(config, "ks", "pull-secret-copy", "--cluster", "mycluster", "--to", namespace)
        args = [a.replace("NS", namespace) for a in patch]
        cluster.kubectl("-n", namespace, "patch", "serviceaccount/default", *args)
        spec = create_pod(cluster, namespace, "app", image)
        assert real_pull(image, kubelet_credentials(cluster, namespace, spec, image)) == digest_of(
            registry, image
        )

    # A Deployment's pods carry its template's imagePullSecrets.
    cluster.kubectl(
        "create",
        "-f",
        "-",
        stdin=deployment_of("replace-variant", "web", image, ["replace-variant-us-localhost"]),
    )
    live = json.loads(
        cluster.kubectl("-n", "replace-variant", "get", "deployment", "web", "-o", "json").stdout
    )
    template = live["spec"]["template"]["spec"]
    assert real_pull(
        image, kubelet_credentials(cluster, "replace-variant", template, image)
    ) == digest_of(registry, image)


def test_combined_secret_has_every_domain(
    cluster: KubeCluster, registry: MoorageServer, image: str, config: Path
) -> None:
    cli(config, "ks", "cluster-pull-secret-apply", "--cluster", "mycluster", "--combined")
    secret = json.loads(
        cluster.kubectl("-n", "default", "get", "secret", "all-localhost", "-o", "json").stdout
    )
    ring = Keyring()
    ring.add_secret(secret["type"], secret["data"], "default/all-localhost")
    port = registry.port
    for domain in ("us", "uk", "de", "au", "jp"):
        assert ring.lookup(f"{domain}.localhost:{port}/team-k8s/app")
    assert ring.lookup(f"localhost:{port}/public/app")
    spec = {"imagePullSecrets": [{"name": "all-localhost"}]}
    assert real_pull(image, kubelet_credentials(cluster, "default", spec, image)) == digest_of(
        registry, image
    )


def test_ks_bad_input(config: Path, tmp_path: Path) -> None:
    cli(config, "ks", "cluster-pull-secret-apply", "--cluster", "nope", ok=False)
    cli(config, "ks", "cluster-rm", "nope", ok=False)
    cli(config, "ks", "pull-secret-copy", "--cluster", "mycluster", ok=False)
    broken = tmp_path / "kubeconfig"
    broken.write_text("not: [a kubeconfig")
    cli(config, "ks", "cluster-register", "broken", "--kubeconfig", str(broken))
    cli(config, "ks", "cluster-pull-secret-apply", "--cluster", "broken", ok=False)
    cli(
        config,
        "ks",
        "sa-add-pull-secret",
        "--cluster",
        "mycluster",
        "--namespace",
        "missing",
        "--secret",
        "x",
        ok=False,
    )
    clusters = json.loads(cli(config, "ks", "clusters", "--output", "json").stdout)
    assert {c["name"] for c in clusters} == {"mycluster", "broken"}


def diagnose(config: Path, namespace: str, target: str) -> tuple[int, list[dict[str, Any]]]:
    result = subprocess.run(
        [
            str(MOORAGE),
            "ks",
            "diagnose",
            "--cluster",
            "mycluster",
            "-n",
            namespace,
            target,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")},
            "MOORAGE_CONFIG_DIR": str(config),
        },
    )
    assert result.returncode in (0, 3), result.stderr
    return result.returncode, json.loads(result.stdout)


def secret_for(cluster: KubeCluster, namespace: str, name: str, host: str, key: str) -> None:
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "secret",
        "docker-registry",
        name,
        f"--docker-server={host}",
        "--docker-username=iamapikey",
        f"--docker-password={key}",
    )


def test_diagnose_explains_each_cause(
    cluster: KubeCluster, registry: MoorageServer, image: str, config: Path
) -> None:
    cli(config, "ks", "cluster-pull-secret-apply", "--cluster", "mycluster")
    create_pod(cluster, "default", "healthy", image)
    code, (finding,) = diagnose(config, "default", "pod/healthy")
    assert code == 0 and finding["verdict"] == "ok"
    assert "default-us-localhost" in finding["secrets"]

    cluster.namespace("empty")
    create_pod(cluster, "empty", "app", image)
    code, (finding,) = diagnose(config, "empty", "pod/app")
    assert code == 3 and "no image pull secrets" in finding["cause"]
    assert "pull-secret-copy" in finding["fix"]

    cluster.namespace("unattached")
    cli(config, "ks", "pull-secret-copy", "--cluster", "mycluster", "--to", "unattached")
    cluster.kubectl("create", "-f", "-", stdin=deployment_of("unattached", "web", image))
    code, (finding,) = diagnose(config, "unattached", "deployment/web")
    assert code == 3 and "unattached-us-localhost exists but" in finding["cause"]
    assert "sa-add-pull-secret" in finding["fix"]
    cli(
        config,
        "ks",
        "sa-add-pull-secret",
        "--cluster",
        "mycluster",
        "-n",
        "unattached",
        "--secret",
        "unattached-us-localhost",
    )
    assert diagnose(config, "unattached", "deployment/web")[1][0]["verdict"] == "ok"

    admin = Api(registry, ADMIN_KEY)
    host = registry.host_for("us.localhost")
    cluster.namespace("scoped")
    for name, scope in [
        ("wrong-ns", {"region": "us-south", "resource_type": "namespace", "resource": "other-ns"}),
        ("wrong-region", {"region": "eu-de"}),
    ]:
        key = admin.service_key(name, "Reader", **scope)
        secret_for(cluster, "scoped", name, host, key)
        create_pod(cluster, "scoped", name, image, pull_secrets=[name])
        code, (finding,) = diagnose(config, "scoped", f"pod/{name}")
        assert code == 3, finding
        assert "may not pull namespace team-k8s in us-south" in finding["cause"]
        assert "--region us-south --resource-type namespace --resource team-k8s" in finding["fix"]

    key = admin.service_key("locked-one", "Reader")
    secret_for(cluster, "scoped", "locked-one", host, key)
    create_pod(cluster, "scoped", "locked", image, pull_secrets=["locked-one"])
    assert diagnose(config, "scoped", "pod/locked")[1][0]["verdict"] == "ok"
    admin.call("POST", "/iam/api-keys/locked-one-key/lock", expect=201)
    code, (finding,) = diagnose(config, "scoped", "pod/locked")
    assert code == 3 and "is locked" in finding["cause"] and "api-key-unlock" in finding["fix"]

    legacy_image = image.replace("us.localhost", "registry.ng.localhost")
    secret_for(
        cluster,
        "scoped",
        "legacy",
        registry.host_for("registry.ng.localhost"),
        admin.service_key("legacy-user", "Reader"),
    )
    create_pod(cluster, "scoped", "legacy", legacy_image, pull_secrets=["legacy"])
    code, (finding,) = diagnose(config, "scoped", "pod/legacy")
    assert code == 3 and "legacy domain" in finding["cause"]
    assert "us.localhost" in finding["fix"]


def test_pull_secret_create_scoped_and_external(
    cluster: KubeCluster, registry: MoorageServer, image: str, config: Path
) -> None:
    cluster.namespace("team")
    created = json.loads(
        cli(
            config,
            "ks",
            "pull-secret-create",
            "--cluster",
            "mycluster",
            "-n",
            "team",
            "--create-service-id",
            "--region",
            "us-south",
            "--resource",
            "team-k8s",
            "--attach",
            "--output",
            "json",
        ).stdout
    )
    assert created["service_id"] == "mycluster-team-id"
    assert created["secrets"] == ["team-us-localhost"]
    spec = create_pod(cluster, "team", "app", image)
    assert real_pull(image, kubelet_credentials(cluster, "team", spec, image)) == digest_of(
        registry, image
    )
    # The key is scoped: another namespace of the registry stays closed to it.
    other = image.replace("team-k8s/app", "team-k8s-other/app")
    assert kubelet_credentials(cluster, "team", spec, other)  # matched by host...
    assert real_pull(other, kubelet_credentials(cluster, "team", spec, other)) is None

    cli(
        config,
        "ks",
        "pull-secret-create",
        "--cluster",
        "mycluster",
        "-n",
        "team",
        "--name",
        "external",
        "--docker-server",
        "registry.example.test:5000",
        "--docker-username",
        "robot",
        "--docker-password",
        "s3cret",
    )
    ring_spec = {"imagePullSecrets": [{"name": "external"}]}
    (credential,) = kubelet_credentials(
        cluster, "team", ring_spec, "registry.example.test:5000/x/y:1"
    )
    assert (credential.username, credential.password) == ("robot", "s3cret")
    cli(
        config,
        "ks",
        "pull-secret-create",
        "--cluster",
        "mycluster",
        "-n",
        "team",
        "--docker-server",
        "registry.example.test",
        ok=False,
    )
    cli(config, "ks", "pull-secret-create", "--cluster", "mycluster", "-n", "team", ok=False)

    # A same-named secret someone else made is theirs: refused, and left as it was.
    cluster.kubectl(
        "-n", "team", "create", "secret", "generic", "handmade", "--from-literal=token=mine"
    )
    refused = cli(
        config,
        "ks",
        "pull-secret-create",
        "--cluster",
        "mycluster",
        "-n",
        "team",
        "--name",
        "handmade",
        "--docker-server",
        "registry.example.test:5000",
        "--docker-username",
        "robot",
        "--docker-password",
        "s3cret",
        ok=False,
    )
    assert "not made by Moorage" in refused.stderr
    kept = json.loads(
        cluster.kubectl("-n", "team", "get", "secret", "handmade", "-o", "json").stdout
    )
    assert kept["type"] == "Opaque" and list(kept["data"]) == ["token"]


def test_migrate_off_registry_tokens(
    cluster: KubeCluster, registry: MoorageServer, image: str, config: Path
) -> None:
    cli(config, "ks", "cluster-pull-secret-apply", "--cluster", "mycluster")
    token = Api(registry, ADMIN_KEY).call("POST", "/cr/us-south/tokens", {}, expect=201)["token"]
    legacy_host = registry.host_for("registry.ng.localhost")
    legacy_image = image.replace(registry.host_for("us.localhost"), legacy_host)
    cluster.namespace("old")
    secret = "bluemix-old-secret-regional"
    cluster.kubectl(
        "-n",
        "old",
        "create",
        "secret",
        "docker-registry",
        secret,
        f"--docker-server={legacy_host}",
        "--docker-username=token",
        f"--docker-password={token}",
    )
    cluster.kubectl(
        "-n",
        "old",
        "patch",
        "serviceaccount",
        "default",
        "-p",
        json.dumps({"imagePullSecrets": [{"name": secret}]}),
    )
    cluster.kubectl("create", "-f", "-", stdin=deployment_of("old", "legacy", legacy_image))
    # The token secret pulls from the legacy domain today.
    account = json.loads(cluster.kubectl("-n", "old", "get", "sa", "default", "-o", "json").stdout)
    spec = {"imagePullSecrets": account["imagePullSecrets"]}
    assert real_pull(legacy_image, kubelet_credentials(cluster, "old", spec, legacy_image))

    dry = json.loads(
        cli(
            config, "ks", "pull-secret-migrate", "--cluster", "mycluster", "--output", "json"
        ).stdout
    )
    assert {"namespace": "old", "secret": secret, "domains": [legacy_host]} in dry["token_secrets"]
    assert [i["new_image"] for i in dry["legacy_images"] if i["namespace"] == "old"] == [image]
    assert not dry["applied"]
    assert cluster.kubectl("-n", "old", "get", "secret", secret, check=False).returncode == 0

    kept = json.loads(
        cli(
            config,
            "ks",
            "pull-secret-migrate",
            "--cluster",
            "mycluster",
            "--apply",
            "--output",
            "json",
        ).stdout
    )
    assert "old-us-localhost" in kept["created_secrets"] and kept["removed_secrets"] == []

    done = json.loads(
        cli(
            config,
            "ks",
            "pull-secret-migrate",
            "--cluster",
            "mycluster",
            "--apply",
            "--rewrite-images",
            "--output",
            "json",
        ).stdout
    )
    assert f"old/{secret}" in done["removed_secrets"]
    assert cluster.kubectl("-n", "old", "get", "secret", secret, check=False).returncode != 0
    live = json.loads(
        cluster.kubectl("-n", "old", "get", "deployment", "legacy", "-o", "json").stdout
    )
    template = live["spec"]["template"]["spec"]
    assert template["containers"][0]["image"] == image
    account = json.loads(cluster.kubectl("-n", "old", "get", "sa", "default", "-o", "json").stdout)
    names = [r["name"] for r in account["imagePullSecrets"]]
    assert secret not in names and "old-us-localhost" in names
    spec = {"imagePullSecrets": account["imagePullSecrets"]}
    assert real_pull(image, kubelet_credentials(cluster, "old", spec, image)) == digest_of(
        registry, image
    )


def wait_for(check: Any, seconds: float = 15) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    return check()


def test_controller_keeps_namespaces_supplied_and_rotates(
    cluster: KubeCluster, registry: MoorageServer, image: str, config: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")},
        "MOORAGE_CONFIG_DIR": str(config),
    }
    log = (config / "controller.log").open("w")
    process = subprocess.Popen(
        [
            str(MOORAGE),
            "ks",
            "controller",
            "--cluster",
            "mycluster",
            "--selector",
            "env=managed",
            "--rotate-every",
            "6",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:

        def attached(namespace: str) -> list[str]:
            got = cluster.kubectl(
                "-n", namespace, "get", "sa", "default", "-o", "json", check=False
            )
            if got.returncode != 0:
                return []
            return [r["name"] for r in json.loads(got.stdout).get("imagePullSecrets") or []]

        for name, labels in [
            ("managed", "env=managed"),
            ("opted-out", "env=managed moorage.io/pull-secrets=disabled"),
            ("unmanaged", "env=other"),
        ]:
            cluster.namespace(name)
            cluster.kubectl("label", "namespace", name, *labels.split())
        cluster.kubectl(
            "-n",
            "managed",
            "patch",
            "sa",
            "default",
            "-p",
            '{"imagePullSecrets": [{"name": "someone-elses"}]}',
        )
        names = wait_for(
            lambda: "managed-us-localhost" in attached("managed") and attached("managed")
        )
        assert names[0] == "someone-elses" and "managed-us-localhost" in names
        assert attached("opted-out") == [] and attached("unmanaged") == []

        def key_of(namespace: str) -> str:
            secret = json.loads(
                cluster.kubectl(
                    "-n", namespace, "get", "secret", f"{namespace}-us-localhost", "-o", "json"
                ).stdout
            )
            return str(secret["metadata"]["annotations"]["moorage.io/api-key-id"])

        before = key_of("managed")
        assert wait_for(lambda: key_of("managed") != before, 30), "no rotation reached the copy"
        spec = {"imagePullSecrets": [{"name": "managed-us-localhost"}]}
        assert real_pull(image, kubelet_credentials(cluster, "managed", spec, image)) == digest_of(
            registry, image
        )
        keys = Api(registry, ADMIN_KEY).call(
            "GET", "/iam/service-ids/moorage-cluster-mycluster/api-keys"
        )
        assert before not in [k["id"] for k in keys], "the replaced key was not retired"
    finally:
        process.terminate()
        process.wait(30)


def test_controller_manifests_are_accepted_by_the_api_server(cluster: KubeCluster) -> None:
    manifests = Path(__file__).resolve().parents[1] / "deploy" / "controller.yaml"
    # Applied for real: the API server validates every object (no controller-manager
    # runs, so the Deployment starts no pods).
    result = cluster.kubectl("apply", "-f", str(manifests))
    for kind in ("namespace", "serviceaccount", "clusterrole", "clusterrolebinding", "deployment"):
        assert kind in result.stdout.lower()
    for resource in ("namespaces", "secrets", "serviceaccounts"):  # the controller's informers
        account = cluster.kubectl(
            "auth",
            "can-i",
            "watch",
            resource,
            "--all-namespaces",
            "--as=system:serviceaccount:moorage-system:moorage-controller",
        )
        assert account.stdout.strip() == "yes", resource
    denied = cluster.kubectl(
        "auth",
        "can-i",
        "delete",
        "namespaces",
        "--as=system:serviceaccount:moorage-system:moorage-controller",
        check=False,
    )
    assert denied.stdout.strip() == "no"


def test_external_private_registry_through_kubectl_secret(
    cluster: KubeCluster, tmp_path: Path
) -> None:
    """Any other private registry (here CNCF Distribution with htpasswd), with a
    secret from `kubectl create secret docker-registry`, ends in a real pull."""
    require_tool("docker-registry")
    require_tool("htpasswd")
    from tests.server import free_port

    port = free_port()
    subprocess.run(
        ["htpasswd", "-Bbc", str(tmp_path / "htpasswd"), "robot", "robot-password"],
        check=True,
        capture_output=True,
    )
    (tmp_path / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"auth:\n  htpasswd:\n    realm: external\n    path: {tmp_path / 'htpasswd'}\n"
    )
    external = subprocess.Popen(
        ["docker-registry", "serve", str(tmp_path / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        image = f"127.0.0.1:{port}/vendor/tool:1.0"
        layout = write_layout(make_image(1, 2048, "external"), tmp_path / "layout")
        pushed = skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "robot:robot-password",
            f"oci:{layout}:latest",
            f"docker://{image}",
        )
        assert pushed.returncode == 0, pushed.stderr
        cluster.namespace("vendor")
        cluster.kubectl(
            "-n",
            "vendor",
            "create",
            "secret",
            "docker-registry",
            "vendor-registry",
            f"--docker-server=127.0.0.1:{port}",
            "--docker-username=robot",
            "--docker-password=robot-password",
        )
        spec = create_pod(cluster, "vendor", "tool", image, pull_secrets=["vendor-registry"])
        credentials = kubelet_credentials(cluster, "vendor", spec, image)
        assert [c.username for c in credentials] == ["robot"]
        assert real_pull(image, credentials) is not None
        assert (
            real_pull(image, [c.__class__("robot", "wrong", "x", "y") for c in credentials]) is None
        )
    finally:
        external.terminate()
        external.wait(10)


def test_another_accounts_images_through_a_service_id_key(
    cluster: KubeCluster, registry: MoorageServer, config: Path, tmp_path: Path
) -> None:
    """The seed's "other account" workflow: that account makes a service ID with
    Reader and an API key, and the secret with it pulls that account's images."""
    created = json.loads(
        cli(
            config,
            "iam",
            "account-create",
            "partner",
            "--admin-email",
            "admin@partner.test",
            "--output",
            "json",
        ).stdout
    )
    partner_key = created["apikey"]
    partner = Api(registry, partner_key)
    partner.namespace("us-south", "partner-ns")
    image = f"{registry.host_for('us.localhost')}/partner-ns/tool:2.0"
    layout = write_layout(make_image(1, 2048, "partner"), tmp_path / "layout")
    pushed = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"iamapikey:{partner_key}",
        f"oci:{layout}:latest",
        f"docker://{image}",
    )
    assert pushed.returncode == 0, pushed.stderr

    cluster.namespace("uses-partner")
    # Our own cluster key cannot read another account's namespace...
    cli(config, "ks", "cluster-pull-secret-apply", "--cluster", "mycluster")
    cli(
        config,
        "ks",
        "pull-secret-copy",
        "--cluster",
        "mycluster",
        "--to",
        "uses-partner",
        "--attach",
    )
    own = create_pod(cluster, "uses-partner", "own", image)
    assert real_pull(image, kubelet_credentials(cluster, "uses-partner", own, image)) is None
    # ... a service ID key of the partner account can.
    made = json.loads(
        cli(
            config,
            "ks",
            "pull-secret-create",
            "--cluster",
            "mycluster",
            "-n",
            "uses-partner",
            "--name",
            "partner-registry",
            "--create-service-id",
            "--region",
            "us-south",
            "--resource",
            "partner-ns",
            "--apikey",
            partner_key,
            "--output",
            "json",
        ).stdout
    )
    assert made["secrets"] == ["partner-registry"]
    spec = create_pod(cluster, "uses-partner", "partner", image, pull_secrets=["partner-registry"])
    assert real_pull(image, kubelet_credentials(cluster, "uses-partner", spec, image)) is not None
    # Only the first account creates accounts.
    denied = Api(registry, partner_key).call(
        "POST", "/iam/accounts", {"name": "x", "admin_email": "x@x.test"}
    )
    assert denied["error"]["code"] == "forbidden"


def test_copy_by_selector_and_to_all_namespaces(cluster: KubeCluster, config: Path) -> None:
    cli(config, "ks", "cluster-pull-secret-apply", "--cluster", "mycluster")
    for name, label in [("sel-a", "tier=web"), ("sel-b", "tier=web"), ("sel-c", "tier=db")]:
        cluster.namespace(name)
        cluster.kubectl("label", "namespace", name, label)
    report = json.loads(
        cli(
            config,
            "ks",
            "pull-secret-copy",
            "--cluster",
            "mycluster",
            "--selector",
            "tier=web",
            "--attach",
            "--output",
            "json",
        ).stdout
    )
    assert sorted(r["namespace"] for r in report) == ["sel-a", "sel-b"]
    assert (
        cluster.kubectl(
            "-n", "sel-c", "get", "secret", "sel-c-us-localhost", check=False
        ).returncode
        != 0
    )
    everywhere = json.loads(
        cli(
            config,
            "ks",
            "pull-secret-copy",
            "--cluster",
            "mycluster",
            "--all-namespaces",
            "--output",
            "json",
        ).stdout
    )
    names = {r["namespace"] for r in everywhere}
    assert {"sel-a", "sel-b", "sel-c"} <= names
    assert "default" not in names and not any(n.startswith("kube-") for n in names)
    assert cluster.kubectl("-n", "sel-c", "get", "secret", "sel-c-us-localhost").returncode == 0
