"""Manifests, tags, referrers and the catalog.

A manifest is accepted only when everything it names is already in the
repository, and it is stored byte-exact with its tag in one transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from moorage.metadata import (
    BlobsUnlinked,
    ImageRow,
    MetadataStore,
    NewManifest,
    RepoRef,
    StoredManifest,
)
from moorage.metadata.cache import SharedCache, repository_group
from moorage.oci.digest import digest_bytes
from moorage.oci.manifest import OCI_INDEX, ManifestError, ParsedManifest, parse_manifest
from moorage.oci.names import NameError_, is_digest, validate_tag
from moorage.registry.blobs import namespace_checked, require_digest
from moorage.registry.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    SizeInvalid,
    Unsupported,
)

DEFAULT_MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Manifests kept in memory, in bytes of content; 0 turns the cache off.
DEFAULT_CACHE_BYTES = 32 * 1024 * 1024
# How long a cached manifest is trusted at most: every write that changes a
# repository's tags or manifests drops its entries at once (in every process,
# through the change feed), so this bounds only a change the feed missed.
CACHE_TTL = 60.0


class ManifestTooLarge(RegistryError):
    code = "SIZE_INVALID"
    status = 413


@dataclass(frozen=True)
class PutResult:
    digest: str
    subject: str | None


@dataclass(frozen=True)
class Page:
    items: list[str]
    next_last: str | None


def _accepts(accept: list[str], media_type: str) -> bool:
    """Content negotiation: no Accept, a wildcard or the stored type itself."""
    if not accept:
        return True
    for entry in accept:
        for part in entry.split(","):
            value = part.split(";", 1)[0].strip().lower()
            if value in ("*/*", "application/*", media_type) or not value:
                return True
    return False


class ManifestService:
    """Its methods block (the database): on an event loop, call them in a
    worker thread, after ``cached`` found nothing."""

    def __init__(
        self,
        metadata: MetadataStore,
        max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.metadata = metadata
        self.max_manifest_bytes = max_manifest_bytes
        changes = metadata.changes
        self._cache: SharedCache[tuple[str, str], str, StoredManifest] = SharedCache(
            lambda: changes.healthy, CACHE_TTL, cache_bytes, repository_group
        )
        changes.subscribe(self._cache.changed)

    def _reference(self, reference: str) -> bool:
        """Validate a reference; True when it is a digest."""
        if is_digest(reference):
            require_digest(reference)
            return True
        try:
            validate_tag(reference)
        except NameError_ as exc:
            raise ManifestInvalid(str(exc), detail={"tag": reference[:140]}) from exc
        return False

    def _lookup_reference(self, reference: str) -> bool:
        """Like _reference, but a malformed tag names nothing, so reads answer 404."""
        try:
            return self._reference(reference)
        except ManifestInvalid as exc:
            raise ManifestUnknown(
                "manifest unknown to registry", detail={"reference": reference[:140]}
            ) from exc

    def cached(self, repo: RepoRef, reference: str, accept: list[str]) -> StoredManifest | None:
        """The manifest from memory, without blocking; None when it is not there."""
        manifest = self._cache.get((repo.region, repo.name), reference)
        if manifest is not None:
            self._check_accept(manifest, reference, accept)
        return manifest

    def get(self, repo: RepoRef, reference: str, accept: list[str]) -> StoredManifest:
        manifest = self._cache.get((repo.region, repo.name), reference)
        if manifest is None:
            by_digest = self._lookup_reference(reference)
            stamp = self._cache.stamp()
            manifest = self.metadata.get_manifest(repo, reference, by_digest=by_digest)
            if manifest is None:
                raise ManifestUnknown(
                    "manifest unknown to registry", detail={"reference": reference}
                )
            self._cache.offer(
                (repo.region, repo.name), reference, manifest, stamp, len(manifest.content) + 256
            )
        self._check_accept(manifest, reference, accept)
        return manifest

    @staticmethod
    def _check_accept(manifest: StoredManifest, reference: str, accept: list[str]) -> None:
        if not _accepts(accept, manifest.media_type):
            raise ManifestUnknown(
                f"manifest is {manifest.media_type}, which the Accept header does not list",
                detail={"reference": reference, "mediaType": manifest.media_type},
            )

    def too_large(self) -> ManifestTooLarge:
        return ManifestTooLarge(f"manifest is larger than the {self.max_manifest_bytes}-byte limit")

    def check_size(self, length: int | None) -> None:
        if length is not None and length > self.max_manifest_bytes:
            raise self.too_large()

    def put(
        self,
        repo: RepoRef,
        reference: str,
        body: bytes,
        content_type: str | None,
        account: str | None = None,
    ) -> PutResult:
        """``account``, here and below: the account the caller was authorised as the
        namespace's owner; the write commits only if it still is."""
        self.check_size(len(body))
        by_digest = self._reference(reference)
        if by_digest:
            claimed = require_digest(reference)
            actual = digest_bytes(body, claimed.algorithm)
            if actual != claimed:
                raise DigestInvalid(
                    "manifest content does not match the digest in the reference",
                    detail={"reference": reference, "actual": str(actual)},
                )
            digest = str(claimed)
        else:
            digest = str(digest_bytes(body))
        try:
            parsed = parse_manifest(body, content_type)
        except ManifestError as exc:
            if exc.unsupported:
                raise Unsupported(str(exc)) from exc
            raise ManifestInvalid(str(exc)) from exc

        blobs = parsed.required_blobs
        missing = self.metadata.missing_blobs(repo, (b.digest for b in blobs))
        if missing:
            raise ManifestBlobUnknown(
                "manifest references blobs unknown to this repository",
                detail={"missing": missing},
            )
        sizes = self.metadata.blob_sizes(b.digest for b in blobs)
        for blob in blobs:
            if sizes.get(blob.digest) != blob.size:
                raise ManifestInvalid(
                    "descriptor size does not match the stored blob",
                    detail={"digest": blob.digest, "size": blob.size},
                )
        missing = self.metadata.missing_manifests(repo, (m.digest for m in parsed.manifests))
        if missing:
            raise ManifestBlobUnknown(
                "index references manifests unknown to this repository",
                detail={"missing": missing},
            )
        try:
            with namespace_checked():
                self._store(repo, digest, parsed, body, None if by_digest else reference, account)
        except BlobsUnlinked as exc:  # garbage collection dropped a link since the check
            raise ManifestBlobUnknown(
                "manifest references blobs unknown to this repository",
                detail={"missing": exc.missing},
            ) from None
        return PutResult(digest, parsed.subject.digest if parsed.subject else None)

    def _store(
        self,
        repo: RepoRef,
        digest: str,
        parsed: ParsedManifest,
        body: bytes,
        tag: str | None,
        account: str | None,
    ) -> None:
        blobs = parsed.required_blobs
        self.metadata.put_manifest(
            repo,
            NewManifest(
                digest=digest,
                media_type=parsed.media_type,
                artifact_type=parsed.referrer_artifact_type,
                subject_digest=parsed.subject.digest if parsed.subject else None,
                annotations=parsed.annotations,
                content=body,
                blob_digests=[b.digest for b in blobs],
                child_digests=[m.digest for m in parsed.manifests],
            ),
            tag=tag,
            account=account,
        )

    def link_blobs(
        self,
        target: RepoRef,
        source: RepoRef,
        manifest: StoredManifest,
        account: str | None = None,
    ) -> None:
        """Make what an image manifest names visible in ``target`` too (a server-side copy)."""
        parsed = parse_manifest(manifest.content, manifest.media_type)
        if parsed.is_index:
            raise Unsupported("copying an index to another repository is not supported")
        for blob in parsed.required_blobs:
            with namespace_checked():
                mounted = self.metadata.mount_blob(target, blob.digest, source, account)
            if mounted is None:
                raise ManifestBlobUnknown(
                    "source image is incomplete", detail={"missing": blob.digest}
                )

    def tag(
        self,
        source: RepoRef,
        reference: str,
        target: RepoRef,
        tag: str,
        account: str | None = None,
    ) -> str:
        """Point ``target:tag`` at the manifest ``source:reference`` names, linking
        its blobs into ``target`` first; returns the manifest's digest."""
        manifest = self.get(source, reference, [])
        if target != source:
            self.link_blobs(target, source, manifest, account)
        self.put(target, tag, manifest.content, manifest.media_type, account)
        return manifest.digest

    def delete(self, repo: RepoRef, reference: str, account: str | None = None) -> None:
        """By digest: the manifest and its tags. By tag: only that tag."""
        with namespace_checked():
            if self._lookup_reference(reference):
                found = self.metadata.delete_manifest(repo, reference, account)
            else:
                found = self.metadata.delete_tag(repo, reference, account)
        if not found:
            raise ManifestUnknown("manifest unknown to registry", detail={"reference": reference})

    # -- listings ----------------------------------------------------------

    @staticmethod
    def _page(items: list[str], limit: int | None) -> Page:
        full = limit is not None and len(items) == limit and limit > 0
        return Page(items, items[-1] if full else None)

    def tags(self, repo: RepoRef, limit: int | None, last: str | None) -> Page:
        tags = self.metadata.list_tags(repo, limit, last)
        if tags is None:
            raise NameUnknown("repository name not known to registry", detail={"name": repo.name})
        return self._page(tags, limit)

    def catalog(
        self, region: str, limit: int | None, last: str | None, namespaces: list[str] | None
    ) -> Page:
        return self._page(self.metadata.list_repositories(region, limit, last, namespaces), limit)

    def images(self, region: str, namespaces: list[str]) -> list[ImageRow]:
        return self.metadata.images(region, namespaces)

    def referrers(self, repo: RepoRef, digest_value: str, artifact_type: str | None) -> bytes:
        digest = require_digest(digest_value)
        descriptors: list[dict[str, Any]] = []
        for ref in self.metadata.referrers(repo, str(digest), artifact_type):
            descriptor: dict[str, Any] = {
                "mediaType": ref.media_type,
                "digest": ref.digest,
                "size": ref.size,
            }
            if ref.artifact_type:
                descriptor["artifactType"] = ref.artifact_type
            if ref.annotations:
                descriptor["annotations"] = ref.annotations
            descriptors.append(descriptor)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        return json.dumps(index, separators=(",", ":")).encode()


__all__ = ["ManifestService", "ManifestTooLarge", "Page", "PutResult", "SizeInvalid"]
