"""The real peers of the enforcement tests: a Moorage registry on token
authentication, a kube-apiserver with etcd, the ``moorage enforce serve``
webhook as its own process (called by the API server over HTTPS), cosign,
skopeo with GPG. Helpers push and sign images and build every kind of
workload."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from moorage.kube.workloads import BY_KIND
from tests.conftest import require_tool
from tests.iam_helpers import ADMIN_KEY, Api, bearer, push_image_with
from tests.kube import KubeCluster
from tests.oci_layout import OCI_MANIFEST, make_image, sha256, write_layout
from tests.server import MOORAGE, MoorageServer, free_port

US = "us.localhost"
NAMESPACE = "moorage-enforce"


def moorage(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real ``moorage`` command, with its own configuration directory."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    return subprocess.run(
        [str(MOORAGE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, "MOORAGE_CONFIG_DIR": str(config)},
    )


class WebhookProcess:
    """``moorage enforce serve`` on a loopback port, for the API server to call."""

    def __init__(
        self, config: Path, tls: Path, port: int, log: Path, *extra: str, cluster: str = "test"
    ) -> None:
        self.config, self.tls, self.port, self.log, self.extra = config, tls, port, log, extra
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> WebhookProcess:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
        self.process = subprocess.Popen(
            [
                str(MOORAGE),
                "enforce",
                "serve",
                "--cluster",
                self.cluster,
                "--tls-cert",
                str(self.tls / "server.crt"),
                "--tls-key",
                str(self.tls / "server.key"),
                "--port",
                str(self.port),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            start_new_session=True,
            env={**clean, "MOORAGE_CONFIG_DIR": str(self.config), "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the webhook exited; see {self.log}")
            try:
                ready = self.get("/readyz")
                if ready.status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the webhook never became ready; see {self.log}")

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, verify=str(self.tls / "ca.crt"), timeout=10)

    def post(self, path: str, body: bytes) -> requests.Response:
        return requests.post(
            self.url + path,
            data=body,
            headers={"Content-Type": "application/json"},
            verify=str(self.tls / "ca.crt"),
            timeout=60,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def decisions(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            _, marker, payload = line.partition(" moorage.enforce.decision ")
            if marker:
                found.append(json.loads(payload))
        return found

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0 when absent)."""
        text = self.get("/metrics").text
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            found = dict(pair.split("=", 1) for pair in rest.rstrip("}").split(",") if "=" in pair)
            if all(found.get(k, "").strip('"') == v for k, v in labels.items()):
                return float(value)
        return 0.0


class Signer:
    """cosign key pairs and a GPG key, and the registry credentials to sign with."""

    def __init__(self, server: MoorageServer, writer: str, tmp: Path) -> None:
        self.server, self.writer, self.tmp = server, writer, tmp
        self.host = server.host_for(US)
        self.docker = tmp / "docker"
        self.docker.mkdir(parents=True)
        auth = base64.b64encode(f"iamapikey:{writer}".encode()).decode()
        (self.docker / "config.json").write_text(json.dumps({"auths": {self.host: {"auth": auth}}}))
        self.gnupg = tmp / "gnupg"
        self.gnupg.mkdir(mode=0o700)
        for name in ("release", "stranger"):
            (tmp / name).mkdir()
            made = self.cosign(name, "generate-key-pair")
            assert made.returncode == 0, made.stderr
        (tmp / "keyparams").write_text(
            "%no-protection\nKey-Type: RSA\nKey-Length: 2048\nName-Real: Release\n"
            "Name-Email: release@example.com\nExpire-Date: 0\n%commit\n"
        )
        assert self.gpg("--gen-key", str(tmp / "keyparams")).returncode == 0
        self.gpg_public = self.gpg("--armor", "--export", "release@example.com").stdout
        self.registries_d = tmp / "registries.d"  # no lookaside: the extension takes signatures
        self.registries_d.mkdir()

    def public_key(self, name: str) -> bytes:
        return (self.tmp / name / "cosign.pub").read_bytes()

    def cosign(self, key: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [require_tool("cosign"), *args],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=self.tmp / key,
            env={**os.environ, "DOCKER_CONFIG": str(self.docker), "COSIGN_PASSWORD": "", **env},
        )

    def sign(self, image: str, key: str = "release", form: str = "tag") -> None:
        """``form``: tag (``sha256-….sig``), referrer (OCI 1.1) or bundle (sigstore)."""
        mode: list[str] = []
        env: dict[str, str] = {}
        if form == "referrer":
            mode, env = ["--registry-referrers-mode=oci-1-1"], {"COSIGN_EXPERIMENTAL": "1"}
        elif form == "bundle":
            mode = ["--new-bundle-format"]
        signed = self.cosign(
            key,
            "sign",
            "-y",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--allow-insecure-registry",
            *mode,
            image,
            **env,
        )
        assert signed.returncode == 0, signed.stderr

    def attest(
        self,
        image: str,
        predicate: dict[str, Any],
        predicate_type: str,
        key: str = "release",
        bundle: bool = True,
    ) -> None:
        """``cosign attest``: a sigstore bundle referrer, or (``bundle=False``) a
        layer of the ``sha256-….att`` tag."""
        path = self.tmp / key / "predicate.json"
        path.write_text(json.dumps(predicate))
        attested = self.cosign(
            key,
            "attest",
            "-y",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--allow-insecure-registry",
            "--type",
            predicate_type,
            "--predicate",
            str(path),
            *(["--new-bundle-format"] if bundle else []),
            image,
        )
        assert attested.returncode == 0, attested.stderr

    def gpg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["gpg", "--batch", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "GNUPGHOME": str(self.gnupg)},
        )

    def skopeo_sign(self, layout: Path, ref: str) -> None:
        """Push with ``skopeo copy --sign-by``: a GPG simple signature through the extension."""
        pushed = subprocess.run(
            [
                "skopeo",
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                f"iamapikey:{self.writer}",
                "--registries.d",
                str(self.registries_d),
                "--sign-by",
                "release@example.com",
                f"oci:{layout}:latest",
                f"docker://{self.host}/{ref}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "GNUPGHOME": str(self.gnupg)},
        )
        assert pushed.returncode == 0, pushed.stderr


class Images:
    """Pushes distinct small images to the ``enforce`` registry namespace."""

    def __init__(self, server: MoorageServer, writer: str, tmp: Path) -> None:
        self.server, self.writer, self.tmp = server, writer, tmp
        self.host = server.host_for(US)

    def push(self, repo: str, tag: str = "v1", seed: str | None = None) -> str:
        """``enforce/<repo>:<tag>``; returns the manifest digest."""
        image = make_image(1, 512, seed or f"{repo}:{tag}:{time.monotonic_ns()}")
        headers = bearer(self.server, US, self.writer, f"repository:enforce/{repo}:pull,push")
        put = push_image_with(self.server, US, f"enforce/{repo}", tag, image, headers)
        assert put.status_code == 201, put.text
        return image.manifest_digest

    def layout(self, seed: str) -> Path:
        return write_layout(make_image(1, 512, seed), self.tmp / f"layout-{seed}")

    def ref(self, repo: str, tag: str = "v1") -> str:
        return f"{self.host}/enforce/{repo}:{tag}"

    def pinned(self, repo: str, digest: str) -> str:
        return f"{self.host}/enforce/{repo}@{digest}"

    def manifest(self, repo: str, reference: str, key: str = ADMIN_KEY) -> requests.Response:
        headers = bearer(self.server, US, key, f"repository:enforce/{repo}:pull,push,delete")
        return requests.get(
            f"http://{self.host}/v2/enforce/{repo}/manifests/{reference}",
            headers={**headers, "Accept": OCI_MANIFEST},
            timeout=10,
        )

    def put_manifest(
        self, repo: str, reference: str, body: bytes, key: str = ADMIN_KEY
    ) -> requests.Response:
        """A manifest push with ``key``'s token, which asks for delete too
        (altering a signature is removing one: Manager's right)."""
        headers = bearer(self.server, US, key, f"repository:enforce/{repo}:pull,push,delete")
        return requests.put(
            f"http://{self.host}/v2/enforce/{repo}/manifests/{reference}",
            data=body,
            headers={**headers, "Content-Type": OCI_MANIFEST},
            timeout=10,
        )

    def junk_referrer(
        self, repo: str, subject: str, artifact_type: str, seed: str, annotations: Any = None
    ) -> str:
        """What any Writer may push: a referrer of ``subject`` of a signature's
        artifact type whose one layer (of the type such referrers hold) is junk."""
        headers = bearer(self.server, US, self.writer, f"repository:enforce/{repo}:pull,push")
        base = f"http://{self.host}/v2/enforce/{repo}"
        layer_type = {
            "application/vnd.dev.cosign.artifact.sig.v1+json": (
                "application/vnd.dev.cosign.simplesigning.v1+json"
            ),
            "application/vnd.dev.sigstore.bundle.v0.3+json": (
                "application/vnd.dev.sigstore.bundle.v0.3+json"
            ),
        }.get(artifact_type, "application/vnd.dsse.envelope.v1+json")
        junk, empty = json.dumps({"junk": seed}).encode(), b"{}"
        for blob in (junk, empty):
            r = requests.post(
                f"{base}/blobs/uploads/",
                params={"digest": sha256(blob)},
                data=blob,
                headers=headers,
                timeout=10,
            )
            assert r.status_code == 201, r.text
        layer: dict[str, Any] = {
            "mediaType": layer_type,
            "digest": sha256(junk),
            "size": len(junk),
            "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ" + "A" * 90},
        }
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256(empty),
                "size": 2,
            },
            "layers": [layer],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
            **({"annotations": annotations} if annotations else {}),
        }
        body = json.dumps(manifest).encode()
        put = requests.put(
            f"{base}/manifests/{sha256(body)}",
            data=body,
            headers={**headers, "Content-Type": OCI_MANIFEST},
            timeout=10,
        )
        assert put.status_code == 201, put.text
        return sha256(body)

    def delete_manifest(self, repo: str, digest: str) -> requests.Response:
        headers = bearer(self.server, US, ADMIN_KEY, f"repository:enforce/{repo}:pull,push,delete")
        return requests.delete(
            f"http://{self.host}/v2/enforce/{repo}/manifests/{digest}", headers=headers, timeout=10
        )


def workload(
    kind: str, name: str, image: str, pull_secrets: list[str] | None = None
) -> dict[str, Any]:
    """A minimal object of each kind that makes pods, with one container."""
    pod_spec: dict[str, Any] = {
        "containers": [{"name": "app", "image": image}],
        "restartPolicy": "Never" if kind in ("Job", "CronJob") else "Always",
    }
    if pull_secrets is not None:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    labels = {"app": name}
    template = {"metadata": {"labels": labels}, "spec": pod_spec}
    api_version = {"CoreV1Api": "v1", "AppsV1Api": "apps/v1", "BatchV1Api": "batch/v1"}[
        BY_KIND[kind].api
    ]
    spec: dict[str, Any]
    if kind == "Pod":
        spec = pod_spec
    elif kind == "CronJob":
        spec = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}
    elif kind == "Job":
        spec = {"template": template}
    elif kind == "ReplicationController":
        spec = {"selector": labels, "template": template}
    else:
        spec = {"selector": {"matchLabels": labels}, "template": template}
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, "spec": spec}


def submit(api: Any, namespace: str, obj: dict[str, Any], dry_run: bool = True) -> dict[str, Any]:
    """Create an object through the API server (server-side dry run by default:
    every admission webhook still runs). The object as it would be stored."""
    kind = BY_KIND[obj["kind"]]
    create = getattr(kind.client(api), f"create_namespaced_{kind.resource}")
    created = create(namespace, obj, dry_run="All" if dry_run else None)
    return api.sanitize_for_serialization(created)  # type: ignore[no-any-return]


def denial(api: Any, namespace: str, obj: dict[str, Any]) -> str | None:
    """The API server's refusal message, or None when the object was admitted."""
    try:
        submit(api, namespace, obj)
    except ApiException as exc:
        try:
            return str(json.loads(exc.body)["message"])
        except (ValueError, KeyError, TypeError):
            return f"{exc.status} {exc.reason}"
    return None


def image_of(kind: str, stored: dict[str, Any]) -> str:
    return str(BY_KIND[kind].pod_spec(stored)["containers"][0]["image"])


def make_pull_secret(core: Any, namespace: str, name: str, key: str, password: str) -> None:
    auth = base64.b64encode(f"iamapikey:{password}".encode()).decode()
    document = {"auths": {key: {"username": "iamapikey", "password": password, "auth": auth}}}
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            type="kubernetes.io/dockerconfigjson",
            data={".dockerconfigjson": base64.b64encode(json.dumps(document).encode()).decode()},
        ),
    )


def key_secret(core: Any, namespace: str, name: str, data: dict[str, bytes]) -> None:
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            type="Opaque",
            data={k: base64.b64encode(v).decode() for k, v in data.items()},
        ),
    )


def apply_policy(cluster: KubeCluster, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(obj))


def registry_world(server: MoorageServer) -> tuple[Api, str, str]:
    """The ``enforce`` namespace in us-south, a Writer key and a Reader key."""
    admin = Api(server, ADMIN_KEY)
    admin.namespace("us-south", "enforce")
    writer = admin.service_key("enforce-writer", "Writer", region="us-south")
    reader = admin.service_key("enforce-reader", "Reader", region="us-south")
    return admin, writer, reader


def service_account_kubeconfig(cluster: KubeCluster, namespace: str, account: str) -> Path:
    """A kubeconfig that signs in as a service account (a TokenRequest token), so
    what runs with it has exactly that account's RBAC."""
    token = cluster.kubectl(
        "-n", namespace, "create", "token", account, "--duration", "4h"
    ).stdout.strip()
    path = cluster.workdir / f"{namespace}-{account}.kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:{cluster.port}
    certificate-authority: {cluster.workdir / "pki" / "ca.crt"}
users:
- name: {account}
  user:
    token: {token}
contexts:
- name: test
  context: {{cluster: test, user: {account}}}
current-context: test
""")
    return path


def register_cluster(
    config: Path,
    cluster: KubeCluster,
    *insecure: str,
    name: str = "test",
    kubeconfig: Path | None = None,
) -> None:
    args = ["ks", "cluster-register", name, "--kubeconfig", str(kubeconfig or cluster.kubeconfig)]
    for host in insecure:  # on loopback: allowed by host:port, as an in-cluster registry
        args += ["--insecure-registry", host, "--allow-private", host]
    registered = moorage(config, *args)
    assert registered.returncode == 0, registered.stderr


def free_webhook_port() -> int:
    return free_port()
