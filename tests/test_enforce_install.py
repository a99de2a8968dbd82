"""``moorage enforce install``, ``uninstall`` and ``import`` against a real
kube-apiserver: what install applies (and that the API server accepts the
generated CRD schemas and deploy/enforce.yaml), what it refuses, that a
Service-mode install fails closed until its webhook runs, that uninstall
unlocks the cluster, and Portieris policies converted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client

from moorage.enforce import install
from moorage.enforce.policy import CLUSTER_IMAGE_POLICY, IMAGE_POLICY, crd
from tests.conftest import require_tool
from tests.enforce_env import denial, moorage, register_cluster, workload
from tests.kube import KubeCluster, api_client, make_namespace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    for tool in ("kube-apiserver", "etcd", "kubectl"):
        require_tool(tool)
    started = KubeCluster(tmp_path_factory.mktemp("kube") / "cluster").start()
    started.kubectl("-n", "default", "create", "serviceaccount", "default")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def config(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("config")
    register_cluster(directory, cluster)
    return directory


@pytest.fixture(scope="module")
def tls(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    made = moorage(config, "enforce", "certs", "--dir", str(directory))
    assert made.returncode == 0, made.stderr
    return directory


def exists(cluster: KubeCluster, *what: str) -> bool:
    return cluster.kubectl("get", *what, check=False).returncode == 0


def failed(result: Any) -> str:
    """The one line ``moorage`` prints when it refuses."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("FAILED: "), result.stderr
    return str(lines[0])


def test_install_refuses_to_lock_the_webhook_out_of_its_own_namespace(
    cluster: KubeCluster, config: Path, tls: Path
) -> None:
    cluster.namespace("locked")
    refused = moorage(
        config, "enforce", "install", "--cluster", "test", "--namespace", "locked",
        "--tls-dir", str(tls),
    )  # fmt: skip
    line = failed(refused)
    assert "namespace locked is not exempt from image enforcement" in line
    assert "--exempt-namespace locked" in line
    assert not exists(cluster, "crd", "imagepolicies.moorage.io")  # nothing applied
    assert not exists(cluster, "mutatingwebhookconfiguration", "moorage-enforce")
    dry = moorage(
        config, "enforce", "install", "--cluster", "test", "--namespace", "locked",
        "--tls-dir", str(tls), "--exempt-namespace", "locked", "--dry-run",
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    kinds = [o["kind"] for o in yaml.safe_load_all(dry.stdout)]
    assert kinds[:2] == ["CustomResourceDefinition", "CustomResourceDefinition"]
    assert kinds[-2:] == ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
    assert not exists(cluster, "crd", "imagepolicies.moorage.io")  # a dry run applies nothing


def test_a_service_install_fails_closed_until_its_webhook_runs_and_uninstall_unlocks(
    cluster: KubeCluster, config: Path, tls: Path, tmp_path: Path
) -> None:
    api = api_client(cluster)
    cosign_pub = tmp_path / "cosign.pub"
    cosign_pub.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    done = moorage(
        config, "enforce", "install", "--cluster", "test", "--tls-dir", str(tls),
        "--cosign-key", str(cosign_pub),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "applied Namespace moorage-enforce" in done.stdout
    labels = json.loads(cluster.kubectl("get", "namespace", "moorage-enforce", "-o", "json").stdout)
    assert "moorage.io/enforce" not in labels["metadata"]["labels"]  # exempt by name instead
    for what in (
        ("crd", "imagepolicies.moorage.io"),
        ("crd", "clusterimagepolicies.moorage.io"),
        ("clusterimagepolicy", "default"),
        ("-n", "moorage-enforce", "secret", install.TLS_SECRET),
        ("-n", "moorage-enforce", "secret", install.SIGNERS_SECRET),
        ("-n", "moorage-enforce", "service", install.NAME),
        ("-n", "moorage-enforce", "configmap", install.NAME),
        ("clusterrolebinding", install.NAME),
        ("validatingwebhookconfiguration", install.NAME),
    ):
        assert exists(cluster, *what), what
    hook = json.loads(
        cluster.kubectl("get", "mutatingwebhookconfiguration", install.NAME, "-o", "json").stdout
    )["webhooks"][0]
    assert hook["clientConfig"]["service"] == {
        "name": install.NAME,
        "namespace": "moorage-enforce",
        "path": "/mutate",
        "port": 443,
    }
    # deploy/enforce.yaml fits what install made, and the API server accepts it.
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "enforce.yaml").read_text()))
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == install.NAME
    assert {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} == {
        install.TLS_SECRET
    }
    assert pod["containers"][0]["ports"][0]["containerPort"] == install.CONTAINER_PORT
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == (
        install.NAME
    )
    applied = cluster.kubectl(
        "apply", "--dry-run=server", "-f", str(ROOT / "deploy" / "enforce.yaml"), check=False
    )
    assert applied.returncode == 0, applied.stderr
    # No webhook runs behind the Service: admissions fail closed, except where exempt.
    message = denial(api, "default", workload("Pod", "p", "reg.example.com/app:v1"))
    assert message is not None and "failed calling webhook" in message
    own = workload("Pod", "p", "reg.example.com/app:v1")
    own["spec"]["serviceAccountName"] = install.NAME  # no controller makes "default" here
    assert denial(api, "moorage-enforce", own) is None
    again = moorage(config, "enforce", "install", "--cluster", "test", "--tls-dir", str(tls))
    assert again.returncode == 0, again.stderr
    assert "kept ClusterImagePolicy default (it exists)" in again.stdout
    removed = moorage(config, "enforce", "uninstall", "--cluster", "test")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines()[0] == f"removed MutatingWebhookConfiguration {install.NAME}"
    assert denial(api, "default", workload("Pod", "p", "reg.example.com/app:v1")) is None
    assert not exists(cluster, "crd", "imagepolicies.moorage.io")
    assert not exists(cluster, "clusterrole", install.NAME)


PORTIERIS_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.portieris.cloud.ibm.com"},
        "spec": {
            "group": "portieris.cloud.ibm.com",
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    for kind, plural, scope in (
        ("ImagePolicy", "imagepolicies", "Namespaced"),
        ("ClusterImagePolicy", "clusterimagepolicies", "Cluster"),
    )
]


def _portieris(kind: str, name: str, repositories: list[Any], ns: str | None = None) -> Any:
    meta: dict[str, Any] = {"name": name, **({"namespace": ns} if ns else {})}
    return {
        "apiVersion": "portieris.cloud.ibm.com/v1",
        "kind": kind,
        "metadata": meta,
        "spec": {"repositories": repositories},
    }


def test_portieris_policies_are_imported_with_what_could_not_be(
    cluster: KubeCluster, config: Path
) -> None:
    none = moorage(config, "enforce", "import", "--cluster", "test")
    assert "the portieris.cloud.ibm.com CRDs are not installed" in failed(none)
    for definition in [*PORTIERIS_CRDS, crd(IMAGE_POLICY), crd(CLUSTER_IMAGE_POLICY)]:
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(definition))
    for name in ("imagepolicies", "clusterimagepolicies"):
        for group in ("portieris.cloud.ibm.com", "moorage.io"):
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}.{group}")
    make_namespace(client.CoreV1Api(api_client(cluster)), "team")
    signed = {"type": "signedBy", "keySecret": "team-gpg"}
    for obj in (
        _portieris("ClusterImagePolicy", "portieris-default", [{"name": "*", "policy": None}]),
        _portieris(
            "ImagePolicy",
            "signed",
            [
                {
                    "name": "us.icr.io/team/*",
                    "policy": {
                        "simple": {
                            "requirements": [
                                {**signed, "signedIdentity": {"type": "matchRepository"}}
                            ]
                        }
                    },
                },
                {"name": "icr.io/ibm/*", "policy": {"trust": {"enabled": True}}},
                {
                    "name": "uk.icr.io/*",
                    "policy": {"vulnerability": {"ICCRVA": {"enabled": True}}},
                },
            ],
            "team",
        ),
    ):
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(obj))
    dry = moorage(config, "enforce", "import", "--cluster", "test")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing was created" in dry.stdout
    assert "trust (Notary v1" in dry.stdout
    assert not exists(cluster, "clusterimagepolicies.moorage.io", "portieris-default")
    applied = moorage(
        config, "enforce", "import", "--cluster", "test", "--apply", "--output", "json"
    )
    assert applied.returncode == 0, applied.stderr
    rows = {r["source"]: r for r in json.loads(applied.stdout)}
    assert rows["ClusterImagePolicy portieris-default"]["applied"] is True
    assert rows["ImagePolicy team/signed"]["applied"] is True
    notes = " ".join(rows["ImagePolicy team/signed"]["notes"])
    assert (
        "icr.io/ibm/*" in notes and "vulnerability is kept and enforced as Portieris does" in notes
    )
    imported = json.loads(
        cluster.kubectl(
            "get", "imagepolicies.moorage.io", "signed", "-n", "team", "-o", "json"
        ).stdout
    )
    repositories = imported["spec"]["repositories"]
    assert repositories[0]["policy"]["simple"]["requirements"] == [
        {**signed, "signedIdentity": {"type": "matchRepository"}}
    ]
    assert repositories[1]["policy"]["simple"]["requirements"] == [{"type": "reject"}]
    assert repositories[2]["policy"]["vulnerability"] == {"ICCRVA": {"enabled": True}}
    assert exists(cluster, "clusterimagepolicies.moorage.io", "portieris-default")


def test_uninstall_with_nothing_installed_is_quiet(cluster: KubeCluster, config: Path) -> None:
    removed = moorage(config, "enforce", "uninstall", "--cluster", "test", "--keep-policies")
    assert removed.returncode == 0, removed.stderr
    assert "MutatingWebhookConfiguration" not in removed.stdout
