"""Tables of the Vulnerability Advisor's index (migration 0010): the work
queue, layer indexes, reports with the packages they hold, exemptions and
status changes.

Values are JSON text (``layer_to_json``, ``report_to_json``): the index is
read back whole, never queried inside, except for what has its own column."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.models import Base

_ID = BigInteger().with_variant(Integer(), "sqlite")


class VaQueueItem(Base):
    """One piece of work any replica may take: index an image (``kind``
    "index") or re-assess stored reports ("reassess", after a new advisory
    snapshot or a changed exemption). ``key`` makes enqueuing idempotent.

    A worker holds an item while ``lease_until`` is ahead; one killed with it
    leaves the lease to expire, and the next taker counts another attempt.
    Past the attempt limit the item ends ``failed`` with its ``reason``."""

    __tablename__ = "va_queue"
    __table_args__ = (Index("ix_va_queue_state_lease", "state", "lease_until"),)
    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(700), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    region: Mapped[str] = mapped_column(String(64))
    repository: Mapped[str] = mapped_column(String(255))
    manifest_digest: Mapped[str] = mapped_column(String(140))  # what was pushed
    image_digest: Mapped[str] = mapped_column(String(140))  # the platform's image manifest
    platform: Mapped[str] = mapped_column(String(100))
    payload: Mapped[str | None] = mapped_column(Text, nullable=True)  # a re-assessment's scope
    state: Mapped[str] = mapped_column(String(16))  # queued, leased, done, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    holder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class VaLayer(Base):
    """What the detectors found in one layer, valid for every image holding
    it; a newer ``INDEXER_VERSION`` indexes the layer again."""

    __tablename__ = "va_layers"
    digest: Mapped[str] = mapped_column(String(140), primary_key=True)
    indexer_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class VaReport(Base):
    """The verdict on one platform of one pushed manifest. ``layers`` and
    ``image_config`` keep what re-assessment needs without the registry."""

    __tablename__ = "va_reports"
    __table_args__ = (
        Index(
            "uq_va_reports_key",
            "region",
            "repository",
            "manifest_digest",
            "platform",
            unique=True,
        ),
    )
    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    region: Mapped[str] = mapped_column(String(64))
    repository: Mapped[str] = mapped_column(String(255))
    namespace: Mapped[str] = mapped_column(String(30), index=True)
    manifest_digest: Mapped[str] = mapped_column(String(140))
    platform: Mapped[str] = mapped_column(String(100))
    image_digest: Mapped[str] = mapped_column(String(140))
    status: Mapped[str] = mapped_column(String(16))
    snapshot: Mapped[str] = mapped_column(String(64))
    layers: Mapped[str] = mapped_column(Text)  # JSON list of layer digests, bottom first
    image_config: Mapped[str] = mapped_column(Text)  # JSON: the config's "config" object
    report: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class VaReportPackage(Base):
    """The (ecosystem, name) pairs of a report's packages: a new snapshot
    re-assesses only reports holding a pair it touched."""

    __tablename__ = "va_report_packages"
    __table_args__ = (Index("ix_va_report_packages_pair", "ecosystem", "name"),)
    report_id: Mapped[int] = mapped_column(
        ForeignKey("va_reports.id", ondelete="CASCADE"), primary_key=True
    )
    ecosystem: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(300), primary_key=True)


class VaExemption(Base):
    """An issue an account accepts within a scope of one region."""

    __tablename__ = "va_exemptions"
    __table_args__ = (Index("ix_va_exemptions_account_region", "account", "region"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account: Mapped[str] = mapped_column(String(64))
    region: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(400))
    issue_type: Mapped[str] = mapped_column(String(16))
    issue_id: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(1000))
    expires: Mapped[str] = mapped_column(String(40))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class VaEvent(Base):
    """A report's status changed. A plain table for now: issue 16 brings
    events proper (delivery, webhooks); until then this is what they read."""

    __tablename__ = "va_events"
    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    region: Mapped[str] = mapped_column(String(64))
    repository: Mapped[str] = mapped_column(String(255))
    manifest_digest: Mapped[str] = mapped_column(String(140))
    platform: Mapped[str] = mapped_column(String(100))
    old_status: Mapped[str] = mapped_column(String(16))
    new_status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
