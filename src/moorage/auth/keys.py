"""Rotating ES256 signing keys, shared by every process and replica through
the database (private keys sealed under the server secret), and published
as a JWKS.

Each process keeps the keys in memory, signs with the newest and verifies
with any it knows. Rotation is coordinated: a process whose newest key is
due asks the store to rotate, which under one lock creates a key only if
no other process did meanwhile, so one rotation makes one key. Others hear
of it on the change feed (topic ``keys``) and reload; a token whose key
they have not heard of yet (an unknown ``kid``) makes them look that one
key up. The look-ups block: on the event loop, ask ``knows(kid)`` first
and run ``fetch(kid)`` in a worker thread when it says no."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from moorage.iam.secrets import SecretKeeper
from moorage.metadata.changes import KEYS_TOPIC
from moorage.metadata.shared_store import SigningKeyStore, StoredKey

log = logging.getLogger("moorage.auth")
# Key ids looked up and not found, remembered so that garbage ids cost one
# look-up each; a real key's id cannot be guessed before the key exists.
_UNKNOWN_LIMIT = 10_000


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


def _der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class KeyRing:
    def __init__(
        self,
        store: SigningKeyStore,
        keeper: SecretKeeper,
        rotate_after: float,
        retain: float,
    ) -> None:
        self.store = store
        self.keeper = keeper
        self.rotate_after = rotate_after
        self.retain = retain  # keep old keys this long after they stop signing
        self._keys: dict[str, SigningKey] = {}
        self._unknown: set[str] = set()
        self._lock = threading.Lock()
        self.reload()
        self.current()

    # -- loading ---------------------------------------------------------------

    def _open(self, stored: StoredKey) -> SigningKey | None:
        try:
            der = self.keeper.unseal_signing_key(stored.kid, stored.sealed)
            private = serialization.load_der_private_key(der, password=None)
        except Exception:  # sealed under another secret, or damaged
            log.error("cannot open signing key %s: not sealed under this server secret", stored.kid)
            return None
        if not isinstance(private, ec.EllipticCurvePrivateKey) or _kid(private) != stored.kid:
            return None
        return SigningKey(stored.kid, stored.created, private)

    def reload(self) -> None:
        """Every key from the store (blocks)."""
        keys = {}
        for stored in self.store.all():
            key = self._open(stored)
            if key is not None:
                keys[key.kid] = key
        with self._lock:
            self._keys = keys
            self._unknown.clear()

    def changed(self, topic: str | None) -> None:
        """A change feed subscriber: another process rotated or retired keys."""
        if topic is None or topic == KEYS_TOPIC:
            self.reload()

    def seal(self, private: ec.EllipticCurvePrivateKey, created: float) -> StoredKey:
        kid = _kid(private)
        return StoredKey(kid, created, self.keeper.seal_signing_key(kid, _der(private)))

    def import_directory(self, directory: Path) -> int:
        """Keys an older version kept as PEM files in the data directory, so
        tokens they signed stay valid after the upgrade."""
        found = []
        for path in directory.glob("*.pem"):
            created_text, _, _ = path.stem.partition("-")
            try:
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
                created = float(created_text)
            except (ValueError, OSError):
                continue
            if isinstance(private, ec.EllipticCurvePrivateKey):
                found.append(self.seal(private, created))
        added = self.store.import_keys(found) if found else 0
        if added:
            self.reload()
        return added

    # -- signing ---------------------------------------------------------------

    def _newest(self) -> SigningKey | None:
        return max(self._keys.values(), key=lambda k: k.created, default=None)

    def current(self) -> SigningKey:
        """The signing key, rotated when it is older than ``rotate_after`` (may
        block on the store)."""
        newest = self._newest()
        if newest is not None and time.time() - newest.created <= self.rotate_after:
            return newest

        def make() -> StoredKey:
            # Dated to the second, as the keys of earlier versions were.
            return self.seal(ec.generate_private_key(ec.SECP256R1()), float(int(time.time())))

        self.store.rotate(time.time(), self.rotate_after, self.retain, make)
        self.reload()
        newest = self._newest()
        if newest is None:
            raise RuntimeError("no signing key could be made or opened")
        return newest

    # -- verifying -------------------------------------------------------------

    def knows(self, kid: str) -> bool:
        """Whether ``kid`` can be answered without the store: known, or looked up
        before and not found."""
        return kid in self._keys or kid in self._unknown

    def cached_public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        key = self._keys.get(kid)
        return key.private.public_key() if key else None

    def fetch(self, kid: str) -> None:
        """Look one key up in the store (blocks); a miss is remembered."""
        stored = self.store.find(kid)
        key = self._open(stored) if stored is not None else None
        with self._lock:
            if key is not None:
                self._keys[kid] = key
            else:
                if len(self._unknown) >= _UNKNOWN_LIMIT:
                    self._unknown.clear()
                self._unknown.add(kid)

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        """The public key of ``kid``, looked up in the store if needed (blocks)."""
        if not self.knows(kid):
            self.fetch(kid)
        return self.cached_public_key(kid)

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [k.public_jwk for k in sorted(self._keys.values(), key=lambda k: -k.created)]
        }
