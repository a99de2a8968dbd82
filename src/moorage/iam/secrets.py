"""Secrets at rest: API keys and registry tokens are kept as keyed HMACs (fast
to look up, useless if the database leaks without the key file), passwords as
scrypt hashes, and registry token values sealed with AES-GCM."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from moorage.privatefile import write_private

PRESERVE_NOTICE = "Please preserve the API key! It cannot be retrieved after it's created."
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def new_secret() -> str:
    """A fresh API key or registry token value (264 random bits)."""
    return secrets.token_urlsafe(33)


def load_or_create_key(path: Path, size: int = 32) -> bytes:
    """A server key file, created once with mode 0600 and an atomic rename."""
    try:
        data = path.read_bytes()
        if len(data) == size:
            return data
    except FileNotFoundError:
        pass
    with contextlib.suppress(FileExistsError):  # never overwrite a key another process made
        write_private(path, secrets.token_bytes(size), replace=False)
    return path.read_bytes()


class SecretError(ValueError):
    """The server secret is missing, malformed, or not this installation's."""


MIN_SECRET_BYTES = 32


def decode_secret(raw: bytes, source: str) -> bytes:
    """A server secret as configured: 32 raw bytes (the file Moorage writes in
    its data directory) or base64 text of at least 32 bytes (what
    ``openssl rand -base64 32`` prints, and what a Kubernetes Secret holds)."""
    if len(raw) == MIN_SECRET_BYTES:
        return raw
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except (ValueError, binascii.Error):
        decoded = b""
    if len(decoded) < MIN_SECRET_BYTES:
        raise SecretError(
            f"the server secret in {source} must be {MIN_SECRET_BYTES} bytes, or base64 of at "
            f"least {MIN_SECRET_BYTES} bytes (openssl rand -base64 32)"
        )
    return decoded


def configured_secret(secret_file: str | None, secret_value: str | None) -> bytes | None:
    """The server secret from configuration (a file, or the value itself), if given."""
    if secret_value:
        return decode_secret(secret_value.encode(), "MOORAGE_SECRET")
    if secret_file:
        try:
            raw = Path(secret_file).read_bytes()
        except OSError as exc:
            raise SecretError(f"cannot read the server secret file {secret_file}: {exc}") from exc
        return decode_secret(raw, secret_file)
    return None


class SecretKeeper:
    def __init__(self, key: bytes) -> None:
        self._mac_key = hmac.new(key, b"moorage:hmac", hashlib.sha256).digest()
        self._seal_key = hmac.new(key, b"moorage:seal", hashlib.sha256).digest()
        self._signing_seal_key = hmac.new(key, b"moorage:signing-keys", hashlib.sha256).digest()
        self._check = hmac.new(key, b"moorage:secret-check", hashlib.sha256).hexdigest()

    @property
    def check_value(self) -> str:
        """Names this secret without revealing it: every replica of one
        installation must show the same value."""
        return self._check

    def seal_signing_key(self, kid: str, private_der: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        aad = b"signing-key:" + kid.encode()
        return nonce + AESGCM(self._signing_seal_key).encrypt(nonce, private_der, aad)

    def unseal_signing_key(self, kid: str, sealed: bytes) -> bytes:
        aad = b"signing-key:" + kid.encode()
        return AESGCM(self._signing_seal_key).decrypt(sealed[:12], sealed[12:], aad)

    def digest(self, value: str) -> str:
        return hmac.new(self._mac_key, value.encode(), hashlib.sha256).hexdigest()

    def seal(self, value: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(self._seal_key).encrypt(nonce, value.encode(), b"registry-token")

    def unseal(self, sealed: bytes) -> str:
        return AESGCM(self._seal_key).decrypt(sealed[:12], sealed[12:], b"registry-token").decode()


def new_salt() -> str:
    return base64.b64encode(secrets.token_bytes(16)).decode()


def derive(password: str, salt: str) -> bytes:
    """The scrypt of a password under a salt: the one expensive step of a check."""
    return hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32, **_SCRYPT)


def hash_password(password: str, salt: str | None = None) -> str:
    salt = salt or new_salt()
    return f"scrypt${salt}$" + base64.b64encode(derive(password, salt)).decode()


def matches(derived: bytes, salt: str, stored: str) -> bool:
    """Whether ``derive(password, salt)`` is the password ``stored`` holds, in
    constant time; False for a stored value of another salt or none at all."""
    try:
        scheme, stored_salt, hash_b64 = stored.split("$")
        expected = base64.b64decode(hash_b64)
    except ValueError:
        return False
    return scheme == "scrypt" and stored_salt == salt and hmac.compare_digest(derived, expected)


def verify_password(password: str, stored: str) -> bool:
    try:
        salt = stored.split("$")[1]
    except IndexError:
        return False
    return matches(derive(password, salt), salt, stored)
