"""SBOMs attached to images as OCI 1.1 referrers, and their cosign signatures.

An attachment is written exactly as a client's push would be: the blobs
through ``BlobService.upload_whole``, the manifest through
``ManifestService.prepare``/``commit``, so every check a push meets (the
namespace still owned by the account, the blobs linked, sizes, the tag rule
of signatures) applies here too. The referrer is an image manifest with
``artifactType`` set, the empty config and ``subject`` naming the image,
which is what ``oras attach`` makes, so ``oras discover`` lists it and
``oras pull`` fetches it.

When the image's namespace has a signing key (``[va] sbom_signing_keys``),
the SBOM manifest is signed as ``cosign sign --key`` would: a simple-signing
payload naming the manifest digest, in a layer of the ``sha256-<hex>.sig``
tag with the signature in ``dev.cosignproject.cosign/signature``. ECDSA is
deterministic here (RFC 6979), so signing the same SBOM again adds nothing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from moorage.config import Settings
from moorage.metadata import RepoRef
from moorage.metadata.va_store import VaStore, platform_of
from moorage.oci.manifest import IMAGE_TYPES, INDEX_TYPES, OCI_MANIFEST
from moorage.regions import RegionMap
from moorage.registry.blobs import BlobService
from moorage.registry.errors import ManifestUnknown, Unsupported
from moorage.registry.manifests import ManifestService
from moorage.trust import cosign
from moorage.va.layers import layer_from_json
from moorage.va.model import INDEXER_VERSION, ImageContents
from moorage.va.overlay import overlay
from moorage.va.sbom import CYCLONEDX, SPDX, ImageRef, cyclonedx, spdx

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
FILE_NAMES = {CYCLONEDX: "sbom.cdx.json", SPDX: "sbom.spdx.json"}
GENERATOR = "dev.moorage.sbom.generator"  # marks Moorage's own SBOM referrers (unsigned)
MAX_CONFIG = 1 << 20
MAX_SBOM = 64 << 20


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **extra,
    }


def load_signing_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """An unencrypted ECDSA P-256 private key in PEM (PKCS#8 or SEC1); ValueError otherwise."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot read the SBOM signing key {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"the SBOM signing key {path} is not an ECDSA P-256 key")
    return key


def load_signing_keys(
    configured: Mapping[str, str] | tuple[tuple[str, str], ...],
) -> dict[str, ec.EllipticCurvePrivateKey]:
    """``[va] sbom_signing_keys`` read once, at start-up: a missing or wrong key
    is a configuration error then, not an unsigned SBOM later."""
    items = configured.items() if isinstance(configured, Mapping) else configured
    return {scope: load_signing_key(path) for scope, path in items}


def registry_hosts(regions: RegionMap) -> dict[str, str]:
    """Each region's domain: the host SBOMs name their images on. The indexer
    and the API use the same, so an SBOM computed again has the same bytes."""
    return {name: region.domain for name, region in regions.regions.items()}


@dataclass(frozen=True)
class Attached:
    """What ``attach_sbom`` stored: the referrers' manifest digests by media
    type, and the ``.sig`` manifests signing them (empty when unsigned)."""

    referrers: Mapping[str, str]
    signatures: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredSbom:
    image: str  # the image manifest's digest
    referrer: str  # the SBOM manifest's digest; "" when computed from the index
    media_type: str
    document: bytes


@dataclass(frozen=True)
class SbomService:
    """``signing_keys`` maps ``"<namespace>"`` (every region) or
    ``"<region>/<namespace>"`` (that region only, which wins) to a key;
    ``registry_host(region)`` is the host clients pull from, named in the
    documents and in the signed payload's docker-reference."""

    blobs: BlobService
    manifests: ManifestService
    signing_keys: Mapping[str, ec.EllipticCurvePrivateKey] = field(
        default_factory=lambda: MappingProxyType({})
    )
    registry_host: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    va: VaStore | None = None  # the Advisor's index, when this process has it

    @classmethod
    def configured(
        cls,
        settings: Settings,
        blobs: BlobService,
        manifests: ManifestService,
        regions: RegionMap,
        va: VaStore | None = None,
    ) -> SbomService:
        """As the server's settings say (``[va] sbom_signing_keys``); ValueError
        for a key that cannot be read."""
        return cls(
            blobs,
            manifests,
            MappingProxyType(load_signing_keys(settings.sbom_signing_keys)),
            MappingProxyType(registry_hosts(regions)),
            va,
        )

    def key_for(self, repo: RepoRef) -> ec.EllipticCurvePrivateKey | None:
        namespace = repo.name.split("/", 1)[0]
        return self.signing_keys.get(f"{repo.region}/{namespace}") or self.signing_keys.get(
            namespace
        )

    async def attach_sbom(
        self,
        repo: RepoRef,
        digest: str,
        contents: ImageContents,
        account: str | None = None,
        platform: str = "",
    ) -> Attached:
        """Attach the SBOMs of one image manifest of ``repo`` (for a multi-arch
        index: call once per platform manifest, ``digest`` that platform's):
        a CycloneDX 1.6 referrer (artifact type ``application/vnd.cyclonedx+json``)
        and an SPDX 2.3 one (``application/spdx+json``), each signed when the
        namespace has a key. ``account`` is the account that owns the namespace
        (as the indexer found it): the writes commit only while it still does.
        Idempotent: the same contents give the same referrers. Raises the
        registry's errors (``ManifestUnknown`` when the image is gone,
        ``NamespaceGone``...)."""
        image = await self.blobs.db.run(self.manifests.get, repo, digest, [])
        if image.media_type not in IMAGE_TYPES:
            raise ManifestUnknown(f"{digest} is not an image manifest", detail={"digest": digest})
        ref = ImageRef(
            repository=repo.name,
            digest=image.digest,
            registry=self.registry_host.get(repo.region, ""),
            created=await self._created(repo, image.content),
            platform=platform,
        )
        subject = {
            "mediaType": image.media_type,
            "digest": image.digest,
            "size": len(image.content),
        }
        referrers: dict[str, str] = {}
        signatures: list[str] = []
        key = self.key_for(repo)
        rendered = await asyncio.to_thread(  # CPU work: never on the event loop
            lambda: ((CYCLONEDX, cyclonedx(contents, ref)), (SPDX, spdx(contents, ref)))
        )
        for media_type, document in rendered:
            manifest = await self._referrer(repo, media_type, document, subject, ref, account)
            referrers[media_type] = manifest
            if key is not None:
                signatures.append(await self._sign(repo, manifest, key, ref, account))
        return Attached(MappingProxyType(referrers), tuple(signatures))

    async def sbom(
        self, repo: RepoRef, reference: str, media_type: str, platform: str | None = None
    ) -> StoredSbom:
        """The SBOM of ``media_type`` of an image of ``repo`` (a digest or a tag;
        for a multi-platform index, ``platform`` picks one). Computed from the
        Advisor's stored layer indexes when it has indexed the image, which
        nobody but the indexer writes; otherwise the newest attached referrer
        (Moorage's own before any a client pushed). ``ManifestUnknown`` when
        there is neither; ``Unsupported`` for an index without a platform."""
        image = await self.blobs.db.run(self.manifests.get, repo, reference, [])
        if self.va is not None:
            computed = await self._from_index(repo, image.digest, media_type, platform)
            if computed is not None:
                return computed
        if image.media_type not in INDEX_TYPES:
            return await self._attached(repo, image.digest, media_type)
        children: dict[str, str] = {}
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            for child in json.loads(image.content).get("manifests") or []:
                name = platform_of(child) if isinstance(child, dict) else None
                if name and isinstance(child.get("digest"), str):
                    children.setdefault(name, child["digest"])
        if platform is None or platform not in children:
            raise Unsupported(
                "this is a multi-platform index: name one of its platforms "
                f"({', '.join(sorted(children)) or 'none'}) or one platform's manifest digest"
            )
        return await self._attached(repo, children[platform], media_type)

    async def _from_index(
        self, repo: RepoRef, digest: str, media_type: str, platform: str | None
    ) -> StoredSbom | None:
        assert self.va is not None
        va, run = self.va, self.blobs.db.run
        stored = await run(va.stored_reports, repo.region, repo.name, digest)
        if not stored:
            return None
        if platform is not None:
            stored = [s for s in stored if s.platform == platform]
        elif len(stored) > 1:
            raise Unsupported(
                "this is a multi-platform index: name a platform (?platform=...), one of "
                + ", ".join(s.platform for s in stored)
            )
        if not stored:
            raise ManifestUnknown(f"{repo.name}@{digest} has no platform {platform!r}")
        one = stored[0]
        docs = [await run(va.layer, layer, INDEXER_VERSION) for layer in one.layers]
        if any(doc is None for doc in docs):
            return None  # indexed by an older indexer and not again yet
        image_digest = one.report.digest or digest
        platform_manifest = await run(self.manifests.get, repo, image_digest, [])
        ref = ImageRef(
            repo.name,
            image_digest,
            self.registry_host.get(repo.region, ""),
            await self._created(repo, platform_manifest.content),
            one.platform,
        )
        render = cyclonedx if media_type == CYCLONEDX else spdx

        def computed() -> bytes:
            return render(overlay([layer_from_json(d) for d in docs if d is not None]), ref)

        return StoredSbom(image_digest, "", media_type, await asyncio.to_thread(computed))

    async def _attached(self, repo: RepoRef, digest: str, media_type: str) -> StoredSbom:
        run = self.blobs.db.run
        found = await run(self.manifests.metadata.referrers, repo, digest, media_type)
        found.sort(key=lambda r: bool(r.annotations and r.annotations.get(GENERATOR)))
        for referrer in reversed(found):
            try:
                manifest = await run(self.manifests.get, repo, referrer.digest, [])
                layer = json.loads(manifest.content)["layers"][0]
                blob, size = str(layer["digest"]), int(layer["size"])
            except (ManifestUnknown, ValueError, KeyError, IndexError, TypeError):
                continue
            if size > MAX_SBOM or layer.get("mediaType") != media_type:
                continue
            body = await self.blobs.read_small(repo, blob, MAX_SBOM)
            if body is not None:
                return StoredSbom(digest, referrer.digest, media_type, body)
        raise ManifestUnknown(
            f"no {media_type} SBOM is known for {repo.name}@{digest} (yet)",
            detail={"digest": digest},
        )

    async def _created(self, repo: RepoRef, manifest: bytes) -> str:
        """The image config's ``created``, or "" when it has none."""
        try:
            config = json.loads(manifest)["config"]["digest"]
            body = await self.blobs.read_small(repo, str(config), MAX_CONFIG)
            created = json.loads(body or b"{}").get("created")
        except (ValueError, KeyError, TypeError, AttributeError):
            return ""
        return created if isinstance(created, str) else ""

    async def _blob(self, repo: RepoRef, data: bytes, account: str | None) -> None:
        async def body() -> AsyncIterator[bytes]:
            yield data

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        await self.blobs.upload_whole(repo, digest, body(), len(data), account)

    async def _push(
        self, repo: RepoRef, reference: str | None, manifest: dict[str, Any], account: str | None
    ) -> str:
        """A manifest through the same prepare/commit a PUT takes; by digest
        unless ``reference`` names a tag."""
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        target = reference or "sha256:" + hashlib.sha256(body).hexdigest()
        run = self.blobs.db.run
        write = await run(self.manifests.prepare, repo, target, body, OCI_MANIFEST)
        if write.removes:  # never drop another signer's layer
            raise self.manifests.removal_denied(write)
        return (await run(self.manifests.commit, write, account)).digest

    async def _referrer(
        self,
        repo: RepoRef,
        media_type: str,
        document: bytes,
        subject: dict[str, Any],
        image: ImageRef,
        account: str | None,
    ) -> str:
        await self._blob(repo, EMPTY, account)
        await self._blob(repo, document, account)
        created = image.when.isoformat().replace("+00:00", "Z")
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": media_type,
            "config": _descriptor(EMPTY_MEDIA_TYPE, EMPTY),
            "layers": [
                _descriptor(media_type, document, annotations={TITLE: FILE_NAMES[media_type]})
            ],
            "subject": subject,
            "annotations": {CREATED: created, GENERATOR: "moorage"},
        }
        return await self._push(repo, None, manifest, account)

    async def _sign(
        self,
        repo: RepoRef,
        manifest_digest: str,
        key: ec.EllipticCurvePrivateKey,
        image: ImageRef,
        account: str | None,
    ) -> str:
        where = f"{image.registry}/{repo.name}" if image.registry else repo.name
        payload = json.dumps(
            {
                "critical": {
                    "identity": {"docker-reference": where},
                    "image": {"docker-manifest-digest": manifest_digest},
                    "type": "cosign container image signature",
                },
                "optional": None,
            },
            separators=(",", ":"),
        ).encode()
        signature = key.sign(payload, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        layer = _descriptor(
            cosign.SIMPLE_SIGNING,
            payload,
            annotations={cosign.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()},
        )
        tag = cosign.signature_tag(manifest_digest)
        layers = await self._signature_layers(repo, tag)
        if layer in layers:
            return await self._tag_digest(repo, tag)
        layers.append(layer)
        await self._blob(repo, payload, account)
        # cosign's own config: its rootfs lists the layers' digests.
        config = json.dumps(
            {
                "architecture": "",
                "created": "0001-01-01T00:00:00Z",
                "history": [{"created": "0001-01-01T00:00:00Z"}],
                "os": "",
                "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]},
                "config": {},
            },
            separators=(",", ":"),
        ).encode()
        await self._blob(repo, config, account)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": layers,
        }
        return await self._push(repo, tag, manifest, account)

    async def _signature_layers(self, repo: RepoRef, tag: str) -> list[dict[str, Any]]:
        """The layers of the ``.sig`` tag as stored (others' signatures are kept)."""
        try:
            stored = await self.blobs.db.run(self.manifests.get, repo, tag, [])
            layers = json.loads(stored.content).get("layers")
        except (ManifestUnknown, ValueError, AttributeError):
            return []
        return [x for x in layers if isinstance(x, dict)] if isinstance(layers, list) else []

    async def _tag_digest(self, repo: RepoRef, tag: str) -> str:
        return (await self.blobs.db.run(self.manifests.get, repo, tag, [])).digest
