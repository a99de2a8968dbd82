"""upload offsets and driver state in the database, so any replica can resume an upload

Revision ID: 0006
Revises: 0005

Before this revision an upload's offset was the size of its staging file.
Sessions open across the upgrade start again at offset 0 (the client's next
chunk gets 416 with ``Range: 0-0`` and it re-sends from the start).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("offset", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("next_part", sa.Integer(), nullable=False, server_default="1")
        )
        batch_op.add_column(sa.Column("state", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_column("state")
        batch_op.drop_column("next_part")
        batch_op.drop_column("version")
        batch_op.drop_column("offset")
