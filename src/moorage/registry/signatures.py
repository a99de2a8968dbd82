"""An image's signatures, whatever stored them: cosign (``.sig`` tags, OCI 1.1
referrers, sigstore bundles), notation referrers, and Red Hat simple signatures
kept through the signature extension; and the signers a namespace trusts.

A signature is listed with the identity it claims; when a signer of the
namespace holds the key it names (or, for a key the signature does not name,
any key that verifies it), the signature is checked and the signer named.
A signature that vouches for another manifest never counts as this one's."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from moorage.metadata import MetadataStore, RepoRef, SignatureExists, SignerRecord
from moorage.oci.digest import parse_digest
from moorage.registry.blobs import namespace_checked, require_digest
from moorage.registry.errors import (
    Conflict,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    SignatureInvalid,
)
from moorage.registry.manifests import ManifestService
from moorage.storage import BlobStore
from moorage.trust import cosign, notation, simplesigning

EXTENSION_VERSION = 2
EXTENSION_TYPE = "atomic"
_SIGNATURE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")
_SIGNER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
MAX_SIGNATURES = 100  # per image and kind: listing reads each one


@dataclass(frozen=True)
class SignatureInfo:
    # "cosign", "cosign bundle", "cosign attestation", "simple signing" or "notation"
    kind: str
    stored_as: str  # the tag, referrer digest or extension name that holds it
    identity: str  # who the signature says signed it
    signer: str | None = None  # the namespace's signer whose key verifies it
    verified: bool | None = None  # None: no signer's key to check it with
    problem: str = ""
    predicate_type: str | None = None  # an attestation's, from its signed statement


# Referrers that hold signed documents, and how each is read.
_REFERRER_FORMS = {
    cosign.SIGNATURE_ARTIFACT: "referrer",
    cosign.BUNDLE: "bundle",
    cosign.INTOTO: "dsse",
}


class SignatureService:
    def __init__(
        self, metadata: MetadataStore, store: BlobStore, manifests: ManifestService
    ) -> None:
        self.metadata = metadata
        self.store = store
        self.manifests = manifests
        self.gpg = shutil.which("gpg") is not None

    # -- listing -----------------------------------------------------------

    async def _blob(self, repo: RepoRef, digest: str, limit: int) -> bytes | None:
        if self.metadata.linked_blob_size(repo, digest) is None:
            return None
        try:
            return await self.store.read_small(parse_digest(digest), limit)
        except ValueError:
            return None

    def _manifest_json(self, repo: RepoRef, reference: str) -> dict[str, Any] | None:
        try:
            stored = self.manifests.get(repo, reference, [])
            document = json.loads(stored.content)
        except (RegistryError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    async def of_image(self, repo: RepoRef, digest_value: str) -> list[SignatureInfo]:
        """Every signature stored for a manifest of ``repo``, each checked against
        the namespace's signers where one can be. The checks block (database,
        gpg), so they run on a worker thread; the blobs they read come from the
        store on the event loop."""
        loop = asyncio.get_running_loop()

        def read(digest: str) -> bytes | None:
            future = asyncio.run_coroutine_threadsafe(
                self._blob(repo, digest, cosign.MAX_PAYLOAD), loop
            )
            return future.result()

        return await asyncio.to_thread(self._of_image, repo, digest_value, read)

    def _of_image(
        self, repo: RepoRef, digest_value: str, read: Callable[[str], bytes | None]
    ) -> list[SignatureInfo]:
        digest = str(require_digest(digest_value))
        signers = self.metadata.signers(repo.region, repo.name.split("/", 1)[0])
        found: list[SignatureInfo] = []
        for tag, form in zip(cosign.signature_tags(digest), ("tag", "dsse"), strict=True):
            document = self._manifest_json(repo, tag)
            if document is not None:
                found += self._cosign_all(document, form, f"tag {tag}", digest, signers, read)
        # Each type on its own: referrers of other types never crowd these out.
        for artifact_type, form in _REFERRER_FORMS.items():
            for ref in self.metadata.referrers(repo, digest, artifact_type)[:MAX_SIGNATURES]:
                document = self._manifest_json(repo, ref.digest)
                if document is not None:
                    where = f"referrer {ref.digest}"
                    found += self._cosign_all(document, form, where, digest, signers, read)
        for ref in self.metadata.referrers(repo, digest, notation.ARTIFACT_TYPE)[:MAX_SIGNATURES]:
            document = self._manifest_json(repo, ref.digest)
            if document is None:
                continue
            layers = document.get("layers") or [{}]
            layer = layers[0] if isinstance(layers[0], dict) else {}
            envelope = read(str(layer.get("digest"))) or b""
            who = notation.identity(str(layer.get("mediaType")), envelope)
            found.append(SignatureInfo("notation", f"referrer {ref.digest}", who))
        for stored in (self.metadata.simple_signatures(repo, digest) or [])[:MAX_SIGNATURES]:
            found.append(self._simple(stored.content, f"extension {stored.name}", digest, signers))
        return found

    def _cosign_all(
        self,
        document: dict[str, Any],
        form: str,
        where: str,
        digest: str,
        signers: list[SignerRecord],
        read: Callable[[str], bytes | None],
    ) -> list[SignatureInfo]:
        documents = cosign.from_manifest(document, form, read)[:MAX_SIGNATURES]
        if not documents and form != "tag":
            return [SignatureInfo("cosign", where, "", None, False, "no readable signed document")]
        return [self._cosign(d, where, digest, signers) for d in documents]

    def _cosign(
        self,
        sig: cosign.CosignSignature,
        where: str,
        digest: str,
        signers: list[SignerRecord],
    ) -> SignatureInfo:
        if sig.is_attestation:
            info = SignatureInfo(
                "cosign attestation", where, sig.identity(), predicate_type=sig.predicate_type
            )
        else:
            kind = "cosign" if not sig.dsse else "cosign bundle"
            info = SignatureInfo(kind, where, sig.identity())
        if not sig.is_signature and not sig.is_attestation:
            problem = f"neither a signature nor an attestation: its payload is {sig.payload_type!r}"
            if sig.predicate_type == cosign.SIGN_PREDICATE:
                problem = "cosign's sign predicate counts in a bundle only, as cosign has it"
            elif sig.payload_type == cosign.INTOTO:
                problem = "neither a signature nor an attestation: no predicate type"
            return _with(info, verified=False, problem=problem)
        if not sig.names(digest):
            return _with(info, verified=False, problem=_elsewhere(sig.manifest_digest))
        named = sig.named_key
        for signer in signers:
            if signer.kind != "cosign" or (named and named not in signer.key_ids):
                continue
            if cosign.verify(sig, cosign.load_public_key(signer.public_key.encode())):
                return _with(info, signer=signer.name, verified=True)
            if named:
                return _with(info, signer=signer.name, verified=False, problem="does not verify")
        return info

    def _simple(
        self, content: bytes, where: str, digest: str, signers: list[SignerRecord]
    ) -> SignatureInfo:
        try:
            sig = simplesigning.read(content)
        except simplesigning.FormatError as exc:
            return SignatureInfo("simple signing", where, "", None, False, str(exc))
        info = SignatureInfo("simple signing", where, sig.identity())
        if sig.manifest_digest != digest:
            return _with(
                info, verified=False, problem=f"signs {sig.manifest_digest}, not this image"
            )
        for signer in signers:
            if signer.kind != "gpg" or not set(sig.key_ids) & set(signer.key_ids):
                continue
            if not self.gpg:
                return _with(info, signer=signer.name, problem="gpg is not installed: not checked")
            try:
                simplesigning.verify(content, [signer.public_key])
            except simplesigning.FormatError as exc:
                return _with(info, signer=signer.name, verified=False, problem=str(exc))
            return _with(info, signer=signer.name, verified=True)
        return info

    # -- the signature extension -------------------------------------------

    def extension_list(self, repo: RepoRef, digest_value: str) -> list[dict[str, Any]]:
        digest = str(require_digest(digest_value))
        stored = self.metadata.simple_signatures(repo, digest)
        if stored is None:
            raise ManifestUnknown("manifest unknown to registry", detail={"digest": digest})
        return [
            {
                "schemaVersion": EXTENSION_VERSION,
                "name": f"{digest}@{s.name}",
                "type": EXTENSION_TYPE,
                "content": base64.b64encode(s.content).decode(),
            }
            for s in stored
        ]

    def extension_put(
        self, repo: RepoRef, digest_value: str, body: bytes, account: str | None = None
    ) -> str:
        """Store one simple signature sent through the extension; it must be an
        OpenPGP signed document naming this very manifest."""
        digest = str(require_digest(digest_value))
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise SignatureInvalid("the body must be a JSON signature object") from None
        if not isinstance(document, dict):
            raise SignatureInvalid("the body must be a JSON signature object")
        if document.get("schemaVersion") != EXTENSION_VERSION:
            raise SignatureInvalid(f"schemaVersion must be {EXTENSION_VERSION}")
        if document.get("type", EXTENSION_TYPE) != EXTENSION_TYPE:
            raise SignatureInvalid(f"type must be {EXTENSION_TYPE!r}")
        name = document.get("name")
        prefix, sep, suffix = name.partition("@") if isinstance(name, str) else ("", "", "")
        if not sep or prefix != digest or not _SIGNATURE_NAME.match(suffix):
            raise SignatureInvalid(f"name must be {digest}@<1 to 128 letters, digits or ._->")
        try:
            content = base64.b64decode(str(document.get("content") or ""), validate=True)
            signed = simplesigning.read(content)
        except (binascii.Error, ValueError) as exc:
            raise SignatureInvalid(f"content is not an OpenPGP signature: {exc}") from None
        if signed.manifest_digest != digest:
            raise SignatureInvalid(
                f"the signature vouches for {signed.manifest_digest}, not {digest}"
            )
        try:
            with namespace_checked():
                stored = self.metadata.add_simple_signature(repo, digest, suffix, content, account)
        except SignatureExists:
            raise Conflict(f"a signature named {name} already exists") from None
        if not stored:
            raise ManifestUnknown("manifest unknown to registry", detail={"digest": digest})
        return str(name)

    def extension_delete(
        self, repo: RepoRef, digest_value: str, name: str, account: str | None = None
    ) -> None:
        digest = str(require_digest(digest_value))
        suffix = name.partition("@")[2] if "@" in name else name
        with namespace_checked():
            deleted = self.metadata.delete_simple_signature(repo, digest, suffix, account)
        if not deleted:
            raise ManifestUnknown("no such signature", detail={"name": name[:200]})

    # -- signers -----------------------------------------------------------

    def add_signer(
        self, account: str, region: str, namespace: str, name: str, public_key: str
    ) -> SignerRecord:
        """Trust a public key to sign a namespace's images: a cosign key (PEM) or
        an OpenPGP key (ASCII-armored)."""
        if not _SIGNER_NAME.match(name):
            raise SignatureInvalid("a signer's name is 1 to 100 letters, digits or ._-")
        if "BEGIN PGP PUBLIC KEY BLOCK" in public_key:
            try:
                key_ids = simplesigning.fingerprints(simplesigning.dearmor(public_key))
            except simplesigning.FormatError as exc:
                raise SignatureInvalid(f"not an OpenPGP public key: {exc}") from None
            if not key_ids:
                raise SignatureInvalid("the OpenPGP block holds no v4 public key")
            # Signatures name a key by fingerprint or by its last 16 hex digits.
            kind, ids = "gpg", [*key_ids, *(k[-16:] for k in key_ids)]
        else:
            try:
                key = cosign.load_public_key(public_key.encode())
            except cosign.FormatError as exc:
                raise SignatureInvalid(f"not a cosign public key: {exc}") from None
            kind, ids = "cosign", [cosign.key_id(key)]
        record = SignerRecord(
            f"Signer-{uuid.uuid4()}",
            region,
            namespace,
            name,
            kind,
            public_key.strip() + "\n",
            tuple(ids),
            datetime.now(UTC),
        )
        try:
            with namespace_checked():
                self.metadata.add_signer(record, account)
        except SignatureExists:
            raise Conflict(f"namespace {namespace} already has a signer named {name}") from None
        return record

    def signers(self, region: str, namespace: str) -> list[SignerRecord]:
        return self.metadata.signers(region, namespace)

    def remove_signer(self, account: str, region: str, namespace: str, name: str) -> None:
        with namespace_checked():
            removed = self.metadata.delete_signer(region, namespace, name, account)
        if not removed:
            raise NameUnknown(f"namespace {namespace} has no signer named {name[:100]}")


def _with(info: SignatureInfo, **changes: Any) -> SignatureInfo:
    return replace(info, **changes)


def _elsewhere(digest: str | None) -> str:
    return f"signs {digest or 'nothing readable'}, not this image"
