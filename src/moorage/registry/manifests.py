"""Manifests, tags, referrers and the catalog.

A manifest is accepted only when everything it names is already in the
repository, and it is stored byte-exact with its tag in one transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from moorage.metadata import (
    BlobsUnlinked,
    ImageRow,
    MetadataStore,
    NewManifest,
    RepoRef,
    StoredManifest,
    TagMoved,
    TagWas,
)
from moorage.metadata.cache import SharedCache, repository_group
from moorage.oci.digest import digest_bytes
from moorage.oci.manifest import OCI_INDEX, ManifestError, ParsedManifest, parse_manifest
from moorage.oci.names import NameError_, is_digest, validate_tag
from moorage.registry.blobs import namespace_checked, require_digest
from moorage.registry.errors import (
    Conflict,
    Denied,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    SizeInvalid,
    Unsupported,
)
from moorage.trust import cosign

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
class ManifestWrite:
    """A manifest push checked but not stored yet (``ManifestService.prepare``).

    ``removes`` counts the signed documents the push would take away: the
    layers of what a ``sha256-<hex>.sig`` or ``.att`` tag names now that the
    new manifest does not keep, in order, at its start. cosign adds a
    signature by pushing the manifest again with one more layer (removes 0,
    a Writer's right); anything else that drops one is removing a signature,
    which needs the delete right (Manager), and the caller must hold it
    before ``commit``. The commit happens only while the tag still names
    ``tag_was``: a signature added meanwhile is never lost to a write judged
    without it."""

    repo: RepoRef
    reference: str
    digest: str
    parsed: ParsedManifest
    body: bytes
    tag: str | None
    tag_was: TagWas | None = None
    removes: int = 0
    source: RepoRef | None = None  # a server-side copy: link its blobs from there first


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

    def prepare(
        self, repo: RepoRef, reference: str, body: bytes, content_type: str | None
    ) -> ManifestWrite:
        """Check a push (digest, format) and find what it would overwrite."""
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
        tag = None if by_digest else reference
        if tag is None or not cosign.is_signature_tag(tag):
            return ManifestWrite(repo, reference, digest, parsed, body, tag)
        # Read past the cache: the judgement must be about the tag as stored.
        current = self.metadata.get_manifest(repo, tag, by_digest=False)
        if current is None:
            return ManifestWrite(repo, reference, digest, parsed, body, tag, TagWas(None))
        return ManifestWrite(
            repo,
            reference,
            digest,
            parsed,
            body,
            tag,
            TagWas(current.digest),
            _dropped_layers(current.content, body),
        )

    @staticmethod
    def removal_denied(write: ManifestWrite) -> Denied:
        return Denied(
            f"overwriting tag {write.tag} would remove {write.removes} signed document(s) "
            "(signatures or attestations); removing a signature needs the delete right "
            "(Manager). To add one, push the manifest again with every layer it has, "
            "and the new one after them, as cosign does",
            detail={"tag": write.tag, "removes": write.removes},
        )

    def commit(self, write: ManifestWrite, account: str | None = None) -> PutResult:
        """Store a prepared push, once everything it names is in the repository.
        ``account``, here and below: the account the caller was authorised as the
        namespace's owner; the write commits only if it still is."""
        repo, parsed = write.repo, write.parsed
        if write.source is not None and write.source != repo:
            self._link_parsed(repo, write.source, parsed, account)
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
                self._store(
                    repo, write.digest, parsed, write.body, write.tag, account, write.tag_was
                )
        except BlobsUnlinked as exc:  # garbage collection dropped a link since the check
            raise ManifestBlobUnknown(
                "manifest references blobs unknown to this repository",
                detail={"missing": exc.missing},
            ) from None
        except TagMoved:
            raise Conflict(
                f"tag {write.tag} changed while this push was checked; push again",
                detail={"tag": write.tag},
            ) from None
        return PutResult(write.digest, parsed.subject.digest if parsed.subject else None)

    def _store(
        self,
        repo: RepoRef,
        digest: str,
        parsed: ParsedManifest,
        body: bytes,
        tag: str | None,
        account: str | None,
        tag_was: TagWas | None = None,
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
            tag_was=tag_was,
        )

    def link_blobs(
        self,
        target: RepoRef,
        source: RepoRef,
        manifest: StoredManifest,
        account: str | None = None,
    ) -> None:
        """Make what an image manifest names visible in ``target`` too (a server-side copy)."""
        self._link_parsed(
            target, source, parse_manifest(manifest.content, manifest.media_type), account
        )

    def _link_parsed(
        self, target: RepoRef, source: RepoRef, parsed: ParsedManifest, account: str | None
    ) -> None:
        if parsed.is_index:
            raise Unsupported("copying an index to another repository is not supported")
        for blob in parsed.required_blobs:
            with namespace_checked():
                mounted = self.metadata.mount_blob(target, blob.digest, source, account)
            if mounted is None:
                raise ManifestBlobUnknown(
                    "source image is incomplete", detail={"missing": blob.digest}
                )

    def prepare_tag(
        self, source: RepoRef, reference: str, target: RepoRef, tag: str
    ) -> ManifestWrite:
        """Pointing ``target:tag`` at the manifest ``source:reference`` names, as
        a push of that manifest to the tag (``commit`` links its blobs first)."""
        manifest = self.get(source, reference, [])
        write = self.prepare(target, tag, manifest.content, manifest.media_type)
        return replace(write, source=source)

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


def _layers(content: bytes) -> list[str]:
    """A manifest's layer descriptors, each as canonical JSON (annotations and all:
    a cosign signature is its payload's digest plus the signature annotation)."""
    try:
        document = json.loads(content)
    except (ValueError, RecursionError):
        return []
    layers = document.get("layers") if isinstance(document, dict) else None
    return (
        [json.dumps(x, sort_keys=True) for x in layers if isinstance(x, dict)]
        if isinstance(layers, list)
        else []
    )


def _dropped_layers(old: bytes, new: bytes) -> int:
    """How many of ``old``'s layers ``new`` does not keep as its first layers, in order."""
    before, after = _layers(old), _layers(new)
    kept = 0
    for mine, theirs in zip(before, after, strict=False):
        if mine != theirs:
            break
        kept += 1
    return len(before) - kept


__all__ = [
    "ManifestService",
    "ManifestTooLarge",
    "ManifestWrite",
    "Page",
    "PutResult",
    "SizeInvalid",
]
