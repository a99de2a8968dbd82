"""cosign signatures: reading them out of what a registry stores, and checking
them against public keys.

cosign stores a key-pair signature three ways: as a manifest tagged
``sha256-<hex>.sig`` whose layers are simple-signing payloads with the signature
in an annotation; as the same manifest pushed as an OCI 1.1 referrer (artifact
type ``application/vnd.dev.cosign.artifact.sig.v1+json``); or as a sigstore
bundle referrer whose DSSE envelope signs an in-toto statement. Each names the
manifest digest it vouches for inside what is signed, so a signature copied to
another image, or an image changed after signing, does not verify."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
MAX_PAYLOAD = 1 << 20

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


class FormatError(ValueError):
    """Stored bytes that are not a cosign signature."""


@dataclass(frozen=True)
class CosignSignature:
    form: str  # "tag", "referrer" or "bundle"
    signed: bytes  # exactly the bytes the signature covers
    signature: bytes
    payload: bytes  # what vouches for the image: simple signing JSON or in-toto statement
    certificate: x509.Certificate | None = None
    key_hint: str | None = None  # a bundle's: base64 SHA-256 of the key

    @property
    def manifest_digest(self) -> str | None:
        """The manifest digest the signed payload names."""
        try:
            document = json.loads(self.payload)
        except ValueError:
            return None
        if not isinstance(document, dict):
            return None
        if self.form == "bundle":
            for subject in document.get("subject") or []:
                value = (subject or {}).get("digest", {}).get("sha256")
                if isinstance(value, str):
                    return f"sha256:{value}"
            return None
        critical = document.get("critical") or {}
        value = (critical.get("image") or {}).get("docker-manifest-digest")
        return value if isinstance(value, str) else None

    @property
    def docker_reference(self) -> str | None:
        try:
            value = json.loads(self.payload)["critical"]["identity"]["docker-reference"]
        except (ValueError, KeyError, TypeError):
            return None
        return value if isinstance(value, str) else None

    def identity(self) -> str:
        """Who signed, as far as the signature itself says."""
        if self.certificate is not None:
            return certificate_identity(self.certificate)
        if self.key_hint:
            return f"key sha256:{base64.b64decode(self.key_hint).hex()}"
        return "a key (not named in the signature)"


def signature_tag(manifest_digest: str) -> str:
    """The tag cosign gives the signatures of a manifest: ``sha256-<hex>.sig``."""
    algorithm, _, hex_ = manifest_digest.partition(":")
    return f"{algorithm}-{hex_}.sig"


def load_public_key(pem: bytes) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise FormatError("not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise FormatError(f"{type(key).__name__} keys are not used by cosign")
    return key


def key_id(key: PublicKey) -> str:
    """``sha256:<hex>`` of the key's DER form: what a bundle's hint encodes."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def certificate_identity(certificate: x509.Certificate) -> str:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = [str(v) for v in names.get_values_for_type(x509.RFC822Name)]
        found += [str(v) for v in names.get_values_for_type(x509.UniformResourceIdentifier)]
        if found:
            return "certificate " + ", ".join(found)
    except x509.ExtensionNotFound:
        pass
    return "certificate " + certificate.subject.rfc4514_string()


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"{what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{what} is not base64") from exc


def from_manifest(
    manifest: dict[str, Any], form: str, read_blob: Callable[[str], bytes | None]
) -> list[CosignSignature]:
    """The signatures of a ``.sig`` manifest (``form`` "tag") or of a cosign
    referrer ("referrer" or, for a sigstore bundle, "bundle")."""
    found = []
    for layer in manifest.get("layers") or []:
        if not isinstance(layer, dict):
            continue
        media_type, digest = layer.get("mediaType"), layer.get("digest")
        if not isinstance(digest, str) or int(layer.get("size") or 0) > MAX_PAYLOAD:
            continue
        if media_type == SIMPLE_SIGNING:
            annotations = layer.get("annotations") or {}
            payload = read_blob(digest)
            if payload is None or SIGNATURE_ANNOTATION not in annotations:
                continue
            certificate = None
            if CERTIFICATE_ANNOTATION in annotations:
                try:
                    certificate = x509.load_pem_x509_certificate(
                        str(annotations[CERTIFICATE_ANNOTATION]).encode()
                    )
                except ValueError:
                    certificate = None
            found.append(
                CosignSignature(
                    form,
                    payload,
                    _b64(annotations[SIGNATURE_ANNOTATION], "the signature annotation"),
                    payload,
                    certificate,
                )
            )
        elif media_type == BUNDLE:
            body = read_blob(digest)
            if body is not None:
                found.append(from_bundle(body))
    return found


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def from_bundle(body: bytes) -> CosignSignature:
    try:
        bundle = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FormatError("the bundle is not JSON") from exc
    if not isinstance(bundle, dict):
        raise FormatError("the bundle is not a JSON object")
    material = bundle.get("verificationMaterial") or {}
    hint = (material.get("publicKey") or {}).get("hint")
    certificate = None
    raw_certificate = (material.get("certificate") or {}).get("rawBytes")
    if raw_certificate:
        try:
            certificate = x509.load_der_x509_certificate(_b64(raw_certificate, "certificate"))
        except ValueError:
            certificate = None
    envelope = bundle.get("dsseEnvelope")
    if isinstance(envelope, dict):
        payload = _b64(envelope.get("payload"), "the DSSE payload")
        payload_type = str(envelope.get("payloadType") or "")
        signatures = envelope.get("signatures") or [{}]
        signature = _b64((signatures[0] or {}).get("sig"), "the DSSE signature")
        return CosignSignature(
            "bundle", pae(payload_type, payload), signature, payload, certificate, hint
        )
    raise FormatError("only DSSE bundles are understood")


def verify(signature: CosignSignature, key: PublicKey) -> bool:
    """Whether ``key`` made ``signature``. (A certificate's key is the caller's
    business: keyless signing needs a trust root, which this module does not keep.)"""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            algorithm = hashes.SHA384() if key.curve.key_size == 384 else hashes.SHA256()
            key.verify(signature.signature, signature.signed, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature.signature, signature.signed)
        else:
            key.verify(signature.signature, signature.signed, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True
