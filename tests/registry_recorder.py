"""An attacker stand-in for tests: a loopback HTTP or HTTPS server that answers
as a private registry would (a Basic or Bearer challenge, a token service) and
records every request it parsed, with its Authorization header, so a test can
prove which credentials reached it and which did not. It is a fake on purpose:
a hostile or misconfigured registry is the fault under test."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TOKEN = "recorder-bearer-token"


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA: (cert, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "recorder")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "recorder.crt", directory / "recorder.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Recorder:
    mode: str = "basic"  # "basic"; "bearer" with a token service at ``realm``; "redirect"
    realm: str | None = None  # default: /token on this server
    users: dict[str, str] = field(default_factory=lambda: {"robot": "robot-password"})
    tls: tuple[Path, Path] | None = None
    seen: list[Seen] = field(default_factory=list)

    def start(self) -> Recorder:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _basic_ok(self) -> bool:
                header = self.headers.get("Authorization") or ""
                if not header.startswith("Basic "):
                    return False
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                return recorder.users.get(user) == password

            def _answer(self) -> None:
                recorder.seen.append(
                    Seen(self.command, self.path, self.headers.get("Authorization"))
                )
                if recorder.mode == "redirect":  # everything to ``realm``, as a hostile host would
                    self._reply(307, {"Location": f"{recorder.realm}{self.path}"})
                    return
                if self.path.startswith("/token"):
                    if self._basic_ok():
                        body = f'{{"token": "{TOKEN}"}}'.encode()
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                    self._reply(401)
                    return
                authorized = (
                    self._basic_ok()
                    if recorder.mode == "basic"
                    else self.headers.get("Authorization") == f"Bearer {TOKEN}"
                )
                if authorized and "/manifests/" in self.path:
                    self._reply(200, {"Docker-Content-Digest": "sha256:" + "0" * 64})
                elif authorized:
                    self._reply(200)
                elif recorder.mode == "basic":
                    self._reply(401, {"WWW-Authenticate": 'Basic realm="recorder"'})
                else:
                    realm = recorder.realm or f"{recorder.url}/token"
                    self._reply(
                        401,
                        {"WWW-Authenticate": f'Bearer realm="{realm}",service="recorder"'},
                    )

            def _reply(self, status: int, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
