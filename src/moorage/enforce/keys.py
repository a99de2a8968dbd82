"""Public keys kept in Kubernetes Secrets, as policies name them.

A GPG requirement (``simple``) reads the Secret's ``key`` item, an
ASCII-armored public key block (``gpg --export --armor``), as Portieris does;
every key in the block is trusted. A cosign requirement reads ``cosign.pub``
(what ``cosign generate-key-pair k8s://ns/name`` writes) or else ``key``: one or
more PEM public keys, any of which may sign."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from moorage.trust import cosign, simplesigning

_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)
MAX_KEY_BYTES = 256 * 1024


class KeyError_(ValueError):
    """A key Secret a requirement cannot use; the message says why."""


@dataclass(frozen=True)
class CosignKey:
    source: str  # "<namespace>/<secret>"
    id: str  # sha256:<hex> of the key's DER form
    key: cosign.PublicKey

    def describe(self) -> str:
        return f"cosign key {self.id} in secret {self.source}"


@dataclass(frozen=True)
class GpgKeys:
    source: str
    armored: str
    fingerprints: tuple[str, ...]  # of every key and subkey in the block

    def describe(self, fingerprint: str) -> str:
        return f"GPG key {fingerprint} in secret {self.source}"

    def names(self, key_ids: tuple[str, ...]) -> bool:
        """Whether a signature's issuer IDs (long IDs or fingerprints) name one of these keys."""
        return any(fpr.endswith(k) for k in key_ids for fpr in self.fingerprints if k)


def _item(data: dict[str, str] | None, names: tuple[str, ...], source: str) -> bytes:
    for name in names:
        value = (data or {}).get(name)
        if value:
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise KeyError_(f"secret {source}: {name} is not base64") from None
            if len(raw) > MAX_KEY_BYTES:
                raise KeyError_(f"secret {source}: {name} is larger than 256 KiB")
            return raw
    raise KeyError_(f"secret {source} has no {' or '.join(names)} item")


def cosign_keys(data: dict[str, str] | None, source: str) -> list[CosignKey]:
    raw = _item(data, ("cosign.pub", "key"), source)
    blocks = _PEM.findall(raw)
    if not blocks:
        raise KeyError_(f"secret {source}: no PEM public key (cosign.pub)")
    keys = []
    for block in blocks:
        try:
            key = cosign.load_public_key(block)
        except cosign.FormatError as exc:
            raise KeyError_(f"secret {source}: {exc}") from None
        keys.append(CosignKey(source, cosign.key_id(key), key))
    return keys


def gpg_keys(data: dict[str, str] | None, source: str) -> GpgKeys:
    raw = _item(data, ("key",), source)
    try:
        text = raw.decode("ascii")
        binary = simplesigning.dearmor(text)
        found = simplesigning.fingerprints(binary)
    except (UnicodeDecodeError, simplesigning.FormatError, IndexError):
        raise KeyError_(
            f"secret {source}: key is not an ASCII-armored GPG public key (gpg --export --armor)"
        ) from None
    if not found:
        raise KeyError_(f"secret {source}: the key block holds no public key")
    return GpgKeys(source, text, tuple(found))
