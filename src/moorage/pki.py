"""``moorage tls init``: a private CA and a server certificate for every name
the registry answers on, for installations without a public CA.

The CA is made once and reused, so running ``tls init`` again (to renew, or
after adding a region) issues a new server certificate that clients already
trust. Its key lives in a directory of its own (0700, the key 0600), never in
the directory the server reads, and the CA carries critical X.509 name
constraints: it can vouch only for the configured domains (and their
subdomains) and the addresses given, so a client that trusts it trusts it for
nothing else. Keys are P-256, written 0600 with an atomic rename, so a server
reloading on SIGHUP never reads half a file."""

from __future__ import annotations

import ipaddress
import os
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


CA_KEY = "ca.key"
CA_CERT = "ca.crt"


class PkiError(ValueError):
    """A CA that cannot be used as asked; the message says what to do."""


@dataclass(frozen=True)
class IssuedFiles:
    ca_cert: Path  # the public copy beside the server's files, for clients
    ca_key: Path  # in the CA's own directory
    cert: Path
    key: Path
    ca_created: bool
    not_after: datetime
    ca_key_moved_from: Path | None = None  # an older layout's ca.key, moved away
    ca_unconstrained: bool = False  # a reused CA from before name constraints


def default_ca_dir(directory: Path) -> Path:
    """Where the CA's key goes for a serving directory: ``<directory>-ca``,
    beside it and never inside it."""
    return directory.with_name(directory.name + "-ca")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def permitted_subtrees(names: list[str]) -> x509.NameConstraints:
    """The subtrees a CA for ``names`` may sign: each DNS name with its
    subdomains (a wildcard's base name; names under another one listed are
    covered by it), each address exactly. Nothing else: any other DNS name
    or address, and any other IP version, is outside."""
    dns: set[str] = set()
    ips: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for name in names:
        ip = _ip(name)
        if ip is not None:
            ips.add(ipaddress.ip_network(ip))
        else:
            dns.add(name.lower().removeprefix("*.").rstrip("."))
    roots = sorted(d for d in dns if not any(d.endswith("." + other) for other in dns))
    permitted: list[x509.GeneralName] = [x509.DNSName(d) for d in roots]
    permitted += [x509.IPAddress(n) for n in sorted(ips, key=str)]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def ca_constraints(cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def outside(constraints: x509.NameConstraints, names: list[str]) -> list[str]:
    """The names a CA with ``constraints`` may not sign, as RFC 5280 matches them."""
    permitted = constraints.permitted_subtrees or []
    dns = [g.value.lower() for g in permitted if isinstance(g, x509.DNSName)]
    nets = [ipaddress.ip_network(g.value) for g in permitted if isinstance(g, x509.IPAddress)]
    refused = []
    for name in names:
        ip = _ip(name)
        if ip is not None:
            ok = any(
                ip.version == n.version
                and int(n.network_address) <= int(ip) <= int(n.broadcast_address)
                for n in nets
            )
        else:
            host = name.lower().removeprefix("*.").rstrip(".")
            ok = any(host == d or host.endswith("." + d) for d in dns)
        if not ok:
            refused.append(name)
    return refused


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


def _create_ca(
    now: datetime, constraints: x509.NameConstraints
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
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
        # RFC 5280: critical, so a client that cannot enforce it refuses the CA.
        .add_extension(constraints, critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _move_old_key(directory: Path, ca_dir: Path) -> Path | None:
    """An older ``tls init`` kept ca.key beside the server's key: move it (with
    its certificate) into ``ca_dir``, so the CA clients trust stays the same."""
    old_key = directory / CA_KEY
    if not old_key.exists():
        return None
    new_key = ca_dir / CA_KEY
    if new_key.exists():
        if new_key.read_bytes() != old_key.read_bytes():
            raise PkiError(
                f"{old_key} and {new_key} are different CA keys: remove the one that is not "
                "your CA's (the server never needs a CA key)"
            )
    else:
        _write(new_key, old_key.read_bytes(), 0o600)
        if (directory / CA_CERT).exists():
            _write(ca_dir / CA_CERT, (directory / CA_CERT).read_bytes(), 0o644)
    old_key.unlink()
    return old_key


def issue(
    directory: Path,
    names: list[str],
    days: int = DEFAULT_SERVER_DAYS,
    ca_dir: Path | None = None,
    permitted: list[str] | None = None,
    new_ca: bool = False,
) -> IssuedFiles:
    """Reuse (or create) the CA in ``ca_dir`` (default ``<directory>-ca``) and
    write a new ``server.crt``/``server.key`` for ``names`` (host names and IP
    addresses) in ``directory``, with a public copy of ``ca.crt``. A new CA
    may sign only ``permitted`` (default: ``names``) and their subdomains; a
    reused one refuses names outside what it permits (``new_ca`` replaces
    it, and clients must then trust the new one)."""
    ca_dir = ca_dir or default_ca_dir(directory)
    if ca_dir.resolve() == directory.resolve():
        raise PkiError("the CA's directory must not be the one the server reads")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(ca_dir, 0o700)
    moved = _move_old_key(directory, ca_dir)
    ca_cert_path, ca_key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    now = datetime.now(UTC)
    created = new_ca or not ca_cert_path.exists()
    if created:
        ca_cert, ca_key = _create_ca(now, permitted_subtrees(permitted or names))
        _write(ca_key_path, _key_pem(ca_key), 0o600)
        _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    else:
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
    constraints = ca_constraints(ca_cert)
    refused = outside(constraints, names) if constraints is not None else []
    if refused:
        raise PkiError(
            f"the CA in {ca_dir} may not sign {', '.join(refused)}: make a new one with "
            "--new-ca (every client must then trust the new ca.crt)"
        )
    _write(directory / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)

    alt_names: list[x509.GeneralName] = []
    for name in names:
        ip = _ip(name)
        alt_names.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(name))
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
    return IssuedFiles(
        directory / CA_CERT,
        ca_key_path,
        cert_path,
        key_path,
        created,
        not_after,
        moved,
        constraints is None,
    )


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

Keep {files.ca_key} private, and off the machine the server runs on if you
can: the server never needs it, and whoever holds it can impersonate the
registry (on the names above only: the CA carries name constraints). Trust
the CA per host as above, not in the system's trust store, where every
program would trust it for every site it names.
"""
