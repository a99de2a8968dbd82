"""Manifest parsing and validation for the four manifest kinds a registry
stores: OCI image manifests and indexes, Docker schema 2 manifests and lists.

Validation is structural only; whether referenced blobs exist is a question
for the registry service, which knows the repository."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from moorage.oci.digest import DigestError, parse_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES


class ManifestError(ValueError):
    """A manifest body that is not valid JSON or breaks its schema."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()

    @property
    def is_foreign(self) -> bool:
        """Non-distributable layers live elsewhere; the registry need not hold them."""
        return bool(self.urls) and (
            "nondistributable" in self.media_type or ".foreign." in self.media_type
        )


@dataclass(frozen=True)
class ParsedManifest:
    media_type: str
    artifact_type: str | None
    subject: Descriptor | None
    config: Descriptor | None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def required_blobs(self) -> tuple[Descriptor, ...]:
        blobs = [self.config] if self.config else []
        blobs.extend(layer for layer in self.layers if not layer.is_foreign)
        return tuple(blobs)

    @property
    def referrer_artifact_type(self) -> str | None:
        """What the referrers API reports: artifactType, else the config's type."""
        if self.artifact_type:
            return self.artifact_type
        return self.config.media_type if self.config else None


def _bare_media_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def _text(value: Any) -> bool:
    """A string that may be stored as text (PostgreSQL refuses NUL characters)."""
    return isinstance(value, str) and "\x00" not in value


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type or "\x00" in media_type:
        raise ManifestError(f"{where}.mediaType must be a non-empty string without NUL")
    if not isinstance(digest, str):
        raise ManifestError(f"{where}.digest must be a string")
    try:
        parse_digest(digest)
    except DigestError as exc:
        raise ManifestError(f"{where}.digest: {exc}") from exc
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}.size must be a non-negative integer")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and (
        not isinstance(artifact_type, str) or "\x00" in artifact_type
    ):
        raise ManifestError(f"{where}.artifactType must be a string without NUL")
    annotations = _annotations(value.get("annotations"), where)
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestError(f"{where}.urls must be a list of strings")
    return Descriptor(media_type, digest, size, artifact_type, annotations or None, tuple(urls))


def _annotations(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError(f"{where}.annotations must map strings to strings")
    return value


def _descriptor_list(value: Any, where: str) -> tuple[Descriptor, ...]:
    if not isinstance(value, list):
        raise ManifestError(f"{where} must be a list of descriptors")
    return tuple(_descriptor(item, f"{where}[{i}]") for i, item in enumerate(value))


def parse_manifest(body: bytes, content_type: str | None = None) -> ParsedManifest:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ManifestError("manifest JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest must be a JSON object")
    if doc.get("schemaVersion") != 2:
        if doc.get("schemaVersion") == 1:
            raise ManifestError("Docker schema 1 manifests are not supported", unsupported=True)
        raise ManifestError("schemaVersion must be 2")

    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestError("mediaType must be a string")
    header_type = _bare_media_type(content_type)
    if header_type in DOCKER_SCHEMA1:
        raise ManifestError("Docker schema 1 manifests are not supported", unsupported=True)
    if declared and header_type in MANIFEST_TYPES and declared != header_type:
        raise ManifestError(
            f"Content-Type {header_type} does not match the manifest's mediaType {declared}"
        )
    media_type = declared or (header_type if header_type in MANIFEST_TYPES else None)
    if media_type is None:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise ManifestError(f"unsupported manifest media type {media_type!r}", unsupported=True)

    artifact_type = doc.get("artifactType")
    # Types are stored as text, which PostgreSQL keeps free of NUL characters.
    if artifact_type is not None and (
        not isinstance(artifact_type, str) or "\x00" in artifact_type
    ):
        raise ManifestError("artifactType must be a string without NUL")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    annotations = _annotations(doc.get("annotations"), "manifest")

    if media_type in INDEX_TYPES:
        if "config" in doc or "layers" in doc:
            raise ManifestError("an index has manifests, not config or layers")
        return ParsedManifest(
            media_type=media_type,
            artifact_type=artifact_type,
            subject=subject,
            config=None,
            manifests=_descriptor_list(doc.get("manifests"), "manifests"),
            annotations=annotations,
        )
    if "manifests" in doc:
        raise ManifestError("an image manifest has config and layers, not manifests")
    if "config" not in doc:
        raise ManifestError("an image manifest needs a config descriptor")
    config = _descriptor(doc["config"], "config")
    return ParsedManifest(
        media_type=media_type,
        artifact_type=artifact_type,
        subject=subject,
        config=config,
        layers=_descriptor_list(doc.get("layers"), "layers"),
        annotations=annotations,
    )
