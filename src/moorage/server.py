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
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import Engine, text

from moorage.auth.keys import KeyRing
from moorage.auth.pullcheck import PullCheck
from moorage.auth.ratelimit import (
    DatabaseThrottle,
    FailureLimiter,
    MemoryThrottle,
    RedisThrottle,
    Throttle,
)
from moorage.auth.signin import SignIn
from moorage.auth.tokens import TokenService, principal_of
from moorage.config import ConfigError, Settings
from moorage.datadir import prepare_data_dir, restrict_umask
from moorage.http import RegistryApp
from moorage.http.access import Identity, OpenAccess, TokenAccess
from moorage.http.access_log import DirectWriter, JsonAccessLogger, write_directly
from moorage.http.listener import GuardedSite, Limits, Listener
from moorage.http.management import ManagementApi
from moorage.http.token_endpoint import TokenEndpoint
from moorage.iam.roles import PULL
from moorage.iam.secrets import (
    PRESERVE_NOTICE,
    SecretError,
    SecretKeeper,
    configured_secret,
    load_or_create_key,
)
from moorage.iam.service import IamService
from moorage.metadata import (
    DatabaseThreads,
    MetadataStore,
    create_metadata_engine,
    sqlite_url,
    upgrade,
)
from moorage.metadata.advisory_store import AdvisoryStore
from moorage.metadata.changes import feed_for
from moorage.metadata.database import installation_lock
from moorage.metadata.iam_store import IamStore
from moorage.metadata.shared_store import FailureStore, InstallationStore, SigningKeyStore
from moorage.metadata.va_store import VaStore
from moorage.regions import GLOBAL, LOOPBACK_HOSTS, PublicUrl, Region, RegionMap
from moorage.registry import BlobService, ManifestService
from moorage.registry.artifacts import SbomService
from moorage.registry.blobs import MetadataLedger
from moorage.registry.collector import GarbageCollector
from moorage.registry.namespaces import NamespaceService
from moorage.registry.signatures import SignatureService
from moorage.storage import BlobStore, FilesystemBlobStore, StorageError
from moorage.tls import ServerCertificates, TlsFiles, is_loopback
from moorage.va.indexer import Indexer
from moorage.va.pulls import PullGate
from moorage.va.scanners import Scanners
from moorage.va.service import VulnerabilityService

log = logging.getLogger("moorage")


def configure_logging(level: str, access_log: bool) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("moorage.access").setLevel(logging.INFO if access_log else logging.WARNING)
    write_directly(DirectWriter(sys.stderr) if access_log else None)


@dataclass(frozen=True)
class Components:
    blobs: BlobService
    manifests: ManifestService
    metadata: MetadataStore
    iam: IamService
    namespaces: NamespaceService
    signatures: SignatureService
    regions: RegionMap
    keeper: SecretKeeper
    db: DatabaseThreads
    va: VaStore
    vulnerabilities: VulnerabilityService


def server_secret(settings: Settings) -> bytes:
    """The server secret: from configuration when given; otherwise, for an
    installation on SQLite, the one in its data directory (made on first
    start). A PostgreSQL-backed server without one is refused: replicas that
    each made their own would silently disagree on every API key."""
    try:
        configured = configured_secret(settings.secret_file, settings.secret)
    except SecretError as exc:
        raise ConfigError(str(exc)) from exc
    if configured is not None:
        return configured
    if settings.shared_database:
        raise ConfigError(
            "a server on a shared database needs the installation's server secret, the same "
            "on every replica: set [server] secret_file (or MOORAGE_SECRET_FILE) to a file "
            "holding base64 of 32 random bytes (openssl rand -base64 32), or MOORAGE_SECRET "
            "to the value; when moving an installation from SQLite, use its "
            "<data>/secrets/server.key (base64 < server.key)"
        )
    return load_or_create_key(settings.data_path / "secrets" / "server.key")


def _check_secret(engine: Engine, keeper: SecretKeeper) -> None:
    """The first server to start records the secret's check value; later ones
    (restarts, replicas) must show the same, or their API keys, registry tokens
    and signing keys would not open."""
    stored = InstallationStore(engine).setdefault("secret_check", keeper.check_value)
    if stored != keeper.check_value:
        raise ConfigError(
            "this database was set up with another server secret: give every replica the "
            "installation's secret ([server] secret_file or MOORAGE_SECRET)"
        )


def open_registry(
    settings: Settings, *, prepare: bool = True, processes_share_sqlite: bool = False
) -> Components:
    """Every service over the configured database and data directory.
    ``prepare`` migrates the schema and checks the secret first (under the
    installation's start-up lock); a worker whose supervisor did it skips it."""
    data = settings.data_path
    prepare_data_dir(data)
    engine = create_metadata_engine(settings.database_url or sqlite_url(data))
    keeper = SecretKeeper(server_secret(settings))
    if prepare:
        with installation_lock(engine, data):
            upgrade(engine)
            _check_secret(engine, keeper)
    changes = feed_for(engine, processes_share_sqlite)
    db = DatabaseThreads()
    metadata = MetadataStore(engine, changes)
    store = open_store(settings, metadata, db)
    regions = regions_of(settings)
    iam = IamService(IamStore(engine), keeper, tuple(regions.regions), settings.service_id_limit)
    manifests = ManifestService(
        metadata, settings.max_manifest_bytes, settings.manifest_cache_bytes
    )
    va = VaStore(engine)
    metadata.manifest_hooks.append(va.enqueue_manifest)  # queued with the manifest it names
    return Components(
        BlobService(store, metadata, db),
        manifests,
        metadata,
        iam,
        NamespaceService(metadata, store, db=db),
        SignatureService(metadata, store, manifests),
        regions,
        keeper,
        db,
        va,
        VulnerabilityService(va, manifests),
    )


def open_store(settings: Settings, metadata: MetadataStore, db: DatabaseThreads) -> BlobStore:
    """The configured blob store, its upload offsets kept in ``metadata``. No
    connection is made here: the S3 client opens its own on first use. boto3
    is imported only when the driver is S3."""
    ledger = MetadataLedger(metadata, db)
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


def _key_ring(parts: Components, settings: Settings) -> KeyRing:
    return KeyRing(
        SigningKeyStore(parts.metadata.engine, parts.metadata.changes),
        parts.keeper,
        rotate_after=settings.key_rotation,
        retain=2 * 86400,
    )


def prepare_installation(settings: Settings) -> None:
    """What one process does before any serves: the schema, the secret's
    check, the first account, signing keys from an older data directory, and
    the uploads a crash left behind. Under the start-up lock, so replicas
    starting together do it one after another."""
    parts = open_registry(settings)
    engine = parts.metadata.engine
    with installation_lock(engine, settings.data_path):
        if settings.auth != "none":
            _bootstrap(parts.iam, settings)
            ring = _key_ring(parts, settings)
            imported = ring.import_directory(settings.data_path / "keys")
            if imported:
                log.info("moved %d signing keys from the data directory to the database", imported)
    engine.dispose()


def create_app(
    settings: Settings, *, prepared: bool = False, processes_share_sqlite: bool = False
) -> RegistryApp:
    """The application of one serving process. ``prepared``: a supervisor
    already ran ``prepare_installation``. Each process sweeps its store's
    staging area when it starts serving (``_open_storage``)."""
    if not prepared:
        prepare_installation(settings)
    parts = open_registry(settings, prepare=False, processes_share_sqlite=processes_share_sqlite)
    data = settings.data_path
    metadata = parts.metadata
    store = parts.blobs.store
    db = parts.db
    metadata.changes.start()
    cleanups = [metadata.changes.stop, db.shutdown, metadata.engine.dispose]

    def check_database() -> None:
        with metadata.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def health() -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            await asyncio.wait_for(db.run(check_database), timeout=10)
            checks["database"] = "ok"
        except Exception as exc:  # health must report, not raise
            checks["database"] = f"error: {type(exc).__name__}"
        if not metadata.changes.healthy:
            checks["change_feed"] = "reconnecting (caches off)"
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
        app = RegistryApp(
            parts.blobs,
            parts.manifests,
            OpenAccess(),
            health,
            parts.regions,
            encrypted=settings.tls,
            signatures=parts.signatures,
            db=db,
            va=parts.vulnerabilities,
            pull_gate=_pull_gate(settings, parts, None),
        )
        app.indexer = _indexer(parts, settings, None)
        app.cleanups.extend(cleanups)
        return app

    keys = _key_ring(parts, settings)
    tokens = TokenService(
        keys,
        parts.iam,
        lifetime=settings.token_lifetime,
        refresh_lifetime=settings.refresh_lifetime,
        db=db,
    )
    # Keys first: a token cache emptied because keys changed refills against the new ones.
    metadata.changes.subscribe(keys.changed)
    metadata.changes.subscribe(tokens.changed)
    iam = parts.iam
    signin = SignIn(iam, throttle_for(settings, parts), refresh=tokens.principal_from_refresh)

    async def catalog_scope(identity: Identity, region: str) -> list[str]:
        principal = principal_of(identity.claims or {})
        if principal is None:
            return []
        allowed = await db.run(iam.namespaces_allowing, principal, region, PULL)
        return [n.name for n in allowed]

    app = RegistryApp(
        parts.blobs,
        parts.manifests,
        TokenAccess(tokens, PublicUrl(settings.public_url_template), parts.namespaces.owner_async),
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
            parts.vulnerabilities,
        ),
        encrypted=settings.tls,
        signatures=parts.signatures,
        db=db,
        va=parts.vulnerabilities,
        pull_gate=_pull_gate(settings, parts, tokens),
    )
    app.indexer = _indexer(parts, settings, tokens)
    app.cleanups.extend(cleanups)
    return app


def _pull_gate(
    settings: Settings, parts: Components, tokens: TokenService | None
) -> PullGate | None:
    """``[va] block_pulls``: manifest GETs of FAIL images refused (off by default)."""
    if not settings.va_block_pulls:
        return None
    log.info("pulls of images the Vulnerability Advisor calls FAIL are refused ([va] block_pulls)")
    return PullGate(parts.va.report, parts.db.run, tokens)


def _indexer(parts: Components, settings: Settings, tokens: TokenService | None) -> Indexer | None:
    """The Advisor's worker, attaching SBOMs and asking ``[va] scanners``
    (adapters pull with a token, so only with token auth)."""
    if not settings.va_index:
        return None
    return Indexer(
        parts.metadata,
        parts.va,
        parts.blobs.store,
        parts.db,
        AdvisoryStore(parts.metadata.engine),
        lease_seconds=settings.va_lease,
        sboms=SbomService.configured(
            settings, parts.blobs, parts.manifests, parts.regions, parts.va
        )
        if settings.va_attach_sboms
        else None,
        scanners=Scanners.configured(settings, tokens) if tokens is not None else None,
        regions=parts.regions,
        owned=tokens is not None,
    )


def throttle_for(settings: Settings, parts: Components) -> Throttle:
    """Where failed sign-ins are counted: Redis when configured; the database
    when processes or replicas share it; else this process's memory."""
    if settings.redis_url:
        return RedisThrottle(settings.redis_url)
    if settings.shared_database or settings.workers > 1:
        return DatabaseThrottle(FailureStore(parts.metadata.engine), parts.db.run)
    return MemoryThrottle(FailureLimiter())


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
    if settings.workers > 1:
        from moorage.workers import Supervisor

        prepare_installation(settings)
        sys.exit(Supervisor(settings, _worker).run())
    asyncio.run(_serve(settings, create_app(settings), certificates))


def _worker(settings: Settings) -> None:
    """One of ``--workers`` processes: its own event loop, database connections
    and caches, on the shared port."""
    try:
        certificates = server_certificates(settings, regions_of(settings))
        app = create_app(
            settings, prepared=True, processes_share_sqlite=not settings.shared_database
        )
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from exc
    asyncio.run(_serve(settings, app, certificates, reuse_port=True))


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
    settings: Settings,
    registry: RegistryApp,
    certificates: ServerCertificates | None = None,
    reuse_port: bool = False,
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
    site = GuardedSite(runner, listener, settings.host, settings.port, reuse_port=reuse_port)
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
    collector = _start_collector(settings, registry)
    # Every process works on the Advisor's queue; what one is doing when it
    # stops is leased, and another takes it once the lease runs out.
    indexer = (
        loop.create_task(registry.indexer.run(), name="va-indexer")
        if registry.indexer is not None
        else None
    )
    await stop.wait()
    if indexer is not None:
        indexer.cancel()
        await asyncio.wait([indexer], timeout=settings.shutdown_timeout)
    if collector is not None:
        # A round in progress finishes the blob it is deleting (shielded), then stops.
        collector.cancel()
        await asyncio.wait([collector], timeout=settings.shutdown_timeout)

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
    for cleanup in registry.cleanups:
        cleanup()
    log.info("stopped")


def _start_collector(settings: Settings, registry: RegistryApp) -> asyncio.Task[None] | None:
    """The scheduled garbage collector; with many processes, the one holding
    the database lease runs each round."""
    if not settings.gc_interval:
        return None
    blobs = registry.blobs
    collector = GarbageCollector(
        blobs.metadata,
        blobs.store,
        blobs.db,
        timedelta(seconds=settings.gc_grace),
        timedelta(seconds=settings.gc_upload_max_age),
    )
    return asyncio.get_running_loop().create_task(
        collector.run_scheduled(settings.gc_interval), name="garbage-collector"
    )


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
