"""Registry metadata: repositories, blob links, manifests, tags and uploads,
in SQLite by default and in any database SQLAlchemy 2 supports."""

from moorage.metadata.database import DatabaseThreads, create_metadata_engine
from moorage.metadata.migrate import upgrade
from moorage.metadata.store import (
    BlobsUnlinked,
    ImageRow,
    LinkRef,
    MetadataStore,
    NamespaceChanged,
    NewManifest,
    Referrer,
    RepoRef,
    SignatureExists,
    SignerRecord,
    StoredManifest,
    StoredSignature,
    TagMoved,
    TagWas,
    UploadMoved,
    UploadSession,
    sqlite_url,
)

__all__ = [
    "BlobsUnlinked",
    "DatabaseThreads",
    "ImageRow",
    "LinkRef",
    "MetadataStore",
    "NamespaceChanged",
    "NewManifest",
    "Referrer",
    "RepoRef",
    "SignatureExists",
    "SignerRecord",
    "StoredManifest",
    "StoredSignature",
    "TagMoved",
    "TagWas",
    "UploadMoved",
    "UploadSession",
    "create_metadata_engine",
    "sqlite_url",
    "upgrade",
]
