"""simple signatures stored through the signature extension; a namespace's signers

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "simple_signatures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("manifest_digest", sa.String(length=140), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repositories.id"],
            name=op.f("fk_simple_signatures_repository_id_repositories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_simple_signatures")),
        sa.UniqueConstraint(
            "repository_id",
            "manifest_digest",
            "name",
            name=op.f("uq_simple_signatures_repository_id"),
        ),
    )
    with op.batch_alter_table("simple_signatures", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_simple_signatures_repository_id"), ["repository_id"], unique=False
        )
    op.create_table(
        "signers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("namespace", sa.String(length=30), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("public_key", sa.String(), nullable=False),
        sa.Column("key_ids", sa.String(length=1000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signers")),
        sa.UniqueConstraint("region", "namespace", "name", name=op.f("uq_signers_region")),
    )


def downgrade() -> None:
    op.drop_table("signers")
    op.drop_table("simple_signatures")
