"""Wires settings to storage, metadata and services, and serves them with Granian.

Granian's supervisor process owns the socket and signals; one worker process
runs the event loop that serves the RSGI application built by :func:`create_app`."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import text

from moorage.config import ENV_SETTINGS, Settings
from moorage.http import RegistryApp
from moorage.http.access import OpenAccess
from moorage.metadata import MetadataStore, create_metadata_engine, sqlite_url, upgrade
from moorage.registry import BlobService, ManifestService
from moorage.storage import FilesystemBlobStore

log = logging.getLogger("moorage")


def configure_logging(level: str, access_log: bool) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("moorage.access").setLevel(logging.INFO if access_log else logging.WARNING)


def open_registry(settings: Settings) -> tuple[BlobService, ManifestService, MetadataStore]:
    data = settings.data_path
    data.mkdir(parents=True, exist_ok=True)
    engine = create_metadata_engine(settings.database_url or sqlite_url(data))
    upgrade(engine)
    metadata = MetadataStore(engine)
    store = FilesystemBlobStore(data)
    return BlobService(store, metadata), ManifestService(metadata, settings.max_manifest_bytes), metadata


def create_app() -> RegistryApp:
    """Granian's factory: runs in the worker process."""
    settings = Settings.from_json(os.environ[ENV_SETTINGS])
    configure_logging(settings.log_level, settings.access_log)
    blobs, manifests, metadata = open_registry(settings)
    report = blobs.reconcile()
    log.info("uploads after restart: %s", report)
    data = settings.data_path

    def health() -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            with metadata.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # health must report, not raise
            checks["database"] = f"error: {type(exc).__name__}"
        usage = shutil.disk_usage(data)
        checks["storage"] = "ok" if os.access(data, os.W_OK) else "error: not writable"
        checks["storage_free_bytes"] = usage.free
        ok = checks["database"] == "ok" and checks["storage"] == "ok"
        return {"status": "ok" if ok else "error", **checks}

    if settings.auth == "none":
        log.warning(
            "authentication is OFF (--auth none): anyone who reaches %s:%s can pull, push "
            "and delete",
            settings.host,
            settings.port,
        )
    return RegistryApp(blobs, manifests, OpenAccess(), health)


def serve(settings: Settings) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    configure_logging(settings.log_level, settings.access_log)
    os.environ[ENV_SETTINGS] = settings.to_json()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    log.info(
        "moorage serving on http://%s:%s, data in %s", settings.host, settings.port, settings.data_path
    )
    Granian(
        "moorage.server:create_app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,
        factory=True,
        workers=1,
        loop=Loops.uvloop,
        log_enabled=True,
        log_access=False,
        workers_kill_timeout=settings.shutdown_timeout,
    ).serve()
