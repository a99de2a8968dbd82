"""Red Hat simple signing: an OpenPGP-signed JSON document naming an image's
manifest digest and reference, as skopeo and podman write with ``--sign-by``
and store through a registry's signature extension.

Reading one (who claims to have signed what) is a walk over a handful of
OpenPGP packets; checking one is gpg's work, so it runs the real ``gpg`` with
a keyring of its own for each check."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import subprocess
import tempfile
import zlib
from dataclasses import dataclass

MAX_SIGNATURE = 64 * 1024
MAX_PAYLOAD = 1 << 20
_COMPRESSED, _ONE_PASS, _SIGNATURE, _LITERAL, _PUBLIC_KEY = 8, 4, 2, 11, 6


class FormatError(ValueError):
    """Bytes that are not an OpenPGP signed message or key."""


@dataclass(frozen=True)
class SimpleSignature:
    payload: bytes  # the signed JSON document
    key_ids: tuple[str, ...]  # issuer key IDs and fingerprints the packets name (hex, upper)

    @property
    def manifest_digest(self) -> str | None:
        try:
            value = json.loads(self.payload)["critical"]["image"]["docker-manifest-digest"]
        except (ValueError, KeyError, TypeError, RecursionError):
            return None
        return value if isinstance(value, str) else None

    @property
    def docker_reference(self) -> str | None:
        try:
            value = json.loads(self.payload)["critical"]["identity"]["docker-reference"]
        except (ValueError, KeyError, TypeError, RecursionError):
            return None
        return value if isinstance(value, str) else None

    def identity(self) -> str:
        fingerprints = [k for k in self.key_ids if len(k) == 40]
        return "GPG key " + (fingerprints or list(self.key_ids) or ["(none named)"])[0]


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, body) of each packet, old and new formats, partial lengths included."""
    packets, at = [], 0
    while at < len(data):
        ctb = data[at]
        at += 1
        if not ctb & 0x80:
            raise FormatError("not an OpenPGP packet")
        if ctb & 0x40:  # new format
            tag, body = ctb & 0x3F, b""
            while True:
                if at >= len(data):
                    raise FormatError("truncated packet")
                first = data[at]
                if first < 192:
                    length, at = first, at + 1
                elif first < 224:
                    if at + 1 >= len(data):
                        raise FormatError("truncated packet")
                    length, at = ((first - 192) << 8) + data[at + 1] + 192, at + 2
                elif first == 255:
                    length, at = int.from_bytes(data[at + 1 : at + 5], "big"), at + 5
                else:  # a partial body: a chunk, then more length octets
                    chunk = 1 << (first & 0x1F)
                    body += data[at + 1 : at + 1 + chunk]
                    at += 1 + chunk
                    continue
                body += data[at : at + length]
                at += length
                break
        else:
            tag, kind = (ctb >> 2) & 0x0F, ctb & 0x03
            if kind == 3:  # indeterminate: to the end
                length = len(data) - at
            else:
                size = (1, 2, 4)[kind]
                length, at = int.from_bytes(data[at : at + size], "big"), at + size
            body = data[at : at + length]
            at += length
        if len(body) != length and tag != _COMPRESSED:
            raise FormatError("truncated packet")
        packets.append((tag, body))
    return packets


def _subpacket_issuers(area: bytes) -> list[str]:
    found, at = [], 0
    while at < len(area):
        first = area[at]
        if first < 192:
            length, at = first, at + 1
        elif first < 255:
            length, at = ((first - 192) << 8) + area[at + 1] + 192, at + 2
        else:
            length, at = int.from_bytes(area[at + 1 : at + 5], "big"), at + 5
        kind, value = area[at] & 0x7F, area[at + 1 : at + length]
        if kind == 16:  # issuer key ID
            found.append(value.hex().upper())
        elif kind == 33 and value:  # issuer fingerprint, after a version octet
            found.append(value[1:].hex().upper())
        at += length
    return found


def read(signature: bytes) -> SimpleSignature:
    """The payload of a signed message and the keys it says signed it; checks nothing."""
    if len(signature) > MAX_SIGNATURE:
        raise FormatError("signature larger than 64 KiB")
    try:
        packets = _packets(signature)
        if packets and packets[0][0] == _COMPRESSED:
            algorithm, stream = packets[0][1][:1], packets[0][1][1:]
            if algorithm == b"\x01":
                inflated = zlib.decompressobj(-15).decompress(stream, MAX_PAYLOAD + 4096)
            elif algorithm == b"\x02":
                inflated = zlib.decompressobj().decompress(stream, MAX_PAYLOAD + 4096)
            elif algorithm == b"\x00":
                inflated = stream
            else:
                raise FormatError("unsupported OpenPGP compression")
            packets = _packets(inflated)
    except (zlib.error, IndexError) as exc:
        raise FormatError("not an OpenPGP signed message") from exc
    payload, keys = None, []
    for tag, body in packets:
        if tag == _ONE_PASS and len(body) >= 12:
            keys.append(body[4:12].hex().upper())
        elif tag == _LITERAL and len(body) >= 2:
            name_length = body[1]
            payload = body[2 + name_length + 4 :]
        elif tag == _SIGNATURE and body[:1] == b"\x04" and len(body) >= 6:
            hashed = int.from_bytes(body[4:6], "big")
            keys += _subpacket_issuers(body[6 : 6 + hashed])
            rest = body[6 + hashed :]
            keys += _subpacket_issuers(rest[2 : 2 + int.from_bytes(rest[:2], "big")])
    if payload is None:
        raise FormatError("no signed document in the message")
    return SimpleSignature(payload, tuple(dict.fromkeys(keys)))


def dearmor(text: str) -> bytes:
    """The binary form of an ASCII-armored OpenPGP block (or the input, if binary)."""
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("-----BEGIN PGP"):
        raise FormatError("not an ASCII-armored OpenPGP block")
    body, started = [], False
    for line in lines[1:]:
        if line.startswith("-----END PGP"):
            break
        if not started:
            started = line.strip() == ""
            if not started and ":" not in line:  # no headers at all
                started = True
                body.append(line)
            continue
        if line.startswith("="):
            break  # the checksum line
        body.append(line.strip())
    try:
        return base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError("the armored block is not base64") from exc


def fingerprints(public_keys: bytes) -> list[str]:
    """The v4 fingerprints of the (sub)keys in a binary OpenPGP key block."""
    found = []
    for tag, body in _packets(public_keys):
        if tag in (_PUBLIC_KEY, 14) and body[:1] == b"\x04":
            framed = b"\x99" + len(body).to_bytes(2, "big") + body
            found.append(hashlib.sha1(framed, usedforsecurity=False).hexdigest().upper())
    return found


_VALIDSIG = re.compile(r"^\[GNUPG:\] VALIDSIG (?P<fpr>[0-9A-F]{40}) .* (?P<primary>[0-9A-F]{40})$")


def verify(signature: bytes, armored_keys: list[str], timeout: float = 10) -> tuple[bytes, str]:
    """Check a signed message against the given public keys with gpg; returns the
    signed document and the fingerprint of the primary key that signed it, or
    raises FormatError saying why not."""
    if len(signature) > MAX_SIGNATURE:
        raise FormatError("signature larger than 64 KiB")
    with tempfile.TemporaryDirectory(prefix="moorage-gpg-") as home:
        os.chmod(home, 0o700)
        env = {**os.environ, "GNUPGHOME": home}
        keys = "\n".join(armored_keys).encode()
        imported = subprocess.run(
            ["gpg", "--batch", "--quiet", "--import"],
            input=keys,
            capture_output=True,
            env=env,
            timeout=timeout,
        )
        if imported.returncode != 0 and b"imported" not in imported.stderr:
            raise FormatError("the public keys could not be read")
        checked = subprocess.run(
            [
                "gpg",
                "--batch",
                "--quiet",
                "--trust-model",
                "always",
                "--status-fd",
                "2",
                "--decrypt",
            ],
            input=signature,
            capture_output=True,
            env=env,
            timeout=timeout,
        )
    for line in checked.stderr.decode(errors="replace").splitlines():
        match = _VALIDSIG.match(line.strip())
        if match and checked.returncode == 0:
            return checked.stdout, match.group("primary")
    if b"NO_PUBKEY" in checked.stderr:
        raise FormatError("signed by a key that is not trusted")
    if b"BADSIG" in checked.stderr:
        raise FormatError("the signature does not match the signed document")
    raise FormatError("not a valid OpenPGP signature")
