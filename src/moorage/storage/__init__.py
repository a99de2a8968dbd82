"""Blob storage: the content-addressed store and the upload staging area.

Drivers implement :class:`BlobStore`. Only the registry services call them;
storage knows nothing about repositories, tags or HTTP."""

from moorage.storage.base import (
    BlobStore,
    DigestMismatch,
    OffsetMismatch,
    TruncatedBody,
    UploadMissing,
)
from moorage.storage.filesystem import FilesystemBlobStore

__all__ = [
    "BlobStore",
    "DigestMismatch",
    "FilesystemBlobStore",
    "OffsetMismatch",
    "TruncatedBody",
    "UploadMissing",
]
