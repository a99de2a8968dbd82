"""Notation signatures: OCI referrers of artifact type
``application/vnd.cncf.notary.signature`` whose layer is a JWS (JSON) or COSE
envelope. Read for who signed; verifying them is left for later."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography import x509

from moorage.trust.cosign import certificate_identity

ARTIFACT_TYPE = "application/vnd.cncf.notary.signature"
JWS = "application/jose+json"
COSE = "application/cose"


def identity(envelope_media_type: str, envelope: bytes) -> str:
    """The signing certificate's identity, as far as the envelope shows it."""
    if envelope_media_type != JWS:
        return "notation (COSE envelope; its certificate is not read)"
    try:
        document: Any = json.loads(envelope)
        chain = document["header"]["x5c"]
        certificate = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error, RecursionError):
        return "notation (no readable certificate)"
    return certificate_identity(certificate)
