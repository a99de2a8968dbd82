"""Tables of advisory data (migration 0009).

A feed is imported once into ``advisory_feeds`` with its records and the
(ecosystem, name) pairs they name; a snapshot is the set of feeds current at
one moment. A new snapshot shares every feed it did not re-import with the
one before, so importing one small feed copies no rows of the others."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.models import Base

_ID = BigInteger().with_variant(Integer(), "sqlite")


class AdvisorySnapshotRow(Base):
    __tablename__ = "advisory_snapshots"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AdvisoryFeedRow(Base):
    """One import of one source."""

    __tablename__ = "advisory_feeds"
    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))
    records: Mapped[int] = mapped_column(Integer)
    newest_modified: Mapped[str] = mapped_column(String(40))
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    digest: Mapped[str] = mapped_column(String(64))


class AdvisorySnapshotFeedRow(Base):
    __tablename__ = "advisory_snapshot_feeds"
    snapshot_id: Mapped[str] = mapped_column(
        ForeignKey("advisory_snapshots.id", ondelete="CASCADE"), primary_key=True
    )
    feed_id: Mapped[int] = mapped_column(
        ForeignKey("advisory_feeds.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class AdvisoryRecordRow(Base):
    """One OSV record as the store keeps it (canonical JSON), keyed by its
    feed, its path in the feed and its ID."""

    __tablename__ = "advisory_records"
    __table_args__ = (Index("ix_advisory_records_feed", "feed_id", "id"),)
    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("advisory_feeds.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1000))
    advisory_id: Mapped[str] = mapped_column(String(200))
    modified: Mapped[str] = mapped_column(String(40))
    digest: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)


class AdvisoryPackageRow(Base):
    """A record names this (ecosystem, name), as ``ecosystems.index_key`` keys it."""

    __tablename__ = "advisory_packages"
    __table_args__ = (Index("ix_advisory_packages_lookup", "ecosystem", "name", "feed_id"),)
    record_id: Mapped[int] = mapped_column(
        ForeignKey("advisory_records.id", ondelete="CASCADE"), primary_key=True
    )
    ecosystem: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(500), primary_key=True)
    feed_id: Mapped[int] = mapped_column(
        ForeignKey("advisory_feeds.id", ondelete="CASCADE"), index=True
    )
