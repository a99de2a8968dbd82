"""advisory data for the Vulnerability Advisor: snapshots of imported feeds

Revision ID: 0009
Revises: 0008

Feeds (one import of one source) with their records and the package names
the records mention; snapshots are sets of feeds, so a new snapshot shares
the feeds it did not re-import with the one before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "advisory_snapshots",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "advisory_feeds",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("newest_modified", sa.String(40), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
    )
    op.create_table(
        "advisory_snapshot_feeds",
        sa.Column(
            "snapshot_id",
            sa.String(36),
            sa.ForeignKey("advisory_snapshots.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "feed_id",
            _ID,
            sa.ForeignKey("advisory_feeds.id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_index("ix_advisory_snapshot_feeds_feed_id", "advisory_snapshot_feeds", ["feed_id"])
    op.create_table(
        "advisory_records",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column(
            "feed_id", _ID, sa.ForeignKey("advisory_feeds.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("advisory_id", sa.String(200), nullable=False),
        sa.Column("modified", sa.String(40), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_advisory_records_feed", "advisory_records", ["feed_id", "id"])
    op.create_table(
        "advisory_packages",
        sa.Column(
            "record_id",
            _ID,
            sa.ForeignKey("advisory_records.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("ecosystem", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(500), primary_key=True),
        sa.Column(
            "feed_id", _ID, sa.ForeignKey("advisory_feeds.id", ondelete="CASCADE"), nullable=False
        ),
    )
    op.create_index(
        "ix_advisory_packages_lookup", "advisory_packages", ["ecosystem", "name", "feed_id"]
    )
    op.create_index("ix_advisory_packages_feed_id", "advisory_packages", ["feed_id"])


def downgrade() -> None:
    op.drop_table("advisory_packages")
    op.drop_table("advisory_records")
    op.drop_table("advisory_snapshot_feeds")
    op.drop_table("advisory_feeds")
    op.drop_table("advisory_snapshots")
