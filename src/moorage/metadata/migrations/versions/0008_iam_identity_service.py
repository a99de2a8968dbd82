"""IAM administration becomes its own service, iam-identity

Revision ID: 0008
Revises: 0007

Before, Administrator on any service managed the whole account (members,
service IDs, every API key, every policy). Now Administrator on a service
manages policies on that service only, and members, service IDs and others'
keys take Editor or Administrator on iam-identity. So that everyone keeps
what they could do and no more:

- a subject with Administrator, unlimited by region or namespace, on every
  service there was (the shape every account's first administrator has)
  gets Administrator on iam-identity: it still administers the account;
- a subject with such a policy on some services only gets Editor on
  iam-identity: it still manages members and service IDs, but gives access
  only to the services it administers, and acts only for identities whose
  every policy it administers.

Policies that named a region or namespace never made anyone an administrator
and give nothing here. Downgrading removes the iam-identity policies.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_OLD_SERVICES = frozenset({"container-registry", "containers-kubernetes"})
_IAM_IDENTITY = "iam-identity"


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT account_id, subject_kind, subject_id, roles, service_name FROM policies "
            "WHERE region IS NULL AND resource IS NULL"
        )
    ).all()
    administered: dict[tuple[str, str, str], set[str]] = {}
    for account_id, kind, subject_id, roles, service in rows:
        if "Administrator" in roles.split(",") and service in _OLD_SERVICES:
            administered.setdefault((account_id, kind, subject_id), set()).add(service)
    now = datetime.now(UTC)
    policies = sa.table(
        "policies",
        sa.column("id", sa.String),
        sa.column("account_id", sa.String),
        sa.column("subject_kind", sa.String),
        sa.column("subject_id", sa.String),
        sa.column("roles", sa.String),
        sa.column("service_name", sa.String),
        sa.column("region", sa.String),
        sa.column("resource_type", sa.String),
        sa.column("resource", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    for (account_id, kind, subject_id), services in sorted(administered.items()):
        conn.execute(
            policies.insert().values(
                id=f"Policy-{uuid.uuid4()}",
                account_id=account_id,
                subject_kind=kind,
                subject_id=subject_id,
                roles="Administrator" if services == _OLD_SERVICES else "Editor",
                service_name=_IAM_IDENTITY,
                region=None,
                resource_type=None,
                resource=None,
                created_at=now,
            )
        )


def downgrade() -> None:
    op.execute(f"DELETE FROM policies WHERE service_name = '{_IAM_IDENTITY}'")
