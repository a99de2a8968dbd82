"""users become identities; memberships hold the account's password; who locked an API key

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import base64
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ADMIN_LOCK = "administrator"  # keys locked before locks were attributed


def upgrade() -> None:
    op.create_table(
        "account_members",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
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
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("salt", sa.String(length=64), nullable=True))

    # Each user had one account and one "scrypt$salt$hash" password: the salt
    # becomes the identity's, the hash the membership's.
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, account_id, password_hash, created_at FROM users")
    ).all()
    for user_id, account_id, stored, created_at in rows:
        parts = stored.split("$")
        salt = parts[1] if len(parts) == 3 else base64.b64encode(secrets.token_bytes(16)).decode()
        bind.execute(
            sa.text("UPDATE users SET salt = :salt WHERE id = :id"), {"salt": salt, "id": user_id}
        )
        bind.execute(
            sa.text(
                "INSERT INTO account_members (account_id, user_id, password_hash, created_at) "
                "VALUES (:account, :user, :hash, :at)"
            ),
            {"account": account_id, "user": user_id, "hash": stored, "at": created_at},
        )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("salt", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_index(batch_op.f("ix_users_account_id"))
        batch_op.drop_constraint(batch_op.f("fk_users_account_id_accounts"), type_="foreignkey")
        batch_op.drop_column("account_id")
        batch_op.drop_column("password_hash")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("locked_by", sa.String(length=64), nullable=True))
    # Who locked a key before now is not known: take it for an administrator's lock,
    # so that its owner alone cannot undo it.
    op.execute(sa.text(f"UPDATE api_keys SET locked_by = '{ADMIN_LOCK}' WHERE locked"))


def downgrade() -> None:
    raise NotImplementedError("identities with several memberships cannot be folded back")
