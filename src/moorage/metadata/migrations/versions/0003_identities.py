"""users become identities with account memberships; who locked an API key

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_members",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_account_members_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_account_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "user_id", name=op.f("pk_account_members")),
    )
    with op.batch_alter_table("account_members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_account_members_user_id"), ["user_id"], unique=False)
    op.execute(
        "INSERT INTO account_members (account_id, user_id, created_at) "
        "SELECT account_id, id, created_at FROM users"
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_account_id"))
        batch_op.drop_constraint(batch_op.f("fk_users_account_id_accounts"), type_="foreignkey")
        batch_op.drop_column("account_id")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("locked_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("locked_by")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("account_id", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE users SET account_id = (SELECT MIN(account_id) FROM account_members "
        "WHERE account_members.user_id = users.id)"
    )
    op.drop_table("account_members")
