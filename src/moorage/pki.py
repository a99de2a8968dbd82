"""``moorage tls init``: a private CA and a server certificate for every name
the registry answers on, for installations without a public CA.

The CA is made once and reused, so running ``tls init`` again (to renew, or
after adding a region) issues a new server certificate that clients already
trust. Keys are P-256, written 0600 with an atomic rename, so a server
reloading on SIGHUP never reads half a file."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from moorage.privatefile import write_private

CA_DAYS = 3650
# Apple platforms and browsers reject server certificates valid for longer.
DEFAULT_SERVER_DAYS = 397


@dataclass(frozen=True)
class IssuedFiles:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    ca_created: bool
    not_after: datetime


_write = write_private  # keys 0600, certificates 0644, never through a planted file


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(ca_cert: Path, ca_key: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key} is not the EC key `moorage tls init` makes")
    return cert, key


def _create_ca(now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Moorage"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"Moorage private CA {socket.gethostname()} {now:%Y-%m-%d}"
            ),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(directory: Path, names: list[str], days: int = DEFAULT_SERVER_DAYS) -> IssuedFiles:
    """Reuse (or create) ``ca.crt``/``ca.key`` in ``directory`` and write a new
    ``server.crt``/``server.key`` for ``names`` (host names and IP addresses)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = directory / "ca.crt", directory / "ca.key"
    now = datetime.now(UTC)
    created = not ca_cert_path.exists()
    if created:
        ca_cert, ca_key = _create_ca(now)
        _write(ca_key_path, _key_pem(ca_key), 0o600)
        _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    else:
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)

    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return IssuedFiles(ca_cert_path, ca_key_path, cert_path, key_path, created, not_after)


def trust_instructions(files: IssuedFiles, addresses: list[str], api_url: str) -> str:
    """How each kind of client comes to trust the CA, for ``addresses``
    (``host[:port]`` as clients write them)."""
    ca = files.ca_cert
    hosts = " ".join(addresses)
    first = addresses[0]
    return f"""
Serve with it (a running server picks renewed files up on SIGHUP):

    moorage serve --tls-cert {files.cert} --tls-key {files.key}
    # or in the config file: [server] tls_cert = "{files.cert}", tls_key = "{files.key}"

Trust the CA ({ca}) on every client, for each address the registry answers on:

  podman, skopeo, buildah, CRI-O (/etc/containers/certs.d/<host:port>/ca.crt):
    for h in {hosts}; do
      install -D -m 0644 {ca} /etc/containers/certs.d/$h/ca.crt
    done

  docker (/etc/docker/certs.d/<host:port>/ca.crt):
    for h in {hosts}; do
      install -D -m 0644 {ca} /etc/docker/certs.d/$h/ca.crt
    done

  containerd (with config_path = "/etc/containerd/certs.d" in its CRI registry
  configuration), one hosts.toml per address:
    for h in {hosts}; do
      install -D -m 0644 {ca} /etc/containerd/certs.d/$h/ca.crt
      printf 'server = "https://%s"\\n\\n[host."https://%s"]\\n  ca = "%s"\\n' \\
        $h $h /etc/containerd/certs.d/$h/ca.crt > /etc/containerd/certs.d/$h/hosts.toml
    done

  crane and other Go programs (replaces the system's roots for that command):
    SSL_CERT_FILE={ca} crane ls {first}/<namespace>/<image>

  the moorage CLI and the kubelet credential provider:
    moorage login --server {api_url} --ca-file {ca}
    moorage-credential-provider --ca-file /etc/moorage/ca.crt   # in the kubelet's provider args

Keep {files.ca_key} private: whoever holds it can impersonate the registry.
"""
