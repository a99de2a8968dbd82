"""The private CA of ``moorage tls init``: its key lives in a directory of its
own that the server never reads, and the CA may vouch only for the configured
domains and addresses. Real TLS clients (OpenSSL's s_client, curl, Python's
ssl, and Go's crypto/x509 through crane when it is installed) refuse a
certificate the CA signed for any other name. Older TLS directories keep
their CA (clients trust it) but lose its key."""

from __future__ import annotations

import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from moorage.pki import issue
from tests.server import MOORAGE, MoorageServer, ensure_region_hosts

DAY = timedelta(days=1)


def tls_init(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MOORAGE), "tls", "init", *args], capture_output=True, text=True, timeout=60
    )


def initialised(tls: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = tls_init("--dir", str(tls), *args)
    assert result.returncode == 0, result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_key_is_kept_apart_from_what_the_server_reads(tmp_path: Path) -> None:
    ensure_region_hosts()
    tls = tmp_path / "tls"
    initialised(tls)
    assert sorted(p.name for p in tls.iterdir()) == ["ca.crt", "server.crt", "server.key"]
    ca_dir = tmp_path / "tls-ca"
    assert mode(ca_dir) == 0o700 and mode(ca_dir / "ca.key") == 0o600
    assert (ca_dir / "ca.crt").read_bytes() == (tls / "ca.crt").read_bytes()
    # The server serves from the TLS directory alone and has nothing to warn of.
    registry = MoorageServer(tmp_path / "data", tmp_path / "log", tls=tls).start()
    try:
        assert requests.get(f"{registry.url}/health", timeout=5, verify=registry.verify).ok
        assert "CA key" not in registry.log_text()
    finally:
        registry.stop()
    # Without --dir: the certificate in <data>/tls, the CA's key outside the data directory.
    made = tls_init("--data", str(tmp_path / "data2"))
    assert made.returncode == 0, made.stderr
    assert not (tmp_path / "data2" / "tls" / "ca.key").exists()
    assert mode(tmp_path / "data2-ca" / "ca.key") == 0o600
    # Elsewhere on request; a renewal finds the CA there again.
    elsewhere = tmp_path / "offline" / "ca"
    initialised(tmp_path / "tls2", "--ca-dir", str(elsewhere))
    assert not (tmp_path / "tls2-ca").exists() and (elsewhere / "ca.key").exists()
    renewed = initialised(tmp_path / "tls2", "--ca-dir", str(elsewhere))
    assert "Reused the CA" in renewed.stdout
    # Never the serving directory itself.
    refused = tls_init("--dir", str(tls), "--ca-dir", str(tls))
    assert refused.returncode == 2 and refused.stderr.startswith("error: the CA's directory")


def test_the_ca_permits_only_the_configured_domains_and_addresses(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    initialised(tls)
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    extension = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert extension.critical
    permitted = {str(g.value) for g in extension.value.permitted_subtrees or []}
    # Every regional and legacy domain is under the base domain, "localhost".
    assert permitted == {"localhost", "127.0.0.1/32", "::1/128"}
    # A name outside it is refused on renewal (one line, nothing rewritten) ...
    before = (tls / "server.crt").read_bytes()
    outside = tls_init("--dir", str(tls), "--name", "registry.example.com")
    assert outside.returncode == 2, outside.stdout
    assert outside.stderr.startswith("error: the CA in ") and "\n" not in outside.stderr.strip()
    assert "registry.example.com" in outside.stderr and "--new-ca" in outside.stderr
    assert (tls / "server.crt").read_bytes() == before
    # ... until a new CA is asked for, which clients must trust anew.
    replaced = initialised(tls, "--name", "registry.example.com", "--new-ca")
    assert "every client must trust the new ca.crt" in replaced.stdout
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    names = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    assert "registry.example.com" in {str(g.value) for g in names.permitted_subtrees or []}


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def forged_leaf(ca_dir: Path, name: x509.GeneralName, out: Path) -> tuple[Path, Path]:
    """A server certificate the CA's key signs for ``name``, in or out of its
    constraints: what a stolen CA key or a careless issuer would make."""
    ca, ca_key = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(x509.SubjectAlternativeName([name]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaf.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "leaf.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return out / "leaf.crt", out / "leaf.key"


@contextmanager
def https_server(cert: Path, key: Path, address: str) -> Iterator[int]:
    """A TLS server presenting ``cert`` that answers every request "ok"; its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    listener = socket.create_server((address, 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(5)
                    conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    )
            except (OSError, ssl.SSLError):
                pass  # the client refused the certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


# (name in the certificate, the address it is served on, whether clients accept it)
CASES = {
    "a configured domain": ("us.localhost", "127.0.0.1", True),
    "a name outside": ("registry.example.com", "127.0.0.1", False),
    "a look-alike suffix": ("evil-localhost", "127.0.0.1", False),
    "a configured domain under another": ("localhost.example.com", "127.0.0.1", False),
    "a configured address": ("127.0.0.1", "127.0.0.1", True),
    "an address outside": ("127.0.0.2", "127.0.0.2", False),
}


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ensure_region_hosts()
    tls = tmp_path_factory.mktemp("constrained") / "tls"
    initialised(tls)
    return tls.with_name("tls-ca")


def _general_name(name: str) -> x509.GeneralName:
    import ipaddress

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@pytest.mark.parametrize("case", list(CASES))
def test_real_clients_refuse_a_certificate_outside_the_constraints(
    ca_dir: Path, tmp_path: Path, case: str
) -> None:
    name, address, accepted = CASES[case]
    cert, key = forged_leaf(ca_dir, _general_name(name), tmp_path / "leaf")
    ca = str(ca_dir / "ca.crt")
    is_ip = name == address
    with https_server(cert, key, address) as port:
        # OpenSSL's own client, checking the chain and the name.
        check = ["-verify_ip", name] if is_ip else ["-servername", name, "-verify_hostname", name]
        s_client = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"{address}:{port}",
                "-CAfile",
                ca,
                "-verify_return_error",
                *check,
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
        output = s_client.stdout + s_client.stderr
        if accepted:
            assert s_client.returncode == 0 and "Verify return code: 0 (ok)" in output, output
        else:
            assert s_client.returncode != 0 and "permitted subtree violation" in output, output
        # curl, as a registry client would reach the name.
        url = f"https://{name}:{port}/" if not is_ip else f"https://{address}:{port}/"
        resolve = [] if is_ip else ["--resolve", f"{name}:{port}:{address}"]
        curl = subprocess.run(
            ["curl", "-sS", "--cacert", ca, *resolve, url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if accepted:
            assert curl.returncode == 0 and curl.stdout == "ok", curl.stderr
        else:
            assert curl.returncode == 60, (curl.returncode, curl.stderr)
        # Python's ssl (requests, the moorage CLI, the credential provider).
        context = ssl.create_default_context(cafile=ca)
        with socket.create_connection((address, port), timeout=10) as raw:
            if accepted:
                with context.wrap_socket(raw, server_hostname=name):
                    pass
            else:
                with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree"):
                    context.wrap_socket(raw, server_hostname=name)
        # Go's crypto/x509 (podman, skopeo, containerd, the kubelet), where crane is built.
        crane = shutil.which("crane")
        if crane is not None and (is_ip or name == "us.localhost"):  # names that resolve
            go = subprocess.run(
                [crane, "digest", f"{name if not is_ip else address}:{port}/ns/app:v1"],
                capture_output=True,
                text=True,
                timeout=60,
                env={"SSL_CERT_FILE": ca, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            )
            refused = "x509:" in go.stderr
            assert refused != accepted, go.stderr


def _old_ca(tls: Path) -> bytes:
    """The CA an older ``moorage tls init`` made: no name constraints, its key
    in the serving directory. Returns the key's bytes."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old Moorage CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    tls.mkdir(mode=0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tls / "ca.key").write_bytes(pem)
    (tls / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pem


def test_an_old_tls_directory_keeps_its_ca_and_loses_its_key(tmp_path: Path) -> None:
    ensure_region_hosts()
    tls = tmp_path / "tls"
    old_key = _old_ca(tls)
    old_ca = (tls / "ca.crt").read_bytes()
    # Renewing moves the key out, keeps the CA clients trust, and says it is unconstrained.
    renewed = initialised(tls)
    assert f"Moved the CA key {tls / 'ca.key'}" in renewed.stdout
    assert "predates name constraints" in renewed.stderr
    assert not (tls / "ca.key").exists()
    assert (tmp_path / "tls-ca" / "ca.key").read_bytes() == old_key
    assert mode(tmp_path / "tls-ca" / "ca.key") == 0o600
    assert (tls / "ca.crt").read_bytes() == old_ca
    # A server whose directory still holds a CA key says so.
    shutil.copy(tmp_path / "tls-ca" / "ca.key", tls / "ca.key")
    registry = MoorageServer(tmp_path / "data", tmp_path / "log", tls=tls).start()
    try:
        assert "a CA key lies beside the server's key" in registry.log_text()
    finally:
        registry.stop()
    # The same key in both places: the stray copy goes.
    initialised(tls)
    assert not (tls / "ca.key").exists()
    # Two different keys: nothing is guessed.
    (tls / "ca.key").write_bytes(b"another key")
    both = tls_init("--dir", str(tls))
    assert both.returncode == 2 and "are different CA keys" in both.stderr
    (tls / "ca.key").unlink()
    # --new-ca replaces the unconstrained CA.
    initialised(tls, "--new-ca")
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.NameConstraints).critical


def test_one_ca_serves_certificates_for_several_names_it_permits(tmp_path: Path) -> None:
    """The library's ``permitted`` is the CA's reach; each certificate names some of it."""
    first = issue(tmp_path / "a", ["us.reg.test"], permitted=["reg.test"])
    second = issue(tmp_path / "a", ["*.reg.test"])
    assert first.ca_key == second.ca_key and not second.ca_created
