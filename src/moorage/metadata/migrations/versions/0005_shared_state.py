"""state that replicas share: signing keys, failed sign-ins, the installation's
settings; identical policies made impossible

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_IDENTICAL = (
    "p2.account_id = policies.account_id AND p2.subject_kind = policies.subject_kind "
    "AND p2.subject_id = policies.subject_id AND p2.roles = policies.roles "
    "AND p2.service_name = policies.service_name "
    "AND coalesce(p2.region, '') = coalesce(policies.region, '') "
    "AND coalesce(p2.resource, '') = coalesce(policies.resource, '')"
)


def upgrade() -> None:
    # ES256 signing keys, every replica's: the private key sealed (AES-GCM) under
    # a key derived from the server secret, which every replica is given.
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_signing_keys_created_at"), ["created_at"])
    # Failed (and not yet forgiven) sign-in attempts of the last minute, per
    # throttle key ("ip:...", "user:...", "cred:..."), pruned as they age.
    op.create_table(
        "signin_failures",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signin_failures")),
    )
    with op.batch_alter_table("signin_failures", schema=None) as batch_op:
        batch_op.create_index("ix_signin_failures_key_at", ["key", "at"])
        batch_op.create_index(batch_op.f("ix_signin_failures_at"), ["at"])
    # Settings of the installation as a whole, e.g. the check value of the
    # server secret, so that a replica given another secret refuses to start.
    op.create_table(
        "installation",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_installation")),
    )
    # Two identical policies could be created at once by two replicas (the check
    # and the insert are separate statements): keep the oldest of any such pair,
    # then let the database refuse the second.
    op.execute(
        sa.text(
            "DELETE FROM policies WHERE EXISTS (SELECT 1 FROM policies p2 WHERE "
            f"{_IDENTICAL} AND (p2.created_at < policies.created_at OR "
            "(p2.created_at = policies.created_at AND p2.id < policies.id)))"
        )
    )
    op.create_index(
        "uq_policies_identical",
        "policies",
        [
            "account_id",
            "subject_kind",
            "subject_id",
            "roles",
            "service_name",
            sa.text("coalesce(region, '')"),
            sa.text("coalesce(resource, '')"),
        ],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_policies_identical", table_name="policies")
    op.drop_table("installation")
    with op.batch_alter_table("signin_failures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signin_failures_at"))
        batch_op.drop_index("ix_signin_failures_key_at")
    op.drop_table("signin_failures")
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signing_keys_created_at"))
    op.drop_table("signing_keys")
