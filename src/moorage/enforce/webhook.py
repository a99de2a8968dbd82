"""The HTTPS admission webhook: ``POST /mutate`` (admit and pin each image to
its verified digest with a JSONPatch) and ``POST /validate`` (admit or deny
only), ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz``.

Every request gets an answer it can be read by: a body that is not an
AdmissionReview is refused with 400 and a JSON reason (the API server then
fails closed), a request the webhook cannot judge is denied with the reason,
and one structured line per decision goes to the ``moorage.enforce.decision``
log saying which policy and which keys decided."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from moorage.enforce import admission
from moorage.enforce.admission import ReviewError
from moorage.enforce.registry import Access, RegistryReader
from moorage.enforce.state import ClusterState
from moorage.enforce.verify import Decision, Enforcer, Settings

log = logging.getLogger("moorage.enforce")
decisions = logging.getLogger("moorage.enforce.decision")
MAX_BODY = 8 << 20  # an object (3 MiB at most in etcd) and its old version, as JSON
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The webhook's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.admissions = Counter(
            "moorage_enforce_admissions",
            "Admission reviews answered, by endpoint and verdict",
            ["endpoint", "verdict"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "moorage_enforce_admission_duration_seconds",
            "Time to answer one admission review",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "moorage_enforce_verification_cache",
            "Image verifications answered from the cache (hit) or by the registry (miss); "
            "stale: a remembered verdict whose signatures changed in the registry",
            ["result"],
            registry=self.registry,
        )
        self.cache_entries = Gauge(
            "moorage_enforce_verification_cache_entries",
            "Verified digests held in the cache",
            registry=self.registry,
        )
        self.flushes = Counter(
            "moorage_enforce_cache_flushes",
            "Cache flushes seen (moorage enforce cache-flush)",
            registry=self.registry,
        )


@dataclass
class Webhook:
    enforcer: Enforcer
    metrics: Metrics

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/mutate", self.mutate)
        app.router.add_post("/validate", self.validate)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.middlewares.append(_errors)
        return app

    async def mutate(self, request: web.Request) -> web.Response:
        return await self._review(request, "mutate")

    async def validate(self, request: web.Request) -> web.Response:
        return await self._review(request, "validate")

    async def _review(self, http: web.Request, endpoint: str) -> web.Response:
        started = time.monotonic()
        enforcer = self.enforcer
        hits, misses, stale = enforcer.hits, enforcer.misses, enforcer.stale
        try:
            body = await http.read()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.admissions.labels(endpoint, "refused").inc()
            return _refuse(413, f"the AdmissionReview is larger than {MAX_BODY} bytes")
        try:
            request = admission.parse(body)
        except ReviewError as exc:
            if exc.uid is None:
                self.metrics.admissions.labels(endpoint, "refused").inc()
                return _refuse(400, exc.message)
            decision = Decision(False, f"malformed admission request: {exc.message}")
            self._record(endpoint, started, exc.uid, None, decision)
            return web.json_response(admission.review(exc.uid, False, decision.message))
        decision = await self.enforcer.decide(request, mutate=endpoint == "mutate")
        self.metrics.cache.labels("hit").inc(self.enforcer.hits - hits)
        self.metrics.cache.labels("miss").inc(self.enforcer.misses - misses)
        self.metrics.cache.labels("stale").inc(self.enforcer.stale - stale)
        self._record(endpoint, started, request.uid, request, decision)
        return web.json_response(
            admission.review(request.uid, decision.allowed, decision.message, decision.patch)
        )

    def _record(
        self,
        endpoint: str,
        started: float,
        uid: str,
        request: admission.Request | None,
        decision: Decision,
    ) -> None:
        elapsed = time.monotonic() - started
        verdict = "allowed" if decision.allowed else "denied"
        self.metrics.admissions.labels(endpoint, verdict).inc()
        self.metrics.latency.labels(endpoint).observe(elapsed)
        self.metrics.cache_entries.set(len(self.enforcer.cache))
        line: dict[str, Any] = {
            "endpoint": endpoint,
            "uid": uid,
            "verdict": verdict,
            "ms": round(elapsed * 1000, 2),
        }
        if request is not None:
            line.update(
                kind=request.kind,
                namespace=request.namespace,
                name=request.name,
                operation=request.operation,
                dry_run=request.dry_run,
            )
        if decision.exempt:
            line["exempt"] = decision.message
        line["images"] = [v.as_log() for v in decision.images]
        if not decision.allowed:
            line["message"] = decision.message
        if decision.patch:
            line["patched"] = [p["value"] for p in decision.patch]
        decisions.info("%s", json.dumps(line, sort_keys=True))

    async def metrics_page(self, _: web.Request) -> web.Response:
        self.metrics.cache_entries.set(len(self.enforcer.cache))
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        waiting = self.enforcer.state.unsynced()
        if waiting:
            return web.json_response({"status": "loading", "waiting_for": waiting}, status=503)
        return web.json_response(
            {"status": "ready", "cache_generation": self.enforcer.state.generation}
        )


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Errors as one JSON line, never a traceback page."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPRequestEntityTooLarge:
        return _refuse(413, f"the AdmissionReview is larger than {MAX_BODY} bytes")
    except web.HTTPException as exc:
        return _refuse(exc.status, exc.reason)


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    tls_cert: str
    tls_key: str
    access: Access
    settings: Settings
    sync_timeout: float = 60.0


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def build(api_client: Any, options: ServeOptions) -> Webhook:
    """The webhook and its informers (not started)."""
    metrics = Metrics()
    state = ClusterState(api_client, options.settings.namespace)
    enforcer = Enforcer(state, RegistryReader(options.access), options.settings)

    def flushed(generation: str) -> None:
        log.info("cache generation %s: verified digests forgotten", generation)
        metrics.flushes.inc()
        enforcer.flush()

    state.on_generation = flushed
    return Webhook(enforcer, metrics)


async def run(api_client: Any, options: ServeOptions) -> None:
    """Serve until SIGTERM or SIGINT."""
    webhook = build(api_client, options)
    state = webhook.enforcer.state
    webhook.enforcer.loop = asyncio.get_running_loop()
    stop = threading.Event()
    state.start(stop)
    deadline = time.monotonic() + options.sync_timeout
    while not state.synced() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if not state.synced():
        log.warning("still loading %s; denying until loaded", ", ".join(state.unsynced()))
    runner = web.AppRunner(webhook.app(), access_log=None, handle_signals=False)
    await runner.setup()
    context = tls_context(options.tls_cert, options.tls_key)
    site = web.TCPSite(runner, options.host, options.port, ssl_context=context)
    await site.start()
    log.info("serving admission reviews on https://%s:%d", options.host, options.port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stopping.set)
    try:
        await stopping.wait()  # then reviews in flight are answered before the exit
    finally:
        stop.set()
        state.stop()
        await runner.cleanup()
        await webhook.enforcer.reader.close()
