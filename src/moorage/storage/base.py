"""The storage driver interface, kept small so an object-store driver can follow."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterator
from typing import Protocol

from moorage.oci.digest import Digest


class UploadMissing(LookupError):
    """The upload session has no staged data (unknown, cancelled or committed)."""


class DigestMismatch(ValueError):
    """The staged bytes do not hash to the digest the client claimed."""


class TruncatedBody(ValueError):
    """The request body ended before the length the client announced; nothing was kept."""


class OffsetMismatch(ValueError):
    """A chunk was sent for an offset the upload is no longer (or not yet) at."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the upload is at offset {size}")
        self.size = size


class BlobStore(Protocol):
    def blob_size(self, digest: Digest) -> int | None:
        """Size of a committed blob, or None when it is absent."""

    def local_path(self, digest: Digest) -> str | None:
        """A local file holding the blob, for zero-copy serving, when the driver has one."""

    def delete_blob(self, digest: Digest) -> None: ...

    def iter_blobs(self) -> Iterator[tuple[Digest, int]]: ...

    def create_upload(self, upload_id: str) -> None: ...

    def upload_size(self, upload_id: str) -> int | None: ...

    async def append(
        self,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        offset: int | None = None,
    ) -> int:
        """Append a request body; returns the new size. A body shorter or longer than
        ``expected_length`` raises TruncatedBody and leaves the upload as it was.
        With ``offset``, the upload must be exactly that long when the append
        begins, checked under the same lock as the append (OffsetMismatch
        otherwise): of two chunks claiming one range, one wins."""

    async def commit(self, upload_id: str, digest: Digest) -> int:
        """Verify, make durable and publish the staged bytes as blob ``digest``."""

    def discard_upload(self, upload_id: str) -> None: ...

    def iter_uploads(self) -> Iterator[str]: ...
