"""The metadata schema. Blob bytes live in the blob store; everything that
says which repository holds what (links, manifests, tags, uploads) lives here
and changes only inside transactions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Repository(Base):
    """A repository of one regional registry: the same name in two regions is
    two repositories."""

    __tablename__ = "repositories"
    __table_args__ = (UniqueConstraint("region", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    region: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    namespace: Mapped[str] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Blob(Base):
    """A blob in the content-addressed store (one row per content).

    The row is the blob's lock between writers and the garbage collector: a
    writer pins it (``pending`` when new, ``touched_at`` now, a fresh
    ``epoch`` when created) before it publishes bytes, and links it after; the
    collector deletes bytes only of a row it marked ``deleting``, which it
    does only when nothing links or references the blob and nobody touched
    it for the grace period (see ``registry/collector.py``)."""

    __tablename__ = "blobs"
    digest: Mapped[str] = mapped_column(String(140), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), default="live", server_default="live")
    touched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    epoch: Mapped[str | None] = mapped_column(String(32), nullable=True)


class RepositoryBlob(Base):
    """The link that makes a blob visible in one repository. ``created_at``
    is when it was last linked: garbage collection drops a link that no
    manifest of its repository references once that is older than the grace
    period, so a client has that long between its blob and its manifest."""

    __tablename__ = "repository_blobs"
    __table_args__ = (Index("ix_repository_blobs_digest", "digest"),)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(
        ForeignKey("blobs.digest", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Manifest(Base):
    """A manifest stored byte-exact, with what the API needs pre-extracted."""

    __tablename__ = "manifests"
    __table_args__ = (
        UniqueConstraint("repository_id", "digest"),
        Index("ix_manifests_subject", "repository_id", "subject_digest"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(140))
    media_type: Mapped[str] = mapped_column(String(255))
    artifact_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    subject_digest: Mapped[str | None] = mapped_column(String(140), nullable=True)
    annotations: Mapped[str | None] = mapped_column(String, nullable=True)
    size: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ManifestReference(Base):
    """What a manifest points at: blobs (config, layers) or child manifests."""

    __tablename__ = "manifest_references"
    manifest_id: Mapped[int] = mapped_column(
        ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(String(140), primary_key=True, index=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)


class Tag(Base):
    __tablename__ = "tags"
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    manifest_id: Mapped[int] = mapped_column(
        ForeignKey("manifests.id", ondelete="CASCADE"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Upload(Base):
    """An open upload session; its bytes are staged in the blob store, and
    where it stands is here, so any replica can continue it: ``offset`` (the
    bytes received, where the next chunk starts), ``version`` (moves on with
    each save; the conditional UPDATE on it decides which of two writers
    wins), ``next_part`` (S3 part numbers handed out so far) and ``state``
    (the storage driver's own JSON: S3's parts with their ETags and sizes)."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    region: Mapped[str] = mapped_column(String(64))
    repository: Mapped[str] = mapped_column(String(255))
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)  # who started it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    offset: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_part: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    state: Mapped[str | None] = mapped_column(Text, nullable=True)


class SimpleSignature(Base):
    """A Red Hat simple signature of a manifest, stored through the registry's
    signature extension (``/extensions/v2/<name>/signatures/<digest>``)."""

    __tablename__ = "simple_signatures"
    __table_args__ = (UniqueConstraint("repository_id", "manifest_digest", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), index=True
    )
    manifest_digest: Mapped[str] = mapped_column(String(140))
    name: Mapped[str] = mapped_column(String(300))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Signer(Base):
    """A public key a namespace trusts to sign its images, by name: what turns a
    signature's key into someone the image list can name."""

    __tablename__ = "signers"
    __table_args__ = (UniqueConstraint("region", "namespace", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    region: Mapped[str] = mapped_column(String(64))
    namespace: Mapped[str] = mapped_column(String(30))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))  # "cosign" or "gpg"
    public_key: Mapped[str] = mapped_column(String)
    key_ids: Mapped[str] = mapped_column(String(1000))  # comma-separated, as signatures name keys
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Lease(Base):
    """A job one replica runs at a time (the scheduled garbage collector): the
    holder renews it before ``expires_at``; another takes it over after."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
