"""The certificates the server presents: one for every name, or one per
domain chosen by SNI, loaded at start and again on SIGHUP.

Each load builds new ``SSLContext`` objects and swaps them in whole: a
handshake uses the contexts current when it starts, and connections already
open keep theirs, so a renewal drops nothing. Starting fails, and a reload
keeps the old certificates, when a configured domain has no certificate that
covers it."""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from moorage.config import ConfigError

log = logging.getLogger("moorage.tls")

_SOON = timedelta(days=14)


class CertificateError(ConfigError):
    pass


@dataclass(frozen=True)
class Certificate:
    source: Path
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_after: datetime
    context: ssl.SSLContext

    def covers(self, name: str) -> bool:
        """RFC 6125 matching, as clients do: exact, or a wildcard standing for
        exactly one leftmost label."""
        name = name.lower()
        for pattern in self.dns_names:
            if pattern == name:
                return True
            if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
                return True
        return False


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    for path in (cert, key):
        if not path.is_file():
            raise CertificateError(f"cannot read {path}: no such file")
    try:
        # An encrypted key fails here instead of prompting on the terminal.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if exc.reason in (None, "PEM lib"):
            reason = "expected a PEM certificate (chain) and a PEM private key"
        if b"ENCRYPTED" in key.read_bytes():
            reason = "the key is encrypted and no passphrase can be given; decrypt it"
        elif exc.reason == "KEY_VALUES_MISMATCH":
            reason = "the key does not belong to the certificate"
        raise CertificateError(f"cannot use {cert} with {key}: {reason}") from None
    except OSError as exc:
        raise CertificateError(f"cannot use {cert} with {key}: {exc.strerror or exc}") from None
    return context


def load_certificate(cert: Path, key: Path) -> Certificate:
    context = _server_context(cert, key)
    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(n.lower() for n in names.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in names.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    return Certificate(cert, dns, ips, leaf.not_valid_after_utc, context)


@dataclass(frozen=True)
class TlsFiles:
    """Where the certificates come from: ``cert``/``key`` (one certificate,
    also the one for clients that send no SNI) and/or ``certs_dir``, whose
    ``<name>.crt`` + ``<name>.key`` pairs are chosen by the names they carry."""

    cert: Path | None
    key: Path | None
    certs_dir: Path | None

    def pairs(self) -> list[tuple[Path, Path]]:
        pairs = []
        if self.cert is not None and self.key is not None:
            pairs.append((self.cert, self.key))
        if self.certs_dir is not None:
            if not self.certs_dir.is_dir():
                raise CertificateError(f"tls_certs_dir {self.certs_dir} is not a directory")
            for crt in sorted(self.certs_dir.glob("*.crt")):
                key = crt.with_suffix(".key")
                if not key.exists():
                    raise CertificateError(f"{crt} has no key beside it ({key.name})")
                pairs.append((crt, key))
        if not pairs:
            raise CertificateError("no TLS certificate configured")
        return pairs


class ServerCertificates:
    """The current certificates and the context new handshakes start with."""

    def __init__(self, files: TlsFiles, domains: list[str], default_domain: str) -> None:
        self.files = files
        self.domains = domains
        self.default_domain = default_domain
        self.certificates, self._context = self._load()

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    def reload(self) -> None:
        """Load the files again; on any error the current certificates stay."""
        self.certificates, self._context = self._load()

    def _load(self) -> tuple[list[Certificate], ssl.SSLContext]:
        certificates = []
        pairs = self.files.pairs()
        for cert, key in pairs:
            loaded = load_certificate(cert, key)
            if not loaded.dns_names and not loaded.ip_addresses:
                log.warning("%s names no host (no subjectAltName): not used", cert)
                continue
            certificates.append(loaded)
        if not certificates:
            raise CertificateError("no usable TLS certificate: none names a host")
        by_name: dict[str, ssl.SSLContext] = {}
        uncovered = []
        for domain in self.domains:
            # Exact names first, then wildcards, in the order the files were given.
            covering = [c for c in certificates if domain in c.dns_names] or [
                c for c in certificates if c.covers(domain)
            ]
            if covering:
                by_name[domain] = covering[0].context
            else:
                uncovered.append(domain)
        if uncovered:
            raise CertificateError(
                f"no TLS certificate covers {', '.join(uncovered)}: give certificates whose "
                "subjectAltName names every configured domain (see `moorage tls init`)"
            )
        for directory in sorted({key.parent for _, key in pairs}):
            if (directory / "ca.key").exists():
                # An older `moorage tls init` kept the CA's key here.
                log.warning(
                    "a CA key lies beside the server's key (%s): the server never needs it, "
                    "and whoever reads this directory can impersonate any name the CA may "
                    "sign; run `moorage tls init` again to move it to a directory of its own",
                    directory / "ca.key",
                )
        now = datetime.now(UTC)
        for certificate in certificates:
            if certificate.not_after < now:
                log.error("%s expired on %s", certificate.source, certificate.not_after)
            elif certificate.not_after < now + _SOON:
                log.warning("%s expires on %s", certificate.source, certificate.not_after)
        # No SNI (clients that dial an address) or an unknown name: the single
        # certificate if one was given, else the global registry's.
        default = (
            certificates[0].context
            if self.files.cert is not None
            else by_name.get(self.default_domain, certificates[0].context)
        )
        if len(certificates) == 1:
            return certificates, default

        def choose(
            connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
        ) -> None:
            if server_name:
                chosen = by_name.get(server_name.lower())
                if chosen is not None:
                    connection.context = chosen

        # Every load makes new contexts, so setting the callback here never
        # changes one that open connections use.
        default.sni_callback = choose
        return certificates, default


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
