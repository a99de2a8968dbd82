"""garbage collection while serving: blob states, link times by digest, leases

Revision ID: 0007
Revises: 0006

Blobs get the state, touch time and epoch through which writers and the
collector agree on who may delete bytes; existing blobs are live and count as
touched when they were created. Links get an index by digest (the collector
asks whether anything still links a blob), and one table holds leases, so one
replica at a time runs the scheduled collector.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("state", sa.String(length=16), nullable=False, server_default="live")
        )
        batch_op.add_column(sa.Column("touched_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("epoch", sa.String(length=32), nullable=True))
    op.execute("UPDATE blobs SET touched_at = created_at")
    op.create_index("ix_repository_blobs_digest", "repository_blobs", ["digest"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_repository_blobs_digest", table_name="repository_blobs")
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_column("epoch")
        batch_op.drop_column("touched_at")
        batch_op.drop_column("state")
