"""Stores and feeds for the advisory tests: the store on SQLite, or on the
session's PostgreSQL when the suite runs with MOORAGE_TEST_DATABASE=postgres."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from moorage.metadata import create_metadata_engine, upgrade
from moorage.metadata.advisory_store import AdvisoryStore
from tests.postgres import cluster, use_postgres

FEEDS = Path(__file__).parent / "data" / "va" / "feeds"


def database_url(tmp_path: Path, key: str) -> str:
    if use_postgres():
        return cluster().create_database("va_" + hashlib.sha256(key.encode()).hexdigest()[:16])
    return f"sqlite:///{tmp_path / (key.replace('/', '_') + '.db')}"


def make_store(tmp_path: Path, key: str) -> Iterator[AdvisoryStore]:
    engine = create_metadata_engine(database_url(tmp_path, key))
    upgrade(engine)
    yield AdvisoryStore(engine)
    engine.dispose()


def osv_zip(source: Path, destination: Path) -> Path:
    """An osv.dev-shaped ``<Ecosystem>/all.zip``: every record at the root."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*.json")):
            archive.write(path, path.name)
    return destination


def row_counts(store: AdvisoryStore) -> dict[str, int]:
    tables = ["advisory_snapshots", "advisory_feeds", "advisory_snapshot_feeds"]
    tables += ["advisory_records", "advisory_packages"]
    with store.engine.connect() as conn:
        return {t: conn.scalar(sa.text(f"SELECT count(*) FROM {t}")) or 0 for t in tables}
