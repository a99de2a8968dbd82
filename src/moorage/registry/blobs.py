"""Blob reads, uploads and cross-repository mounts.

Bytes go to the blob store; the link that makes a blob visible in a
repository is written to metadata only after the store has verified and
published the content."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from moorage.metadata import DatabaseThreads, MetadataStore, NamespaceChanged, RepoRef
from moorage.metadata.cache import SharedCache, repository_group
from moorage.oci.digest import Digest, DigestError, parse_digest
from moorage.registry.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    NamespaceGone,
    RangeInvalid,
    SizeInvalid,
    Unsupported,
)
from moorage.storage import (
    BlobStore,
    DigestMismatch,
    OffsetMismatch,
    TruncatedBody,
    UploadMissing,
)

log = logging.getLogger("moorage.registry")

# How long a blob link is trusted from memory at most (see SharedCache).
LINK_TTL = 60.0
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?\Z")


def require_digest(value: str | None) -> Digest:
    if not value:
        raise DigestInvalid("a digest is required")
    try:
        return parse_digest(value)
    except DigestError as exc:
        if exc.unsupported:
            raise Unsupported(str(exc)) from exc
        raise DigestInvalid(str(exc)) from exc


@contextmanager
def namespace_checked() -> Iterator[None]:
    """A write whose namespace changed hands under it is refused, not misplaced."""
    try:
        yield
    except NamespaceChanged:
        raise NamespaceGone() from None


def range_header(size: int) -> str:
    """The Range reply header: the inclusive span received so far (``0-0`` when empty)."""
    return f"0-{max(size - 1, 0)}"


@dataclass(frozen=True)
class BlobHandle:
    digest: Digest
    size: int
    path: str | None


@dataclass(frozen=True)
class UploadState:
    upload_id: str
    size: int


class BlobService:
    """The methods the HTTP layer calls are coroutines: the metadata they read
    and write (blocking database calls) runs on the database threads, the
    bytes on the blob store's own."""

    def __init__(
        self, store: BlobStore, metadata: MetadataStore, db: DatabaseThreads | None = None
    ) -> None:
        self.store = store
        self.metadata = metadata
        self.db = db or DatabaseThreads()
        changes = metadata.changes
        # Which blobs each repository links, and their sizes: a link changes only
        # by an unlink or a namespace's removal, which drop it in every process.
        self._links: SharedCache[tuple[str, str], str, int] = SharedCache(
            lambda: changes.healthy, LINK_TTL, 100_000, repository_group
        )
        changes.subscribe(self._links.changed)

    # -- reads and deletes -------------------------------------------------

    def _linked_size(self, repo: RepoRef, digest: str) -> int | None:
        stamp = self._links.stamp()
        size = self.metadata.linked_blob_size(repo, digest)
        if size is not None:
            self._links.offer((repo.region, repo.name), digest, size, stamp)
        return size

    async def get(self, repo: RepoRef, digest_value: str) -> BlobHandle:
        digest = require_digest(digest_value)
        size = self._links.get((repo.region, repo.name), str(digest))
        if size is None:
            size = await self.db.run(self._linked_size, repo, str(digest))
        if size is None or self.store.blob_size(digest) is None:
            raise BlobUnknown("blob unknown to registry", detail={"digest": str(digest)})
        return BlobHandle(digest, size, self.store.local_path(digest))

    async def delete(self, repo: RepoRef, digest_value: str, account: str | None = None) -> Digest:
        """Unlink a blob from one repository; the bytes go when garbage collection runs.
        ``account`` (here and below) is the account the caller was authorised as the
        namespace's owner: the write commits only if it still is."""
        digest = require_digest(digest_value)
        with namespace_checked():
            unlinked = await self.db.run(self.metadata.unlink_blob, repo, str(digest), account)
        if not unlinked:
            raise BlobUnknown("blob unknown to registry", detail={"digest": str(digest)})
        return digest

    # -- uploads -----------------------------------------------------------

    async def start_upload(
        self, repo: RepoRef, owner: str | None = None, account: str | None = None
    ) -> UploadState:
        upload_id = uuid.uuid4().hex
        self.store.create_upload(upload_id)
        try:
            with namespace_checked():
                await self.db.run(self.metadata.create_upload, upload_id, repo, owner, account)
        except BaseException:
            self.store.discard_upload(upload_id)
            raise
        return UploadState(upload_id, 0)

    async def mount(
        self,
        repo: RepoRef,
        digest_value: str,
        source_repo: RepoRef | None,
        account: str | None = None,
    ) -> Digest | None:
        """Link a blob from ``source_repo``; None means "upload it instead"."""
        try:
            digest = parse_digest(digest_value)
        except DigestError:
            return None
        if not source_repo or source_repo == repo:
            return None
        if self.store.blob_size(digest) is None:
            return None
        with namespace_checked():
            mounted = await self.db.run(
                self.metadata.mount_blob, repo, str(digest), source_repo, account
            )
        if mounted is None:
            return None
        return digest

    async def upload_whole(
        self,
        repo: RepoRef,
        digest_value: str,
        body: AsyncIterable[bytes],
        length: int | None,
        account: str | None = None,
    ) -> Digest:
        """A monolithic ``POST ?digest=``: stage, verify and publish in one request."""
        digest = require_digest(digest_value)
        upload_id = uuid.uuid4().hex
        self.store.create_upload(upload_id)
        try:
            await self._append(upload_id, body, length)
            await self._commit(upload_id, digest)
        finally:
            self.store.discard_upload(upload_id)
        with namespace_checked():
            await self.db.run(
                self.metadata.record_blob, repo, str(digest), self._committed_size(digest), account
            )
        return digest

    async def session_owner(self, repo: RepoRef, upload_id: str) -> str | None:
        """Who started an upload session of ``repo``, for authorization bound to it."""
        session = await self.db.run(self.metadata.upload_session, upload_id)
        return session[1] if session is not None and session[0] == repo else None

    async def _session(self, repo: RepoRef, upload_id: str) -> int:
        session = await self.db.run(self.metadata.upload_session, upload_id)
        if session is None or session[0] != repo:
            raise BlobUploadUnknown("blob upload unknown to registry")
        size = self.store.upload_size(upload_id)
        if size is None:
            raise BlobUploadUnknown("blob upload unknown to registry")
        return size

    async def status(self, repo: RepoRef, upload_id: str) -> UploadState:
        return UploadState(upload_id, await self._session(repo, upload_id))

    def _check_range(
        self, size: int, content_range: str | None, length: int | None
    ) -> tuple[int | None, int | None]:
        """Validate Content-Range against the session; returns the chunk length it
        implies and the offset it claims (None without a Content-Range)."""
        if not content_range:
            return length, None
        match = _CONTENT_RANGE.match(content_range.strip())
        if not match:
            raise RangeInvalid(
                f"malformed Content-Range {content_range[:60]!r}",
                headers={"Range": range_header(size)},
            )
        start, end = int(match.group(1)), int(match.group(2))
        if start != size or end < start:
            raise RangeInvalid(
                f"chunk {start}-{end} does not continue the upload at offset {size}",
                headers={"Range": range_header(size)},
            )
        chunk = end - start + 1
        if length is not None and length != chunk:
            raise SizeInvalid(f"Content-Length {length} does not match Content-Range {start}-{end}")
        return chunk, start

    async def append(
        self,
        repo: RepoRef,
        upload_id: str,
        body: AsyncIterable[bytes],
        content_range: str | None,
        length: int | None,
    ) -> UploadState:
        size = await self._session(repo, upload_id)
        expected, offset = self._check_range(size, content_range, length)
        return UploadState(upload_id, await self._append(upload_id, body, expected, offset))

    async def finish(
        self,
        repo: RepoRef,
        upload_id: str,
        digest_value: str | None,
        body: AsyncIterable[bytes] | None,
        content_range: str | None,
        length: int | None,
        account: str | None = None,
    ) -> Digest:
        size = await self._session(repo, upload_id)
        digest = require_digest(digest_value)
        if body is not None:
            expected, offset = self._check_range(size, content_range, length)
            await self._append(upload_id, body, expected, offset)
        try:
            await self._commit(upload_id, digest)
        except (DigestInvalid, BlobUploadInvalid):
            await self._end_session(upload_id)
            raise
        try:
            with namespace_checked():
                await self.db.run(
                    self.metadata.record_blob,
                    repo,
                    str(digest),
                    self._committed_size(digest),
                    account,
                )
        finally:
            await self._end_session(upload_id)
        return digest

    async def cancel(self, repo: RepoRef, upload_id: str) -> None:
        await self._session(repo, upload_id)
        await self._end_session(upload_id)

    async def _end_session(self, upload_id: str) -> None:
        await self.db.run(self.metadata.delete_upload, upload_id)
        self.store.discard_upload(upload_id)

    async def _append(
        self,
        upload_id: str,
        body: AsyncIterable[bytes],
        expected: int | None,
        offset: int | None = None,
    ) -> int:
        try:
            return await self.store.append(upload_id, body, expected, offset)
        except UploadMissing as exc:
            raise BlobUploadUnknown("blob upload unknown to registry") from exc
        except OffsetMismatch as exc:
            # Another chunk for the same range got there first.
            raise RangeInvalid(
                f"chunk at offset {offset} does not continue the upload at offset {exc.size}",
                headers={"Range": range_header(exc.size)},
            ) from exc
        except TruncatedBody as exc:
            raise SizeInvalid(str(exc)) from exc

    async def _commit(self, upload_id: str, digest: Digest) -> None:
        try:
            await self.store.commit(upload_id, digest)
        except UploadMissing as exc:
            raise BlobUploadUnknown("blob upload unknown to registry") from exc
        except DigestMismatch as exc:
            raise DigestInvalid(
                "provided digest did not match uploaded content",
                detail={"digest": str(digest), "reason": str(exc)},
            ) from exc

    def _committed_size(self, digest: Digest) -> int:
        size = self.store.blob_size(digest)
        if size is None:  # pragma: no cover - the store just published it
            raise BlobUnknown("blob vanished after commit")
        return size

    # -- crash recovery ----------------------------------------------------

    def reconcile(self, grace: float = 0.0) -> dict[str, int]:
        """Make uploads consistent after a crash: sessions without staged bytes are
        forgotten, staged bytes without a session are deleted. Sessions with both
        stay resumable.

        A new upload's bytes are staged a moment before its session is recorded,
        so where other processes serve the same store while this one starts
        (replicas), ``grace`` spares staged bytes younger than that many seconds.
        Sessions are recorded after their bytes and forgotten before them, so a
        session without bytes is a crash's leftover whatever its age."""
        sessions = set(self.metadata.list_uploads())
        staged = set(self.store.iter_uploads())
        age_of = getattr(self.store, "upload_age", None)
        orphans = [
            u
            for u in staged - sessions
            if not grace or age_of is None or (age_of(u) or 0.0) >= grace
        ]
        for upload_id in sessions - staged:
            self.metadata.delete_upload(upload_id)
        for upload_id in orphans:
            self.store.discard_upload(upload_id)
        return {
            "resumable": len(sessions & staged),
            "forgotten_sessions": len(sessions - staged),
            "deleted_staging": len(orphans),
        }
