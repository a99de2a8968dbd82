"""cosign signatures: reading them out of what a registry stores, and checking
them against public keys.

cosign stores a key-pair signature three ways: as a manifest tagged
``sha256-<hex>.sig`` whose layers are simple-signing payloads with the signature
in an annotation; as the same manifest pushed as an OCI 1.1 referrer (artifact
type ``application/vnd.dev.cosign.artifact.sig.v1+json``); or as a sigstore
bundle referrer whose DSSE envelope signs an in-toto statement. Each names the
manifest digest it vouches for inside what is signed, so a signature copied to
another image, or an image changed after signing, does not verify.

An attestation (``cosign attest``) is a DSSE envelope too: in a layer of the
``sha256-<hex>.att`` tag, in an in-toto referrer, or in a bundle referrer, the
same artifact type a bundle signature has. Only what is signed tells them
apart: a bundle is a signature when its envelope carries an in-toto statement
(payload type ``application/vnd.in-toto+json``) whose predicate type is
cosign's signature predicate; any other in-toto statement is an attestation of
its predicate type, and a bundle of any other payload type is neither. (cosign
2.6.5's ``cosign verify`` takes every verified bundle as a signature whatever
its predicate type; this module is stricter on purpose: an attestation saying
``"result": "FAILED"`` is not a signature.) The annotations beside a
referrer (``dev.sigstore.bundle.predicateType``) are not signed: they may
only narrow what is fetched, never decide."""

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
DSSE = "application/vnd.dsse.envelope.v1+json"  # an attestation layer (.att tag, in-toto referrer)
INTOTO = "application/vnd.in-toto+json"  # DSSE payload type; also the in-toto referrers' type
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"  # what `cosign sign` puts in a bundle
BUNDLE_PREDICATE_ANNOTATION = "dev.sigstore.bundle.predicateType"  # unsigned: a filter only
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
MAX_PAYLOAD = 1 << 20

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


class FormatError(ValueError):
    """Stored bytes that are not a cosign signature."""


@dataclass(frozen=True)
class CosignSignature:
    """A signed cosign document: a signature proper or, for the DSSE forms, maybe
    an attestation (see ``is_signature`` and ``predicate_type``)."""

    form: str  # "tag", "referrer", "bundle" or "dsse" (an .att layer or in-toto referrer)
    signed: bytes  # exactly the bytes the signature covers
    signature: bytes
    payload: bytes  # what vouches for the image: simple signing JSON or in-toto statement
    certificate: x509.Certificate | None = None
    key_hint: str | None = None  # a bundle's: base64 SHA-256 of the key
    payload_type: str = ""  # the DSSE forms': the envelope's payloadType

    @property
    def _document(self) -> dict[str, Any] | None:
        try:
            document = json.loads(self.payload)
        except (ValueError, RecursionError):
            return None
        return document if isinstance(document, dict) else None

    @property
    def dsse(self) -> bool:
        return self.form in ("bundle", "dsse")

    @property
    def statement(self) -> dict[str, Any] | None:
        """The in-toto statement a DSSE form signs; None for anything else."""
        return self._document if self.dsse and self.payload_type == INTOTO else None

    @property
    def predicate_type(self) -> str | None:
        value = (self.statement or {}).get("predicateType")
        return value if isinstance(value, str) else None

    @property
    def is_signature(self) -> bool:
        """What ``cosign sign`` makes: a simple-signing payload, or a bundle whose
        in-toto statement has cosign's signature predicate."""
        return not self.dsse or (self.form == "bundle" and self.predicate_type == SIGN_PREDICATE)

    @property
    def is_attestation(self) -> bool:
        """What ``cosign attest`` makes: an in-toto statement of another predicate."""
        return self.predicate_type is not None and self.predicate_type != SIGN_PREDICATE

    def _subjects(self) -> list[str]:
        if self.dsse:
            found = []
            for subject in (self.statement or {}).get("subject") or []:
                digests = subject.get("digest") if isinstance(subject, dict) else None
                for algorithm, value in (digests if isinstance(digests, dict) else {}).items():
                    if isinstance(value, str):
                        found.append(f"{algorithm}:{value}")
            return found
        critical = (self._document or {}).get("critical") or {}
        value = (critical.get("image") or {}).get("docker-manifest-digest")
        return [value] if isinstance(value, str) else []

    @property
    def manifest_digest(self) -> str | None:
        """The (first) manifest digest the signed payload names."""
        subjects = self._subjects()
        return subjects[0] if subjects else None

    def names(self, digest: str) -> bool:
        """Whether the signed payload vouches for ``digest`` (an in-toto statement
        may name several subjects; one of them is enough, as for cosign)."""
        return digest in self._subjects()

    @property
    def docker_reference(self) -> str | None:
        try:
            value = json.loads(self.payload)["critical"]["identity"]["docker-reference"]
        except (ValueError, KeyError, TypeError):
            return None
        return value if isinstance(value, str) else None

    @property
    def named_key(self) -> str | None:
        """``sha256:<hex>`` of the key a bundle names, when it names one readably."""
        if not self.key_hint:
            return None
        try:
            raw = base64.b64decode(self.key_hint, validate=True)
        except (binascii.Error, ValueError):
            return None
        return f"sha256:{raw.hex()}" if len(raw) == 32 else None

    def identity(self) -> str:
        """Who signed, as far as the signature itself says."""
        if self.certificate is not None:
            return certificate_identity(self.certificate)
        if self.named_key:
            return f"key {self.named_key}"
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
    """The signed documents of a ``.sig`` manifest (``form`` "tag"), of a cosign
    referrer ("referrer" or, for a sigstore bundle, "bundle"), or of an ``.att``
    manifest or in-toto referrer ("dsse"). A layer that is not a readable
    document is skipped on its own: anyone who may append a layer to a
    ``.sig`` manifest must not be able to spoil the layers beside it."""
    found = []
    layers = manifest.get("layers")
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict):
            continue
        try:
            document = _from_layer(layer, form, read_blob)
        except (FormatError, ValueError, TypeError, AttributeError):
            continue
        if document is not None:
            found.append(document)
    return found


def _from_layer(
    layer: dict[str, Any], form: str, read_blob: Callable[[str], bytes | None]
) -> CosignSignature | None:
    media_type, digest = layer.get("mediaType"), layer.get("digest")
    if not isinstance(digest, str) or int(layer.get("size") or 0) > MAX_PAYLOAD:
        return None
    if media_type == SIMPLE_SIGNING:
        annotations = layer.get("annotations") or {}
        if SIGNATURE_ANNOTATION not in annotations:
            return None
        payload = read_blob(digest)
        if payload is None:
            return None
        certificate = None
        if CERTIFICATE_ANNOTATION in annotations:
            try:
                certificate = x509.load_pem_x509_certificate(
                    str(annotations[CERTIFICATE_ANNOTATION]).encode()
                )
            except ValueError:
                certificate = None
        signature = _b64(annotations[SIGNATURE_ANNOTATION], "the signature annotation")
        return CosignSignature(form, payload, signature, payload, certificate)
    if media_type == BUNDLE:
        body = read_blob(digest)
        return from_bundle(body) if body is not None else None
    if media_type == DSSE:
        body = read_blob(digest)
        if body is None:
            return None
        return from_envelope(_json_object(body, "the DSSE envelope"), "dsse")
    return None


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{what} is not JSON") from exc
    if not isinstance(document, dict):
        raise FormatError(f"{what} is not a JSON object")
    return document


def from_envelope(
    envelope: dict[str, Any],
    form: str,
    certificate: x509.Certificate | None = None,
    hint: str | None = None,
) -> CosignSignature:
    """A DSSE envelope's signed statement (its first signature: cosign makes one)."""
    payload = _b64(envelope.get("payload"), "the DSSE payload")
    payload_type = str(envelope.get("payloadType") or "")
    signatures = envelope.get("signatures")
    first = signatures[0] if isinstance(signatures, list) and signatures else {}
    signature = _b64(first.get("sig") if isinstance(first, dict) else None, "the DSSE signature")
    return CosignSignature(
        form, pae(payload_type, payload), signature, payload, certificate, hint, payload_type
    )


def from_bundle(body: bytes) -> CosignSignature:
    bundle = _json_object(body, "the bundle")
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
        return from_envelope(envelope, "bundle", certificate, hint)
    raise FormatError("only DSSE bundles are understood")


def signature_tags(manifest_digest: str) -> tuple[str, str]:
    """The tags cosign keeps signed documents of a manifest under: ``.sig``, ``.att``."""
    base = signature_tag(manifest_digest)[: -len(".sig")]
    return f"{base}.sig", f"{base}.att"


def is_signature_tag(tag: str) -> bool:
    """``<alg>-<hex>.sig`` or ``.att``: a tag whose layers are signed documents."""
    stem, dot, suffix = tag.rpartition(".")
    algorithm, dash, hex_ = stem.partition("-")
    return (
        bool(dot and dash)
        and suffix in ("sig", "att")
        and algorithm in ("sha256", "sha384", "sha512")
        and len(hex_) >= 64
        and all(c in "0123456789abcdef" for c in hex_)
    )


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
