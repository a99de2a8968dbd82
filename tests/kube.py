"""A real Kubernetes control plane for tests: etcd and kube-apiserver on
loopback, with generated certificates and an admin kubeconfig. No
controller-manager runs, so fixtures create each namespace's ``default``
service account themselves (see machine-facts)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.server import free_port

T = TypeVar("T")
RESOURCES = ("namespaces", "secrets", "serviceaccounts")  # what the controller touches


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _cert(
    subject: x509.Name, issuer: x509.Name, public: object, signer: object, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())  # type: ignore[arg-type]
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]


class KubeCluster:
    def __init__(self, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.extra_args = extra_args
        self.etcd_port = free_port()
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.kubeconfig = workdir / "kubeconfig"

    def _pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moorage-test-ca")])
        ca = _cert(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
        (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        admin_key = ec.generate_private_key(ec.SECP256R1())
        admin = _cert(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                ]
            ),
            ca_name,
            admin_key.public_key(),
            ca_key,
            ca=False,
        )
        (pki / "admin.crt").write_bytes(admin.public_bytes(serialization.Encoding.PEM))
        _write_key(pki / "admin.key", admin_key)
        serving_key = ec.generate_private_key(ec.SECP256R1())
        serving = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name)
            .public_key(serving_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5))
            .not_valid_after(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        (pki / "serving.crt").write_bytes(serving.public_bytes(serialization.Encoding.PEM))
        _write_key(pki / "serving.key", serving_key)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki / "sa.key", sa_key)
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def start(self) -> KubeCluster:
        """Start the control plane; again on fresh ports when one of the free
        ports picked was taken before etcd or the API server could bind it."""
        for _ in range(3):
            try:
                return self._start_once()
            except RuntimeError:
                log = (self.workdir / "control-plane.log").read_text(errors="replace")
                if "address already in use" not in log:
                    raise
                self.etcd_port, self.port = free_port(), free_port()
        return self._start_once()

    def _start_once(self) -> KubeCluster:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        self._pki()
        pki = self.workdir / "pki"
        log = (self.workdir / "control-plane.log").open("ab")
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self.processes.append(
            subprocess.Popen(
                [
                    "etcd",
                    "--data-dir",
                    str(self.workdir / "etcd"),
                    "--listen-client-urls",
                    etcd_url,
                    "--advertise-client-urls",
                    etcd_url,
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{free_port()}",
                    "--log-level",
                    "error",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        self.processes.append(
            subprocess.Popen(
                [
                    "kube-apiserver",
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={self.port}",
                    f"--tls-cert-file={pki / 'serving.crt'}",
                    f"--tls-private-key-file={pki / 'serving.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    "--authorization-mode=RBAC",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    "--service-cluster-ip-range=10.96.0.0/24",
                    "--advertise-address=127.0.0.1",
                    "--endpoint-reconciler-type=none",
                    "--enable-admission-plugins=ServiceAccount",
                    "--v=0",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        self.kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:{self.port}
    certificate-authority: {pki / "ca.crt"}
users:
- name: admin
  user:
    client-certificate: {pki / "admin.crt"}
    client-key: {pki / "admin.key"}
contexts:
- name: test
  context: {{cluster: test, user: admin}}
current-context: test
""")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready = self.kubectl("get", "--raw", "/readyz", check=False)
            if ready.returncode == 0 and ready.stdout.strip() == "ok":
                return self
            if any(p.poll() is not None for p in self.processes):
                break
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"control plane did not start; see {self.workdir / 'control-plane.log'}")

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
        return result

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def request_counts(self, resources: tuple[str, ...] = RESOURCES) -> dict[str, float]:
        """The API server's own count of finished requests by verb (its
        ``apiserver_request_total``), for the given resources: what clients asked
        of it, whoever they are."""
        text = self.kubectl("get", "--raw", "/metrics").stdout
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if labels.get("resource") in resources:
                verb = labels.get("verb", "")
                counts[verb] = counts.get(verb, 0.0) + float(line.rsplit(" ", 1)[1])
        return counts

    def calls(self, resources: tuple[str, ...] = RESOURCES) -> int:
        """Finished requests other than watches on ``resources``."""
        return int(sum(n for verb, n in self.request_counts(resources).items() if verb != "WATCH"))

    def namespace(self, name: str) -> None:
        """A namespace and its default service account, as a controller-manager would make."""
        self.kubectl("create", "namespace", name)
        self.kubectl("-n", name, "create", "serviceaccount", "default")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.processes.clear()


def wait_for(check: Callable[[], T], seconds: float = 15, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something true or the deadline passes;
    the last value either way (so the caller's assert shows it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    return check()


def api_client(cluster: KubeCluster) -> Any:
    from kubernetes import config

    return config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.kubeconfig)
    )


def make_namespace(core: Any, name: str, labels: dict[str, str] | None = None) -> None:
    """A namespace and its default service account, as a controller-manager would make."""
    from kubernetes import client

    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    core.create_namespaced_service_account(
        name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
    )
