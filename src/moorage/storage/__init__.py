"""Blob storage: the content-addressed store and the upload staging area.

Drivers implement :class:`BlobStore` (contracts in ``base.py``). Only the
registry services call them; storage knows nothing about repositories, tags
or HTTP."""

from moorage.storage.base import (
    BeforePublish,
    BlobMissing,
    BlobSource,
    BlobStore,
    ByteStream,
    Committed,
    DigestMismatch,
    LocalFile,
    OffsetMismatch,
    Redirect,
    StorageError,
    StoreHealth,
    SweepReport,
    TruncatedBody,
    UploadLedger,
    UploadMissing,
    UploadRecord,
    UploadTooLarge,
)
from moorage.storage.filesystem import FilesystemBlobStore

__all__ = [
    "BeforePublish",
    "BlobMissing",
    "BlobSource",
    "BlobStore",
    "ByteStream",
    "Committed",
    "DigestMismatch",
    "FilesystemBlobStore",
    "LocalFile",
    "OffsetMismatch",
    "Redirect",
    "StorageError",
    "StoreHealth",
    "SweepReport",
    "TruncatedBody",
    "UploadLedger",
    "UploadMissing",
    "UploadRecord",
    "UploadTooLarge",
]
