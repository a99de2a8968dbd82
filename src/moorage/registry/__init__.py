"""The registry services the HTTP layer calls: blobs, uploads, manifests,
tags, referrers and the catalog."""

from moorage.metadata import RepoRef
from moorage.registry.blobs import BlobHandle, BlobService, UploadState, range_header
from moorage.registry.errors import RegistryError
from moorage.registry.manifests import ManifestService, Page, PutResult

__all__ = [
    "BlobHandle",
    "BlobService",
    "ManifestService",
    "Page",
    "PutResult",
    "RegistryError",
    "RepoRef",
    "UploadState",
    "range_header",
]
