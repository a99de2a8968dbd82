"""Content digests as the OCI image spec defines them, limited to the
algorithms a registry must verify (sha256, sha512)."""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple, Protocol

HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")


class DigestError(ValueError):
    """A digest string that is malformed or uses an algorithm we cannot verify."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...


class Digest(NamedTuple):
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_digest(value: str) -> Digest:
    if len(value) > 256 or not _GRAMMAR.match(value):
        raise DigestError(f"invalid digest {value[:80]!r}")
    algorithm, _, hex_ = value.partition(":")
    expected = HEX_LENGTHS.get(algorithm)
    if expected is None:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}", unsupported=True)
    if len(hex_) != expected or any(c not in "0123456789abcdef" for c in hex_):
        raise DigestError(f"invalid {algorithm} digest {value[:80]!r}")
    return Digest(algorithm, hex_)


def new_hasher(algorithm: str = "sha256") -> Hasher:
    if algorithm not in HEX_LENGTHS:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}", unsupported=True)
    return hashlib.new(algorithm)


def digest_bytes(data: bytes, algorithm: str = "sha256") -> Digest:
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
