"""What a cosign document is, decided from what is signed: a signature
(simple signing, or a bundle of cosign's sign predicate), an attestation of
its predicate type, or neither; and what the webhook's reader may skip
before fetching. Pure functions over bundles signed here with a real key."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from moorage.enforce.registry import Wanted
from moorage.trust import cosign

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def _bundle(key: ec.EllipticCurvePrivateKey, statement: Any, payload_type: str) -> bytes:
    payload = json.dumps(statement).encode()
    signature = key.sign(cosign.pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    return json.dumps(
        {
            "mediaType": cosign.BUNDLE,
            "verificationMaterial": {"publicKey": {"hint": ""}},
            "dsseEnvelope": {
                "payload": base64.b64encode(payload).decode(),
                "payloadType": payload_type,
                "signatures": [{"sig": base64.b64encode(signature).decode()}],
            },
        }
    ).encode()


def _statement(predicate_type: str, *digests: str) -> dict[str, Any]:
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "x", "digest": {d.split(":")[0]: d.split(":")[1]}} for d in digests],
        "predicateType": predicate_type,
        "predicate": {"result": "FAILED"},
    }


def test_only_the_sign_predicate_in_an_in_toto_statement_makes_a_bundle_a_signature() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    signature = cosign.from_bundle(
        _bundle(key, _statement(cosign.SIGN_PREDICATE, DIGEST), cosign.INTOTO)
    )
    assert signature.is_signature and not signature.is_attestation
    assert signature.names(DIGEST) and cosign.verify(signature, public)

    failed = cosign.from_bundle(
        _bundle(key, _statement("https://example.com/r/v1", DIGEST), cosign.INTOTO)
    )
    assert not failed.is_signature and failed.is_attestation
    assert failed.predicate_type == "https://example.com/r/v1"
    assert cosign.verify(failed, public)  # verified, and still no signature

    # The sign predicate under another payload type is neither: it is no in-toto statement.
    odd = cosign.from_bundle(_bundle(key, _statement(cosign.SIGN_PREDICATE, DIGEST), "text/plain"))
    assert not odd.is_signature and not odd.is_attestation and not odd.names(DIGEST)


def test_a_statement_vouches_for_each_of_its_subjects_and_no_other() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    both = cosign.from_bundle(
        _bundle(key, _statement(cosign.SIGN_PREDICATE, OTHER, DIGEST), cosign.INTOTO)
    )
    assert both.names(DIGEST) and both.names(OTHER)
    assert not both.names("sha256:" + "ef" * 32)


def test_the_reader_skips_only_what_declares_itself_unwanted() -> None:
    signatures = Wanted(signatures=True)
    note = cosign.BUNDLE_PREDICATE_ANNOTATION
    assert signatures.may_hold(None) and signatures.may_hold({note: cosign.SIGN_PREDICATE})
    assert not signatures.may_hold({note: "https://example.com/r/v1"})
    assert not signatures.may_hold({}, "application/vnd.oci.image.layer.v1.tar")
    assert signatures.artifact_types() == [
        (cosign.SIGNATURE_ARTIFACT, "referrer"),
        (cosign.BUNDLE, "bundle"),
    ]
    attestations = Wanted(predicate_types=frozenset({"https://example.com/r/v1"}))
    assert attestations.may_hold({"predicateType": "https://example.com/r/v1"}, cosign.DSSE)
    assert not attestations.may_hold({}, cosign.SIMPLE_SIGNING)
    assert (cosign.INTOTO, "dsse") in attestations.artifact_types()


def test_signature_tags_are_recognised_exactly() -> None:
    hex_ = "ab" * 32
    assert cosign.is_signature_tag(f"sha256-{hex_}.sig")
    assert cosign.is_signature_tag(f"sha256-{hex_}.att")
    for tag in (f"sha256-{hex_}.sbom", f"sha256-{hex_[:10]}.sig", "latest", f"md5-{hex_}.sig"):
        assert not cosign.is_signature_tag(tag)
    assert cosign.signature_tags(DIGEST) == (f"sha256-{hex_}.sig", f"sha256-{hex_}.att")
