"""Rotating ES256 signing keys, kept as PEM files in the data directory and
published as a JWKS.

Every process loads the keys from disk, signs with the newest and verifies
with any it knows; an unknown key ID triggers one reload, so processes that
share a data directory pick up each other's rotations."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class SigningKey:
    kid: str
    created: float
    private: ec.EllipticCurvePrivateKey

    @property
    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(
            jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key())
        )
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}


def _kid(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:32]


class KeyRing:
    def __init__(self, directory: Path, rotate_after: float, retain: float) -> None:
        self.directory = directory
        self.rotate_after = rotate_after
        self.retain = retain  # keep old keys this long after they stop signing
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._keys: dict[str, SigningKey] = {}
        self.reload()
        self.current()

    def reload(self) -> None:
        keys = {}
        for path in self.directory.glob("*.pem"):
            created_text, _, _ = path.stem.partition("-")
            try:
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, OSError):
                continue
            if isinstance(private, ec.EllipticCurvePrivateKey):
                key = SigningKey(_kid(private), float(created_text), private)
                keys[key.kid] = key
        self._keys = keys

    def _create(self) -> SigningKey:
        private = ec.generate_private_key(ec.SECP256R1())
        created = time.time()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        kid = _kid(private)
        path = self.directory / f"{int(created)}-{kid}.pem"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        key = SigningKey(kid, float(int(created)), private)
        self._keys[kid] = key
        return key

    def current(self) -> SigningKey:
        """The signing key, rotated when it is older than ``rotate_after``."""
        newest = max(self._keys.values(), key=lambda k: k.created, default=None)
        if newest is None or time.time() - newest.created > self.rotate_after:
            newest = self._create()
            self._retire()
        return newest

    def _retire(self) -> None:
        newest = max(k.created for k in self._keys.values())
        for key in list(self._keys.values()):
            if key.created < newest and time.time() - key.created > self.rotate_after + self.retain:
                for path in self.directory.glob(f"*-{key.kid}.pem"):
                    path.unlink(missing_ok=True)
                del self._keys[key.kid]

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        key = self._keys.get(kid)
        if key is None:
            self.reload()
            key = self._keys.get(kid)
        return key.private.public_key() if key else None

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [k.public_jwk for k in sorted(self._keys.values(), key=lambda k: -k.created)]
        }
