"""Wires settings to storage, metadata and services, and serves them with aiohttp.

One process, one event loop: the standard asyncio loop, whose
``loop.sendfile`` is zero-copy (uvloop's falls back to read and write, which
the benchmark showed costs a third of blob GET throughput)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import text

from moorage.auth.keys import KeyRing
from moorage.auth.pullcheck import PullCheck
from moorage.auth.ratelimit import FailureLimiter
from moorage.auth.signin import SignIn
from moorage.auth.tokens import TokenService, principal_of
from moorage.config import ConfigError, Settings
from moorage.datadir import prepare_data_dir, restrict_umask
from moorage.http import RegistryApp
from moorage.http.access import Identity, OpenAccess, TokenAccess
from moorage.http.access_log import JsonAccessLogger
from moorage.http.listener import GuardedSite, Limits, Listener
from moorage.http.management import ManagementApi
from moorage.http.token_endpoint import TokenEndpoint
from moorage.iam.roles import PULL
from moorage.iam.secrets import PRESERVE_NOTICE, SecretKeeper, load_or_create_key
from moorage.iam.service import IamService
from moorage.metadata import MetadataStore, create_metadata_engine, sqlite_url, upgrade
from moorage.metadata.iam_store import IamStore
from moorage.regions import GLOBAL, LOOPBACK_HOSTS, PublicUrl, Region, RegionMap
from moorage.registry import BlobService, ManifestService
from moorage.registry.blobs import MetadataLedger
from moorage.registry.namespaces import NamespaceService
from moorage.registry.signatures import SignatureService
from moorage.storage import BlobStore, FilesystemBlobStore, StorageError
from moorage.tls import ServerCertificates, TlsFiles, is_loopback

log = logging.getLogger("moorage")


def configure_logging(level: str, access_log: bool) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("moorage.access").setLevel(logging.INFO if access_log else logging.WARNING)


@dataclass(frozen=True)
class Components:
    blobs: BlobService
    manifests: ManifestService
    metadata: MetadataStore
    iam: IamService
    namespaces: NamespaceService
    signatures: SignatureService
    regions: RegionMap


def open_registry(settings: Settings) -> Components:
    data = settings.data_path
    prepare_data_dir(data)
    engine = create_metadata_engine(settings.database_url or sqlite_url(data))
    upgrade(engine)
    metadata = MetadataStore(engine)
    store = open_store(settings, metadata)
    regions = regions_of(settings)
    keeper = SecretKeeper(load_or_create_key(data / "secrets" / "server.key"))
    iam = IamService(IamStore(engine), keeper, tuple(regions.regions), settings.service_id_limit)
    manifests = ManifestService(metadata, settings.max_manifest_bytes)
    return Components(
        BlobService(store, metadata),
        manifests,
        metadata,
        iam,
        NamespaceService(metadata, store),
        SignatureService(metadata, store, manifests),
        regions,
    )


def open_store(settings: Settings, metadata: MetadataStore) -> BlobStore:
    """The configured blob store, its upload offsets kept in ``metadata``. No
    connection is made here: the S3 client opens its own on first use. boto3
    is imported only when the driver is S3."""
    ledger = MetadataLedger(metadata)
    if settings.storage_driver != "s3":
        return FilesystemBlobStore(settings.data_path, ledger)
    from moorage.storage.s3 import S3BlobStore
    from moorage.storage.s3bucket import S3Bucket

    assert settings.s3_endpoint and settings.s3_bucket  # load_settings checked
    bucket = S3Bucket(
        settings.s3_endpoint,
        settings.s3_region,
        settings.s3_bucket,
        settings.s3_access_key or "",
        settings.s3_secret_key or "",
        settings.s3_session_token,
        path_style=settings.s3_path_style,
        ca_bundle=settings.s3_ca_bundle,
    )
    return S3BlobStore(
        bucket,
        ledger,
        prefix=settings.s3_prefix,
        part_size=settings.s3_part_size,
        redirect=settings.s3_redirect,
        redirect_expiry=settings.s3_redirect_expiry,
    )


def _bootstrap(iam: IamService, settings: Settings) -> None:
    """A fresh installation gets an account and an administrator; the key is
    shown once on the terminal, never in the log."""
    given = os.environ.get("MOORAGE_BOOTSTRAP_APIKEY") or None
    created = iam.bootstrap(settings.admin_email, given)
    if created is None:
        return
    log.info("created the administrator %s with API key %s", settings.admin_email, created.id)
    if given is None:
        sys.stdout.write(
            f"\nAdministrator {settings.admin_email}, API key {created.id}:\n\n"
            f"    {created.secret}\n\n{PRESERVE_NOTICE}\n\n"
        )
        sys.stdout.flush()


def create_app(settings: Settings) -> RegistryApp:
    parts = open_registry(settings)
    data = settings.data_path
    metadata = parts.metadata
    store = parts.blobs.store

    def health() -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            with metadata.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # health must report, not raise
            checks["database"] = f"error: {type(exc).__name__}"
        if not os.access(data, os.W_OK):
            checks["database"] = "error: data directory not writable"
        stored = store.health()
        checks.update(stored.detail)
        ok = checks["database"] == "ok" and stored.ok
        return {"status": "ok" if ok else "error", **checks}

    if settings.auth == "none":
        log.warning(
            "authentication is OFF (--auth none): anyone who reaches %s:%s can pull, push "
            "and delete",
            settings.host,
            settings.port,
        )
        return RegistryApp(
            parts.blobs,
            parts.manifests,
            OpenAccess(),
            health,
            parts.regions,
            encrypted=settings.tls,
            signatures=parts.signatures,
        )

    _bootstrap(parts.iam, settings)
    keys = KeyRing(data / "keys", rotate_after=settings.key_rotation, retain=2 * 86400)
    tokens = TokenService(
        keys,
        parts.iam,
        lifetime=settings.token_lifetime,
        refresh_lifetime=settings.refresh_lifetime,
    )
    iam = parts.iam
    signin = SignIn(iam, FailureLimiter(), refresh=tokens.principal_from_refresh)

    async def catalog_scope(identity: Identity, region: str) -> list[str]:
        principal = principal_of(identity.claims or {})
        if principal is None:
            return []
        allowed = await asyncio.to_thread(iam.namespaces_allowing, principal, region, PULL)
        return [n.name for n in allowed]

    return RegistryApp(
        parts.blobs,
        parts.manifests,
        TokenAccess(tokens, PublicUrl(settings.public_url_template), parts.namespaces.owner),
        health,
        parts.regions,
        token_endpoint=TokenEndpoint(tokens, signin),
        jwks=keys.jwks,
        catalog_scope=catalog_scope,
        management=ManagementApi(
            iam,
            parts.manifests,
            parts.namespaces,
            parts.signatures,
            parts.regions,
            signin,
            PullCheck(signin, tokens, iam, parts.regions),
        ),
        encrypted=settings.tls,
        signatures=parts.signatures,
    )


def regions_of(settings: Settings) -> RegionMap:
    if settings.regions:
        return RegionMap([Region(*r) for r in settings.regions], extra_global_hosts=LOOPBACK_HOSTS)
    return RegionMap.default(settings.base_domain)


def server_certificates(settings: Settings, regions: RegionMap) -> ServerCertificates | None:
    """The certificates for every configured domain, or None without TLS;
    raises CertificateError when a domain has none."""
    if not settings.tls:
        return None
    files = TlsFiles(
        Path(settings.tls_cert) if settings.tls_cert else None,
        Path(settings.tls_key) if settings.tls_key else None,
        Path(settings.tls_certs_dir) if settings.tls_certs_dir else None,
    )
    domains = [r.domain for r in regions.regions.values()] + [
        r.legacy_domain for r in regions.regions.values() if r.legacy_domain
    ]
    default = regions.regions[GLOBAL].domain if GLOBAL in regions.regions else domains[0]
    return ServerCertificates(files, domains, default)


def check_transport(settings: Settings) -> None:
    """Plain HTTP only on loopback, unless asked for in so many words."""
    if settings.tls or is_loopback(settings.host):
        return
    if not settings.allow_insecure_http:
        raise ConfigError(
            f"refusing to serve plain HTTP on {settings.host or 'every address'}: configure "
            "tls_cert and tls_key (`moorage tls init` makes them) or pass --insecure-http"
        )
    log.warning(
        "serving plain HTTP on %s (--insecure-http): API keys, passwords and tokens "
        "cross the network readable by anyone on the path",
        settings.host,
    )


def serve(settings: Settings) -> None:
    restrict_umask()
    configure_logging(settings.log_level, settings.access_log)
    check_transport(settings)
    certificates = server_certificates(settings, regions_of(settings))
    asyncio.run(_serve(settings, create_app(settings), certificates))


async def _reload(certificates: ServerCertificates) -> None:
    try:
        await asyncio.get_running_loop().run_in_executor(None, certificates.reload)
    except Exception as exc:  # whatever went wrong, the current certificates stay
        log.error("SIGHUP: kept the current TLS certificates: %s", exc)
        return
    log.info(
        "SIGHUP: reloaded TLS certificates: %s",
        "; ".join(f"{c.source} until {c.not_after:%Y-%m-%d}" for c in certificates.certificates),
    )


async def _serve(
    settings: Settings, registry: RegistryApp, certificates: ServerCertificates | None = None
) -> None:
    handler_args: dict[str, Any] = {
        "access_log": logging.getLogger("moorage.access"),
        "access_log_class": JsonAccessLogger,
    }
    runner = web.AppRunner(
        registry.build(),
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout,
        **handler_args,
    )
    await _open_storage(settings, registry)
    await runner.setup()
    assert runner.server is not None
    limits = Limits(
        header_timeout=settings.header_timeout,
        idle_timeout=settings.idle_timeout,
        body_timeout=settings.body_timeout,
        max_connections=settings.max_connections,
        max_connections_per_client=settings.max_connections_per_client,
    )
    listener = Listener(runner.server, limits, handler_args, certificates)
    site = GuardedSite(runner, listener, settings.host, settings.port)
    await site.start()
    log.info(
        "moorage serving on %s, data in %s; at most %d connections, %s per client",
        site.name,
        settings.data_path,
        listener.max_connections,
        limits.max_connections_per_client or "any number",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()
    if certificates is not None:

        def reload() -> None:
            task = loop.create_task(_reload(certificates))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()

    # Graceful stop: refuse new connections, let requests in flight (uploads
    # above all) run to completion, then close what is idle. aiohttp's own
    # shutdown stops reading request bodies at once, which would cut uploads.
    log.info("stopping: draining %d requests in flight", registry.inflight)
    await site.stop()
    deadline = loop.time() + settings.shutdown_timeout
    while registry.inflight and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if registry.inflight:
        log.warning("%d requests still in flight; their uploads stay resumable", registry.inflight)
    await runner.cleanup()
    # Cut uploads finish saving what arrived; connections close.
    await registry.blobs.store.close()
    log.info("stopped")


async def _open_storage(settings: Settings, registry: RegistryApp) -> None:
    """Reach the blob store once (a wrong endpoint, bucket or key is one line
    and exit status 2), then clear crash leftovers from its staging area."""
    try:
        await registry.blobs.store.check()
    except StorageError as exc:
        await registry.blobs.store.close()
        raise ConfigError(f"storage: {exc}") from None
    report = await registry.blobs.reconcile()
    log.info("storage: %s driver; uploads after restart: %s", settings.storage_driver, report)
