"""Alembic environment: migrations run on the connection Moorage hands over."""

from __future__ import annotations

from alembic import context

from moorage.metadata import advisory_models, iam_models, shared_models  # noqa: F401 - registers their tables
from moorage.metadata.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through moorage.metadata.migrate")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
