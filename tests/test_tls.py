"""HTTPS with a private CA from ``moorage tls init``: real skopeo, podman and
crane push and pull through the token flow trusting only that CA, untrusting
clients are refused, certificates reload on SIGHUP without dropping a
connection, SNI picks a certificate per domain, and the CLI and the kubelet
credential provider trust the CA when told to."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from moorage.pki import issue
from tests.conftest import require_tool
from tests.iam_helpers import ADMIN_KEY
from tests.oci_layout import make_image, read_layout_blobs, sha256, write_layout
from tests.server import MOORAGE, MoorageServer, ensure_region_hosts, free_port, tls_init

PROVIDER = MOORAGE.with_name("moorage-credential-provider")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args[0]} failed: {result.stderr[-2000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tls_init(tmp_path_factory.mktemp("tls") / "tls")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, tls_dir: Path) -> Iterator[MoorageServer]:
    ensure_region_hosts()
    tmp = tmp_path_factory.mktemp("https")
    server = MoorageServer(
        tmp / "data",
        tmp / "server.log",
        auth="token",
        env={"MOORAGE_BOOTSTRAP_APIKEY": ADMIN_KEY},
        tls=tls_dir,
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory, tls_dir: Path) -> Path:
    """A containers-style certificate directory: the CA and nothing else."""
    directory = tmp_path_factory.mktemp("certs.d")
    shutil.copy(tls_dir / "ca.crt", directory / "ca.crt")
    return directory


class HttpsApi:
    def __init__(self, registry: MoorageServer) -> None:
        self.base = f"https://{registry.host_for('localhost')}/api/v1"
        self.verify = registry.verify

    def call(self, method: str, path: str, body: object = None, expect: int = 201) -> object:
        r = requests.request(
            method,
            self.base + path,
            json=body,
            auth=("iamapikey", ADMIN_KEY),
            timeout=30,
            verify=self.verify,
        )
        assert r.status_code == expect, r.text
        return r.json() if r.content else None

    def service_key(self, name: str, roles: str, **scope: str) -> str:
        self.call("POST", "/iam/service-ids", {"name": name, "description": "tls"})
        policy = {"roles": roles, "service_name": "container-registry", **scope}
        self.call("POST", f"/iam/service-ids/{name}/policies", policy)
        created = self.call("POST", f"/iam/service-ids/{name}/api-keys", {"name": f"{name}-key"})
        assert isinstance(created, dict)
        return str(created["apikey"])


@pytest.fixture(scope="module")
def api(registry: MoorageServer) -> HttpsApi:
    api = HttpsApi(registry)
    api.call("POST", "/cr/us-south/namespaces", {"name": "secure"})
    return api


def test_skopeo_pushes_and_pulls_trusting_only_the_ca(
    registry: MoorageServer, api: HttpsApi, cert_dir: Path, tmp_path: Path
) -> None:
    skopeo = require_tool("skopeo")
    image = make_image(layer_count=3, layer_bytes=3 * 1024 * 1024, seed="tls-skopeo")
    layout = write_layout(image, tmp_path / "src")
    ref = f"docker://{registry.host_for('us.localhost')}/secure/skopeo:v1"
    creds = f"iamapikey:{ADMIN_KEY}"
    ok(
        run(
            skopeo,
            "copy",
            "--dest-cert-dir",
            str(cert_dir),
            "--dest-creds",
            creds,
            f"oci:{layout}:latest",
            ref,
        )
    )
    out = tmp_path / "pulled"
    ok(
        run(
            skopeo, "copy", "--src-cert-dir", str(cert_dir), "--src-creds", creds, ref, f"oci:{out}"
        )
    )
    pulled = read_layout_blobs(out)
    for digest in [*image.blob_digests, image.manifest_digest]:
        assert sha256(pulled[digest]) == digest

    # Without the CA, skopeo refuses the server's certificate.
    refused = run(skopeo, "inspect", "--creds", creds, ref)
    assert refused.returncode != 0
    assert "x509" in refused.stderr or "certificate" in refused.stderr


def test_podman_pushes_and_pulls_trusting_only_the_ca(
    registry: MoorageServer, api: HttpsApi, cert_dir: Path, tmp_path: Path
) -> None:
    podman = require_tool("podman")
    layout = write_layout(make_image(2, 256 * 1024, "tls-podman"), tmp_path / "src")
    runroot = Path(tempfile.mkdtemp(prefix="podtls", dir="/tmp"))
    creds = f"iamapikey:{ADMIN_KEY}"

    def pod(root: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run(
            podman,
            "--root",
            str(tmp_path / root),
            "--runroot",
            str(runroot / root),
            "--storage-driver=vfs",
            *args,
        )

    ok(pod("a", "pull", f"oci:{layout}:latest"))
    image_id = ok(pod("a", "images", "--format", "{{.ID}}", "--noheading")).split()[0]
    target = f"{registry.host_for('us.localhost')}/secure/podman:v1"
    digest_file = tmp_path / "digest"
    ok(
        pod(
            "a",
            "push",
            "--cert-dir",
            str(cert_dir),
            "--creds",
            creds,
            "--digestfile",
            str(digest_file),
            image_id,
            target,
        )
    )
    ok(pod("b", "pull", "--cert-dir", str(cert_dir), "--creds", creds, target))
    listed = ok(pod("b", "images", "--digests", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}}"))
    assert f"{target} {digest_file.read_text().strip()}" in listed

    refused = pod("c", "pull", "--creds", creds, target)
    assert refused.returncode != 0 and "x509" in refused.stderr


def test_crane_pushes_and_pulls_with_ssl_cert_file(
    registry: MoorageServer, api: HttpsApi, tls_dir: Path, tmp_path: Path
) -> None:
    crane = require_tool("crane")
    key = api.service_key(
        "crane-tls", "Writer", region="us-south", resource_type="namespace", resource="secure"
    )
    host = registry.host_for("us.localhost")
    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    auth = base64.b64encode(f"iamapikey:{key}".encode()).decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    trusted = {"SSL_CERT_FILE": str(tls_dir / "ca.crt"), "DOCKER_CONFIG": str(docker_config)}

    image = make_image(layer_count=2, layer_bytes=512 * 1024, seed="tls-crane")
    layout = write_layout(image, tmp_path / "src")
    ref = f"{host}/secure/crane:v1"
    ok(run(crane, "push", str(layout), ref, env=trusted))
    assert ok(run(crane, "digest", ref, env=trusted)).strip() == image.manifest_digest
    out = tmp_path / "pulled"
    ok(run(crane, "pull", "--format=oci", ref, str(out), env=trusted))
    assert set(image.blob_digests) <= set(read_layout_blobs(out))

    untrusted = run(crane, "digest", ref, env={"DOCKER_CONFIG": str(docker_config)})
    assert untrusted.returncode != 0 and "x509" in untrusted.stderr


def test_blobs_and_ranges_over_tls(registry: MoorageServer, api: HttpsApi) -> None:
    """Over TLS a blob cannot go out with sendfile: the fallback still sends
    every byte and honours Range, across many read chunks."""
    data = hashlib.sha256(b"tls-range").digest() * (9 * 1024 * 1024 // 32 + 7)
    host = registry.host_for("us.localhost")
    token = requests.get(
        f"https://{host}/oauth/token",
        params={"service": "us.localhost", "scope": "repository:secure/blob:pull,push"},
        auth=("iamapikey", ADMIN_KEY),
        timeout=10,
        verify=registry.verify,
    ).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    digest = sha256(data)
    pushed = requests.post(
        f"https://{host}/v2/secure/blob/blobs/uploads/",
        params={"digest": digest},
        data=data,
        headers=bearer,
        timeout=60,
        verify=registry.verify,
    )
    assert pushed.status_code == 201, pushed.text
    url = f"https://{host}/v2/secure/blob/blobs/{digest}"
    whole = requests.get(url, headers=bearer, timeout=60, verify=registry.verify)
    assert whole.status_code == 200 and sha256(whole.content) == digest
    for first, last in ((0, 0), (1_000_000, 5_500_000), (len(data) - 10, len(data) - 1)):
        part = requests.get(
            url,
            headers={**bearer, "Range": f"bytes={first}-{last}"},
            timeout=60,
            verify=registry.verify,
        )
        assert part.status_code == 206
        assert part.content == data[first : last + 1]


def test_an_untrusting_client_is_refused_and_plain_http_gets_nothing(
    registry: MoorageServer,
) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://{registry.host}/v2/", timeout=5)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{registry.host}/v2/", timeout=5)
    assert requests.get(f"{registry.url}/health", timeout=5, verify=registry.verify).ok


def peer_fingerprint(port: int, ca: Path, server_name: str | None = "localhost") -> str:
    context = ssl.create_default_context(cafile=str(ca))
    if server_name is None:
        context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def test_sighup_reloads_certificates_without_dropping_connections(tmp_path: Path) -> None:
    tls = tls_init(tmp_path / "tls")
    registry = MoorageServer(tmp_path / "data", tmp_path / "log", tls=tls).start()
    try:
        ca = tls / "ca.crt"
        before = peer_fingerprint(registry.port, ca)
        kept = http.client.HTTPSConnection(
            "localhost", registry.port, context=ssl.create_default_context(cafile=str(ca))
        )
        kept.request("GET", "/v2/")
        assert kept.getresponse().read() == b"{}"
        kept_socket = kept.sock
        assert isinstance(kept_socket, ssl.SSLSocket)

        # A broken file is not taken up: the old certificate stays.
        good = (tls / "server.crt").read_bytes()
        (tls / "server.crt").write_text("not a certificate\n")
        registry.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "kept the current TLS certificates" not in registry.log_text():
            assert time.monotonic() < deadline, "no reload attempt logged"
            time.sleep(0.1)
        assert peer_fingerprint(registry.port, ca) == before
        (tls / "server.crt").write_bytes(good)

        tls_init(tls)  # renews the server certificate under the same CA
        registry.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while peer_fingerprint(registry.port, ca) == before:
            assert time.monotonic() < deadline, "the new certificate never showed"
            time.sleep(0.1)
        assert "SIGHUP: reloaded TLS certificates" in registry.log_text()

        # The connection opened before the reload still works, on its old session.
        kept.request("GET", "/v2/")
        assert kept.getresponse().read() == b"{}"
        assert kept.sock is kept_socket
        der = kept_socket.getpeercert(binary_form=True)
        assert der is not None and hashlib.sha256(der).hexdigest() == before
        kept.close()
    finally:
        registry.stop()


def test_sni_picks_a_certificate_per_domain(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca_dir = tmp_path / "ca"
    # Under base domain reg.test: one certificate for us.reg.test alone, a
    # wildcard for the other regions (OpenSSL ignores *.localhost, a wildcard
    # over a single label), one for the global and legacy names; one CA.
    groups = {
        "us.reg.test": ["us.reg.test"],
        "wildcard": ["*.reg.test"],
        "rest": [
            "reg.test",
            "registry.ng.reg.test",
            "registry.eu-gb.reg.test",
            "registry.eu-de.reg.test",
            "registry.au-syd.reg.test",
            "127.0.0.1",
        ],
    }
    for stem, names in groups.items():
        files = issue(ca_dir, names, permitted=["reg.test", "127.0.0.1"])
        shutil.copy(files.cert, certs / f"{stem}.crt")
        shutil.copy(files.key, certs / f"{stem}.key")
    ca = ca_dir / "ca.crt"
    for leftover in ("server.crt", "server.key"):
        (ca_dir / leftover).unlink()
    # No --tls-cert: the directory alone serves every domain.
    registry = MoorageServer(
        tmp_path / "data",
        tmp_path / "log",
        ("--tls-certs-dir", str(certs)),
        env={"MOORAGE_BASE_DOMAIN": "reg.test"},
        tls=ca_dir,
    ).start()
    try:

        def served(name: str | None) -> str:
            return peer_fingerprint(registry.port, ca, name)

        def file_print(stem: str) -> str:
            pem = (certs / f"{stem}.crt").read_text()
            return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()

        assert served("us.reg.test") == file_print("us.reg.test")
        assert served("uk.reg.test") == file_print("wildcard")
        assert served("jp.reg.test") == file_print("wildcard")
        assert served("registry.ng.reg.test") == file_print("rest")
        assert served("reg.test") == file_print("rest")
        # No SNI (a client dialling an address): the global registry's certificate.
        assert served(None) == file_print("rest")
    finally:
        registry.stop()


def serve_result(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [str(MOORAGE), "serve", "--data", str(tmp_path / "data"), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"moorage serve {' '.join(args)} started instead of refusing")


def test_a_domain_without_a_certificate_is_refused(tmp_path: Path) -> None:
    files = issue(tmp_path / "tls", ["us.localhost", "localhost", "127.0.0.1"])
    result = serve_result(
        tmp_path,
        "--port",
        str(free_port()),
        "--tls-cert",
        str(files.cert),
        "--tls-key",
        str(files.key),
    )
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.startswith("error: no TLS certificate covers ") and "\n" not in message
    uncovered = message.split("covers ", 1)[1].split(":", 1)[0].split(", ")
    assert "us.localhost" not in uncovered and "localhost" not in uncovered
    assert {"uk.localhost", "jp.localhost", "registry.ng.localhost"} <= set(uncovered)
    mismatched = serve_result(
        tmp_path,
        "--port",
        str(free_port()),
        "--tls-cert",
        str(files.cert),
        "--tls-key",
        str(files.ca_key),
    )
    assert mismatched.returncode == 2 and mismatched.stderr.startswith("error: cannot use")


def test_plain_http_beyond_loopback_needs_the_flag(tmp_path: Path) -> None:
    refused = serve_result(tmp_path, "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: refusing to serve plain HTTP on 0.0.0.0: configure tls_cert and tls_key "
        "(`moorage tls init` makes them) or pass --insecure-http"
    )
    allowed = MoorageServer(
        tmp_path / "data", tmp_path / "log", ("--host", "0.0.0.0", "--insecure-http")
    ).start()
    try:
        assert "serving plain HTTP on 0.0.0.0 (--insecure-http)" in allowed.log_text()
    finally:
        allowed.stop()


def test_the_credential_provider_and_the_cli_trust_the_ca(
    registry: MoorageServer, api: HttpsApi, tls_dir: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "apikey"
    key_file.write_text(api.service_key("tls-node", "Reader", region="us-south") + "\n")
    request = json.dumps(
        {
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderRequest",
            "image": f"{registry.host_for('us.localhost')}/secure/skopeo:v1",
        }
    )

    host = registry.host_for("us.localhost")
    serves = ["--registry", host, "--allow-private", host]  # on loopback: allowed by name

    def provide(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PROVIDER), "--apikey-file", str(key_file), *serves, *args],
            input=request,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **(env or {})},
        )

    provided = provide("--ca-file", str(tls_dir / "ca.crt"))
    assert provided.returncode == 0, provided.stderr
    assert json.loads(provided.stdout)["kind"] == "CredentialProviderResponse"
    from_env = provide(env={"MOORAGE_CA_FILE": str(tls_dir / "ca.crt")})
    assert from_env.returncode == 0, from_env.stderr
    untrusted = provide()
    assert untrusted.returncode == 1
    assert "cannot verify the TLS certificate" in untrusted.stderr

    home = {"MOORAGE_CONFIG_DIR": str(tmp_path / "profile")}
    server = f"https://{registry.host_for('localhost')}"
    refused = run(str(MOORAGE), "login", "--server", server, "--apikey", ADMIN_KEY, env=home)
    assert refused.returncode != 0
    assert "cannot verify the TLS certificate" in refused.stderr
    ok(
        run(
            str(MOORAGE),
            "login",
            "--server",
            server,
            "--apikey",
            ADMIN_KEY,
            "--ca-file",
            str(tls_dir / "ca.crt"),
            env=home,
        )
    )
    profile = json.loads((tmp_path / "profile" / "profile.json").read_text())
    assert profile["ca_file"] == str(tls_dir / "ca.crt")
    # Later commands trust the CA from the profile.
    listed = ok(run(str(MOORAGE), "cr", "namespaces", "--output", "json", env=home))
    assert "secure" in listed
