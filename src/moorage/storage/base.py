"""The blob store interface every storage driver implements, and the values
that cross it.

A driver keeps two things: committed blobs, content-addressed and immutable,
and the bytes of uploads in progress. It knows nothing of repositories, tags
or HTTP. Every method is a coroutine (or an async iterator) and never blocks
the event loop; drivers keep their own threads for hashing and disk work.

Upload sessions are shared state: with several replicas, one upload's chunks
may arrive at different processes. So an upload's offset, and whatever the
driver must remember to resume it (for S3: part numbers, ETags, sizes), live
in the metadata database behind :class:`UploadLedger`, never only in one
process's memory or in a ``stat`` of a local file. A driver may keep a
running hash in memory as a shortcut, valid only for the ledger version it
was computed at; without it the commit hashes the staged bytes again.

Guarantees every driver gives (``tests/test_storage.py`` checks them on each):

- A blob becomes visible (``stat``, ``open``, ``read``, ``walk``) only once
  all its bytes are stored and hash to its digest. A crash at any step leaves
  no partial blob, only staged bytes or an unreferenced complete blob.
- Of two appends claiming the same offset, at most one succeeds: the ledger's
  conditional update decides, across processes, not a lock in one of them.
- A sized append (``expected_length``) is all or nothing: a body shorter or
  longer than announced leaves the upload exactly as it was. A streamed
  append (no length) that is cut short keeps the prefix that arrived.
- Every other refusal leaves the upload as it was, resumable: an append at
  the wrong offset, a commit whose digest does not match (with or without a
  last chunk), a blob too large. Only the caller ends an upload.
- Any process holding the same ledger can continue or commit an upload that
  another began (a "second replica")."""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
)
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from moorage.oci.digest import Digest


class StorageError(Exception):
    """The backend failed (unreachable, refused, out of space): not the client's fault."""


class UploadMissing(LookupError):
    """The upload session has no staged data (unknown, cancelled or committed)."""


class BlobMissing(LookupError):
    """The blob is not in the store."""


class DigestMismatch(ValueError):
    """The staged bytes do not hash to the digest the client claimed."""


class TruncatedBody(ValueError):
    """The request body ended before the length the client announced; nothing was kept."""


class UploadTooLarge(ValueError):
    """The upload outgrew what the backend can hold in one object with its
    configured part size (S3: 10,000 parts)."""


class OffsetMismatch(ValueError):
    """A chunk was sent for an offset the upload is no longer (or not yet) at."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the upload is at offset {size}")
        self.size = size


# -- what the metadata database keeps for an upload -----------------------------


@dataclass(frozen=True)
class UploadRecord:
    """An upload's row as the store sees it. ``offset`` is how many bytes the
    upload holds (where the next chunk must start); ``version`` changes with
    every successful save; ``state`` is the driver's own JSON (None when it
    needs none)."""

    offset: int
    version: int
    state: str | None


class UploadLedger(Protocol):
    """The store's window on the ``uploads`` table. The registry creates and
    deletes the rows; the store only reads and advances them."""

    async def load(self, upload_id: str) -> UploadRecord | None:
        """The upload's record, or None when there is no such session."""

    async def save(self, upload_id: str, version: int, offset: int, state: str | None) -> bool:
        """Set offset and state, and move the version on, only if the record is
        still at ``version``: one conditional UPDATE. False when another writer
        saved first (or the session is gone): the caller lost and must undo."""

    async def reserve(self, upload_id: str, count: int) -> int | None:
        """Take ``count`` consecutive numbers (S3 part numbers) no other caller
        will ever get for this upload; returns the first, or None when the
        session is gone. Does not change the version."""


@dataclass(frozen=True)
class Committed:
    """What a commit published: the blob's size, and the ledger version of
    the upload whose bytes it verified. The caller ends the session only if
    it is still at that version: a chunk saved since on another replica won."""

    size: int
    version: int


# -- how a blob is served ----------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    """The blob is this local file: serve it with ``sendfile``."""

    path: str
    size: int


@dataclass(frozen=True)
class Redirect:
    """Send the client here (a presigned URL) instead of the bytes."""

    url: str
    size: int


@dataclass(frozen=True)
class ByteStream:
    """Stream the bytes through the registry: ``read(offset, length)`` yields
    that span (Range requests ask for part of it)."""

    size: int
    read: Callable[[int, int], AsyncGenerator[bytes, None]]


BlobSource = LocalFile | Redirect | ByteStream


@dataclass(frozen=True)
class StoreHealth:
    ok: bool
    detail: dict[str, Any]


@dataclass
class SweepReport:
    """What :meth:`BlobStore.sweep` removed (or would remove): staged uploads
    by id (or object key), and how many bytes they held when known."""

    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0


# Awaited by put and commit between verifying a blob and publishing it.
BeforePublish = Callable[[], Awaitable[None]]


class BlobStore(Protocol):
    # -- committed blobs -----------------------------------------------------

    async def stat(self, digest: Digest) -> int | None:
        """Size of a committed blob, or None when it is absent."""

    async def open(self, digest: Digest, redirect: bool = True) -> BlobSource | None:
        """How to serve a committed blob, or None when it is absent. A driver
        that serves by redirect answers :class:`Redirect` only when ``redirect``
        is true (a GET; a HEAD is answered by the registry itself)."""

    def read(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The blob's bytes from ``offset``, ``length`` of them (to the end when
        None), in pieces of at most a few MiB. Raises BlobMissing when absent.
        Close it (``aclose``) when stopping early, to release its connection."""

    async def read_small(self, digest: Digest, limit: int) -> bytes | None:
        """A whole blob of at most ``limit`` bytes (a signature payload, a
        bundle); None when it is absent or larger."""

    async def put(
        self,
        digest: Digest,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        before_publish: BeforePublish | None = None,
    ) -> int:
        """Store a whole blob whose digest is known before its bytes (a
        monolithic upload) without an upload session; returns its size.
        Raises DigestMismatch or TruncatedBody and keeps nothing when the bytes
        are not that blob; the blob becomes visible only after verification.
        Storing content that is already there succeeds and keeps one copy.
        ``before_publish`` is awaited once the bytes are verified and before
        they become visible (or before a copy already there is trusted): the
        caller pins the blob against garbage collection there; if it raises,
        nothing is published."""

    async def delete(self, digest: Digest) -> None:
        """Remove a blob; removing an absent one succeeds."""

    def walk(self) -> AsyncIterator[tuple[Digest, int]]:
        """Every committed blob with its size (for garbage collection)."""

    # -- uploads ---------------------------------------------------------------

    async def create_upload(self, upload_id: str) -> None:
        """Prepare staging for a new upload, before its ledger row is written
        (the row starts at offset 0, version 0, no state)."""

    async def append(
        self,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        offset: int | None = None,
    ) -> int:
        """Append a request body at the upload's current end; returns the new
        offset. ``offset``, when given, is where the client says the chunk
        starts: OffsetMismatch unless the ledger says the same, and
        OffsetMismatch too when another append saved first. A body shorter or
        longer than ``expected_length`` raises TruncatedBody and leaves the
        upload as it was; a streamed body cut short keeps the prefix that
        arrived. UploadMissing when the session or its staged bytes are gone."""

    async def commit(
        self,
        upload_id: str,
        digest: Digest,
        before_publish: BeforePublish | None = None,
        chunks: AsyncIterable[bytes] | None = None,
        expected_length: int | None = None,
        offset: int | None = None,
    ) -> Committed:
        """Verify the staged bytes against ``digest`` (hashing them again when
        this process did not see them all), then make them durable and visible
        as that blob, atomically. ``chunks`` is a last chunk
        (a PUT with a body), at ``offset`` as in :meth:`append`: it counts only
        together with the commit. A refused commit (DigestMismatch,
        OffsetMismatch, TruncatedBody, UploadTooLarge, a cut body) publishes
        nothing and leaves the upload as it was: same offset, same bytes, and
        it takes appends and commits as before. Committing content that is
        already stored keeps one copy. The ledger row is the caller's to
        delete afterwards. ``before_publish`` as in :meth:`put`."""

    async def discard_upload(self, upload_id: str) -> None:
        """Drop an upload's staged bytes; dropping an unknown upload succeeds."""

    async def sweep(
        self, live: Collection[str], older_than: datetime, dry_run: bool = False
    ) -> SweepReport:
        """Remove staged bytes that belong to no live session and were last
        written before ``older_than``: leftovers of crashes and of abandoned
        monolithic uploads. Staging younger than that may belong to a request
        in flight on another replica and stays."""

    # -- the store itself ------------------------------------------------------

    def health(self) -> StoreHealth:
        """The store's state for /health, without a round trip to the backend."""

    async def check(self) -> None:
        """Reach the backend once (at start-up); raises StorageError with one
        line saying what is wrong."""

    async def close(self) -> None:
        """Finish saving cut uploads and release connections and threads."""
