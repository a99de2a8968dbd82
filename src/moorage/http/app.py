"""Routes of the distribution API, each a thin handler over a registry service."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from moorage.http import sbom
from moorage.http.access import CATALOG, DELETE, PULL, PUSH, AccessPolicy, Identity
from moorage.http.access_log import REPOSITORY_KEY
from moorage.http.management import ManagementApi
from moorage.http.request import Request
from moorage.http.token_endpoint import TokenEndpoint
from moorage.metadata import DatabaseThreads
from moorage.oci.names import NameError_, validate_name
from moorage.regions import MalformedHost, RegionMap, Target, UnknownDomain
from moorage.registry import (
    BlobService,
    ManifestService,
    Page,
    RegistryError,
    RepoRef,
    range_header,
)
from moorage.registry.errors import NameInvalid, SizeInvalid, Unsupported
from moorage.registry.signatures import SignatureService
from moorage.storage import BlobSource, ByteStream, LocalFile, Redirect
from moorage.va.assess import HARBOR_REPORT
from moorage.va.indexer import Indexer
from moorage.va.pulls import PullGate
from moorage.va.service import VulnerabilityService

log = logging.getLogger("moorage.http")

API_VERSION = ("docker-distribution-api-version", "registry/2.0")
JSON = "application/json"
MAX_PAGE = 10_000
SIGNATURE_BODY_LIMIT = 128 * 1024  # a signature of at most 64 KiB, in base64, in JSON
DEFAULT_CATALOG_PAGE = 1000

Headers = list[tuple[str, str]]


@dataclass
class Response:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    blob: BlobSource | None = None  # a blob's bytes: a file (sendfile) or a stream; Range honoured


def json_response(status: int, payload: Any, headers: Headers | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, [("content-type", JSON), *(headers or [])], body)


def error_response(error: RegistryError) -> Response:
    return json_response(error.status, error.body(), list(error.headers.items()))


class EncryptedFileResponse(web.FileResponse):
    """A blob sent over TLS, where the bytes must pass through Python to be
    encrypted and ``sendfile`` cannot apply. asyncio's stand-in for it reads
    16 KiB per trip to a worker thread (about 100 MB/s for one client here);
    aiohttp's own fallback reads ``chunk_size`` bytes per trip (about seven
    times faster at 1 MiB). Range, HEAD and conditional requests are
    FileResponse's, as on plain HTTP."""

    CHUNK = 1024 * 1024

    def __init__(self, path: str, status: int, headers: Headers) -> None:
        super().__init__(path, chunk_size=self.CHUNK, status=status, headers=headers)

    async def _sendfile(
        self, request: web.BaseRequest, fobj: Any, offset: int, count: int
    ) -> AbstractStreamWriter:
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        return await self._sendfile_fallback(writer, fobj, offset, count)


class BlobStreamResponse(web.StreamResponse):
    """A blob streamed from the store (S3 without redirects): one byte range
    honoured as aiohttp's FileResponse does (206, or 416 with ``bytes */size``),
    HEAD answered from the size alone, the bytes read only for a GET."""

    def __init__(self, source: ByteStream, headers: Headers) -> None:
        super().__init__(status=200, headers=headers)
        self.source = source

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        size = self.source.size
        start, count = 0, size
        try:
            rng = request.http_range
        except ValueError:
            return await self._unsatisfiable(request, size)
        if rng.start is not None:
            if rng.start < 0 and rng.stop is None:  # the last -start bytes
                start = max(0, size + rng.start)
                count = size - start
            else:
                start = rng.start
                count = min(rng.stop if rng.stop is not None else size, size) - start
            if start >= size:
                return await self._unsatisfiable(request, size)
            self.set_status(206)
            self.headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{start + count - 1}/{size}"
        self.headers[hdrs.ACCEPT_RANGES] = "bytes"
        self.content_length = count
        writer = await super().prepare(request)
        if request.method == "HEAD" or count == 0:
            return writer
        reader = self.source.read(start, count)
        try:
            async for chunk in reader:
                await self.write(chunk)
        finally:
            await reader.aclose()  # a client gone mid-blob frees the store's connection
        return writer

    async def _unsatisfiable(
        self, request: web.BaseRequest, size: int
    ) -> AbstractStreamWriter | None:
        self.headers[hdrs.CONTENT_RANGE] = f"bytes */{size}"
        self.set_status(416)
        self.content_length = 0
        return await super().prepare(request)


@dataclass(frozen=True)
class Call:
    """One request on its way through a handler: where it landed and who sent it."""

    request: Request
    params: dict[str, str]
    target: Target
    identity: Identity

    @property
    def name(self) -> str:
        return self.params["name"]

    @property
    def repo(self) -> RepoRef:
        return RepoRef(self.target.region.name, self.params["name"])


Handler = Callable[[Call], Awaitable[Response]]
PUBLIC: None = None  # actions of endpoints that need no token at all


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern[str]
    methods: dict[str, tuple[Handler, tuple[str, ...] | None]]


CatalogScope = Callable[[Identity, str], Awaitable[list[str]]]


class RegistryApp:
    """The registry's HTTP application. ``health`` returns what /health serves;
    ``catalog_scope(identity, region)`` names the namespaces whose repositories
    the catalog may show the caller: those it may pull from.

    Nothing here waits on the database on the event loop: blob and upload
    calls are the blob service's coroutines, manifest, listing and signature
    calls run on the database threads (``db``), and a manifest in the
    manifest cache is answered from memory without leaving the loop."""

    def __init__(
        self,
        blobs: BlobService,
        manifests: ManifestService,
        access: AccessPolicy,
        health: Callable[[], Awaitable[dict[str, Any]]],
        regions: RegionMap,
        token_endpoint: TokenEndpoint | None = None,
        jwks: Callable[[], dict[str, Any]] | None = None,
        catalog_scope: CatalogScope | None = None,
        management: ManagementApi | None = None,
        encrypted: bool = False,
        signatures: SignatureService | None = None,
        db: DatabaseThreads | None = None,
        va: VulnerabilityService | None = None,
        pull_gate: PullGate | None = None,
    ) -> None:
        self.db = db or blobs.db
        self.va = va
        self.pull_gate = pull_gate  # [va] block_pulls: FAIL images are not served
        self.management = management
        sbom.install(management, blobs, manifests, regions, va)
        self.signatures = signatures
        # Every reply says the signature extension is here: clients read it off the
        # 401 of their first /v2/ request.
        self.base_headers: Headers = [API_VERSION]
        if signatures is not None:
            self.base_headers.append(("x-registry-supports-signatures", "1"))
        # Chosen once: plain HTTP keeps aiohttp's sendfile path untouched.
        self.file_response: type[web.FileResponse] = (
            EncryptedFileResponse if encrypted else web.FileResponse
        )
        self.blobs = blobs
        self.manifests = manifests
        self.access = access
        self.health = health
        self.regions = regions
        self.token_endpoint = token_endpoint
        self.jwks = jwks
        self.catalog_scope = catalog_scope
        self.routes = self._routes()
        self.inflight = 0
        # Called once the server has stopped (change feed, threads, connections).
        self.cleanups: list[Callable[[], None]] = []
        # The Advisor's worker, which the server runs beside the application.
        self.indexer: Indexer | None = None

    def _routes(self) -> list[Route]:
        name = r"(?P<name>.+?)"
        return [
            Route(re.compile(r"^/v2/?\Z"), {"GET": (self.base, ()), "HEAD": (self.base, ())}),
            Route(re.compile(r"^/v2/_catalog\Z"), {"GET": (self.catalog, (CATALOG,))}),
            Route(re.compile(rf"^/v2/{name}/tags/list\Z"), {"GET": (self.tags, (PULL,))}),
            Route(
                re.compile(rf"^/v2/{name}/manifests/(?P<ref>[^/]+)\Z"),
                {
                    "GET": (self.get_manifest, (PULL,)),
                    "HEAD": (self.get_manifest, (PULL,)),
                    "PUT": (self.put_manifest, (PULL, PUSH)),
                    "DELETE": (self.delete_manifest, (DELETE,)),
                },
            ),
            Route(
                re.compile(rf"^/v2/{name}/blobs/uploads/?\Z"),
                {"POST": (self.start_upload, (PULL, PUSH))},
            ),
            Route(
                re.compile(rf"^/v2/{name}/blobs/uploads/(?P<upload>[^/]+)\Z"),
                {
                    "GET": (self.upload_status, (PUSH,)),
                    "PATCH": (self.patch_upload, (PUSH,)),
                    "PUT": (self.finish_upload, (PUSH,)),
                    "DELETE": (self.cancel_upload, (PUSH,)),
                },
            ),
            Route(
                re.compile(rf"^/v2/{name}/blobs/(?P<digest>[^/]+)\Z"),
                {
                    "GET": (self.get_blob, (PULL,)),
                    "HEAD": (self.get_blob, (PULL,)),
                    "DELETE": (self.delete_blob, (DELETE,)),
                },
            ),
            Route(
                re.compile(rf"^/v2/{name}/referrers/(?P<digest>[^/]+)\Z"),
                {"GET": (self.referrers, (PULL,))},
            ),
            Route(
                re.compile(rf"^/extensions/v2/{name}/signatures/(?P<digest>[^/]+)\Z"),
                {
                    "GET": (self.get_signatures, (PULL,)),
                    "PUT": (self.put_signature, (PULL, PUSH)),
                    "DELETE": (self.delete_signature, (DELETE,)),
                },
            ),
            Route(
                re.compile(rf"^/v2/{name}/_moorage/va/(?P<ref>[^/]+)\Z"),
                {"GET": (self.get_va_report, (PULL,))},
            ),
            Route(re.compile(r"^/health\Z"), {"GET": (self.get_health, PUBLIC)}),
            Route(
                re.compile(r"^/oauth/token\Z"),
                {"GET": (self.token, PUBLIC), "POST": (self.token, PUBLIC)},
            ),
            Route(re.compile(r"^/oauth/jwks\.json\Z"), {"GET": (self.get_jwks, PUBLIC)}),
        ]

    # -- aiohttp entry points ---------------------------------------------

    def build(self) -> web.Application:
        # Registry bodies are streamed by the handlers, never buffered by aiohttp;
        # aiohttp's own limit applies only to the token endpoint's small form.
        # (The Host check is a call in each entry point, not a middleware: an
        # aiohttp middleware costs about a tenth of a manifest GET.)
        application = web.Application(client_max_size=64 * 1024)
        if self.management is not None:
            application.router.add_routes(
                web.RouteDef(r.method, r.path, self._host_checked(r.handler), r.kwargs)
                for r in self.management.routes()
            )
        # Any path at all, newlines included, reaches the registry's own router (and its
        # JSON errors) rather than aiohttp's plain-text 404.
        application.router.add_route("*", r"/{path:[\s\S]*}", self.handle)
        return application

    def _host_checked(self, handler: Any) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def checked(request: web.Request) -> web.StreamResponse:
            try:
                self.regions.resolve(request.headers.get("Host"))
            except (MalformedHost, UnknownDomain) as exc:
                return await self._host_refused(request, exc)
            response: web.StreamResponse = await handler(request)
            return response

        return checked

    async def _host_refused(
        self, raw: web.Request, error: MalformedHost | UnknownDomain
    ) -> web.StreamResponse:
        """Before anything else: the Host header must name a domain this
        installation serves (400 when malformed, 404 when unknown). Nothing
        answers with or logs a Host it did not recognise."""
        if isinstance(error, UnknownDomain) and raw.path == "/health" and raw.method == "GET":
            # Load balancers probe by address; the report names no host.
            return self._render(await self._health(self.inflight))
        status, message = (
            (400, str(error))
            if isinstance(error, MalformedHost)
            else (404, "no registry answers on this host name")
        )
        if raw.path.startswith("/api/"):  # the management API's error shape
            code = "bad_request" if status == 400 else "not_found"
            return web.json_response({"error": {"code": code, "message": message}}, status=status)
        return self._render(error_response(RegistryError(message, status=status)))

    async def handle(self, raw: web.Request) -> web.StreamResponse:
        try:
            target = self.regions.resolve(raw.headers.get("Host"))
        except (MalformedHost, UnknownDomain) as exc:
            return await self._host_refused(raw, exc)
        request = Request(raw)
        repository: str | None = None
        self.inflight += 1
        try:
            handler, params, actions = self._dispatch(request)
            repository = params.get("name")
            if repository is not None:
                _check_name(repository)
            if actions is None:
                identity = Identity(None, None)
            else:
                owner = None
                if "upload" in params and repository is not None and self.access.binds_uploads:
                    owner = await self.blobs.session_owner(
                        RepoRef(target.region.name, repository), params["upload"]
                    )
                identity = await self.access.check(request, target, repository, actions, owner)
            response = await handler(Call(request, params, target, identity))
        except RegistryError as exc:
            response = error_response(exc)
        except web.HTTPException as exc:  # aiohttp's own refusals, e.g. a form too large
            code = "SIZE_INVALID" if exc.status == 413 else "UNSUPPORTED"
            response = json_response(
                exc.status, {"errors": [{"code": code, "message": exc.reason}]}
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = json_response(
                500, {"errors": [{"code": "UNKNOWN", "message": "internal server error"}]}
            )
        finally:
            self.inflight -= 1
        raw[REPOSITORY_KEY] = repository
        return self._render(response)

    def _dispatch(self, request: Request) -> tuple[Handler, dict[str, str], tuple[str, ...] | None]:
        path = request.path
        if ".." in path or "//" in path or "%" in path:
            raise NameInvalid("path tricks are not allowed in repository names")
        for route in self.routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            entry = route.methods.get(request.method)
            if entry is None:
                raise Unsupported(
                    f"{request.method} is not supported here",
                    status=405,
                    headers={"Allow": ", ".join(route.methods)},
                )
            return entry[0], match.groupdict(), entry[1]
        raise RegistryError("no such endpoint", status=404)

    def _render(self, response: Response) -> web.StreamResponse:
        headers = [*self.base_headers, *response.headers]
        blob = response.blob
        if isinstance(blob, LocalFile):
            # aiohttp's FileResponse uses os.sendfile and answers Range and HEAD itself.
            return self.file_response(blob.path, status=response.status, headers=headers)
        if isinstance(blob, ByteStream):
            return BlobStreamResponse(blob, headers)
        return web.Response(status=response.status, headers=headers, body=response.body)

    # -- base, health, tokens ---------------------------------------------

    async def base(self, call: Call) -> Response:
        return json_response(200, {})

    async def get_health(self, call: Call) -> Response:
        return await self._health(self.inflight - 1)  # not counting this request

    async def _health(self, inflight: int) -> Response:
        report = await self.health()
        report["inflight_requests"] = inflight
        return json_response(200 if report.get("status") == "ok" else 503, report)

    async def token(self, call: Call) -> Response:
        if self.token_endpoint is None:
            raise RegistryError("this registry runs without authentication", status=404)
        reply = await self.token_endpoint.handle(call.request, call.target)
        headers = [*reply.headers, ("cache-control", "no-store")]
        return json_response(reply.status, reply.body, headers)

    async def get_jwks(self, call: Call) -> Response:
        if self.jwks is None:
            raise RegistryError("this registry runs without authentication", status=404)
        return json_response(200, self.jwks())

    # -- blobs -------------------------------------------------------------

    async def get_blob(self, call: Call) -> Response:
        # A HEAD is answered here even when GETs are redirected: a presigned URL
        # is good for one method only.
        redirect = call.request.method == "GET"
        blob = await self.blobs.get(call.repo, call.params["digest"], redirect)
        headers: Headers = [("docker-content-digest", str(blob.digest))]
        if isinstance(blob.source, Redirect):
            headers.append(("location", blob.source.url))
            return Response(307, headers)
        headers += [
            ("content-type", "application/octet-stream"),
            ("cache-control", "max-age=31536000"),
        ]
        if isinstance(blob.source, ByteStream):
            headers.append(("etag", f'"{blob.digest}"'))
        return Response(200, headers, blob=blob.source)

    async def delete_blob(self, call: Call) -> Response:
        digest = await self.blobs.delete(call.repo, call.params["digest"], call.identity.account)
        return Response(202, [("docker-content-digest", str(digest))])

    @staticmethod
    def _upload_headers(name: str, upload_id: str, size: int) -> Headers:
        return [
            ("location", f"/v2/{name}/blobs/uploads/{upload_id}"),
            ("range", range_header(size)),
            ("docker-upload-uuid", upload_id),
        ]

    @staticmethod
    def _blob_created(name: str, digest: str) -> Response:
        return Response(
            201, [("location", f"/v2/{name}/blobs/{digest}"), ("docker-content-digest", digest)]
        )

    async def start_upload(self, call: Call) -> Response:
        request = call.request
        mount = request.query("mount")
        if mount:
            source = request.query("from")
            source_repo = None
            if source:
                _check_name(source)
                # Mounting reads the source: without pull on it, upload instead (202).
                try:
                    await self.access.check(request, call.target, source, (PULL,))
                    source_repo = RepoRef(call.target.region.name, source)
                except RegistryError:
                    source_repo = None
            mounted = await self.blobs.mount(call.repo, mount, source_repo, call.identity.account)
            if mounted is not None:
                return self._blob_created(call.name, str(mounted))
        digest = request.query("digest")
        if digest is not None:
            body = request.body() if request.has_body else _empty_body()
            stored = await self.blobs.upload_whole(
                call.repo, digest, body, request.content_length, call.identity.account
            )
            return self._blob_created(call.name, str(stored))
        upload = await self.blobs.start_upload(
            call.repo, call.identity.subject, call.identity.account
        )
        return Response(202, self._upload_headers(call.name, upload.upload_id, upload.size))

    async def upload_status(self, call: Call) -> Response:
        upload = await self.blobs.status(call.repo, call.params["upload"])
        return Response(204, self._upload_headers(call.name, upload.upload_id, upload.size))

    async def patch_upload(self, call: Call) -> Response:
        request = call.request
        upload = await self.blobs.append(
            call.repo,
            call.params["upload"],
            request.body(),
            request.header("content-range"),
            request.content_length,
        )
        return Response(202, self._upload_headers(call.name, upload.upload_id, upload.size))

    async def finish_upload(self, call: Call) -> Response:
        request = call.request
        digest = await self.blobs.finish(
            call.repo,
            call.params["upload"],
            request.query("digest"),
            request.body() if request.has_body else None,
            request.header("content-range"),
            request.content_length,
            call.identity.account,
        )
        return self._blob_created(call.name, str(digest))

    async def cancel_upload(self, call: Call) -> Response:
        await self.blobs.cancel(call.repo, call.params["upload"])
        return Response(204)

    # -- manifests ---------------------------------------------------------

    async def get_manifest(self, call: Call) -> Response:
        accept = call.request.header_values("accept")
        manifest = self.manifests.cached(call.repo, call.params["ref"], accept)
        if manifest is None:
            manifest = await self.db.run(self.manifests.get, call.repo, call.params["ref"], accept)
        if self.pull_gate is not None:
            await self.pull_gate.check(
                call.request.method, call.target, call.name, manifest.digest, call.identity.claims
            )
        headers: Headers = [
            ("content-type", manifest.media_type),
            ("docker-content-digest", manifest.digest),
            ("etag", f'"{manifest.digest}"'),
        ]
        return Response(200, headers, manifest.content)  # aiohttp drops the body on HEAD

    async def put_manifest(self, call: Call) -> Response:
        request = call.request
        self.manifests.check_size(request.content_length)
        body = await request.read(self.manifests.max_manifest_bytes)
        if body is None:
            raise self.manifests.too_large()
        write = await self.db.run(
            self.manifests.prepare,
            call.repo,
            call.params["ref"],
            body,
            request.header("content-type"),
        )
        if write.removes:
            # Removing a signature is deleting: the token must carry delete too.
            try:
                await self.access.check(request, call.target, call.name, (DELETE,))
            except RegistryError:
                raise self.manifests.removal_denied(write) from None
        result = await self.db.run(self.manifests.commit, write, call.identity.account)
        if self.indexer is not None:
            self.indexer.wake()  # a queued image is indexed now, not at the next poll
        headers: Headers = [
            ("location", f"/v2/{call.name}/manifests/{result.digest}"),
            ("docker-content-digest", result.digest),
        ]
        if result.subject:
            headers.append(("oci-subject", result.subject))
        return Response(201, headers)

    async def delete_manifest(self, call: Call) -> Response:
        await self.db.run(
            self.manifests.delete, call.repo, call.params["ref"], call.identity.account
        )
        return Response(202)

    # -- listings ----------------------------------------------------------

    async def tags(self, call: Call) -> Response:
        limit = _page_size(call.request.query("n"), None)
        page = await self.db.run(self.manifests.tags, call.repo, limit, call.request.query("last"))
        return json_response(
            200,
            {"name": call.name, "tags": page.items},
            _link(f"/v2/{call.name}/tags/list", page, limit),
        )

    async def catalog(self, call: Call) -> Response:
        limit = _page_size(call.request.query("n"), DEFAULT_CATALOG_PAGE)
        region = call.target.region.name
        namespaces = None
        if not call.identity.unrestricted:
            scope = self.catalog_scope
            namespaces = await scope(call.identity, region) if scope is not None else []
        page = await self.db.run(
            self.manifests.catalog, region, limit, call.request.query("last"), namespaces
        )
        return json_response(200, {"repositories": page.items}, _link("/v2/_catalog", page, limit))

    # -- the signature extension -------------------------------------------

    def _signature_service(self) -> SignatureService:
        if self.signatures is None:
            raise RegistryError("this registry keeps no signatures", status=404)
        return self.signatures

    async def get_signatures(self, call: Call) -> Response:
        listed = await self.db.run(
            self._signature_service().extension_list, call.repo, call.params["digest"]
        )
        return json_response(200, {"signatures": listed})

    async def put_signature(self, call: Call) -> Response:
        body = await call.request.read(SIGNATURE_BODY_LIMIT)
        if body is None:
            raise SizeInvalid(f"a signature body is at most {SIGNATURE_BODY_LIMIT} bytes")
        await self.db.run(
            self._signature_service().extension_put,
            call.repo,
            call.params["digest"],
            body,
            call.identity.account,
        )
        return Response(201)

    async def delete_signature(self, call: Call) -> Response:
        name = call.request.query("name")
        if not name:
            raise RegistryError("name the signature to delete: ?name=<digest>@<id>", status=400)
        await self.db.run(
            self._signature_service().extension_delete,
            call.repo,
            call.params["digest"],
            name,
            call.identity.account,
        )
        return Response(202)

    async def referrers(self, call: Call) -> Response:
        artifact_type = call.request.query("artifactType")
        body = await self.db.run(
            self.manifests.referrers, call.repo, call.params["digest"], artifact_type
        )
        headers: Headers = [("content-type", "application/vnd.oci.image.index.v1+json")]
        if artifact_type is not None:
            headers.append(("oci-filters-applied", "artifactType"))
        return Response(200, headers, body)

    # -- the Advisor's report --------------------------------------------------

    async def get_va_report(self, call: Call) -> Response:
        """The Vulnerability Advisor's report of a tag or digest, to whoever may
        pull it (an admission webhook with pull credentials); Harbor's report
        alone when the Accept header asks for it."""
        if self.va is None:
            raise RegistryError("this registry runs no Vulnerability Advisor", status=404)
        doc = await self.db.run(self.va.report_json, call.repo, call.params["ref"])
        if any(HARBOR_REPORT.split(";")[0] in a for a in call.request.header_values("accept")):
            harbor = {k: doc[k] for k in ("generated_at", "artifact", "scanner", "severity")}
            harbor["vulnerabilities"] = doc["vulnerabilities"]
            body = json.dumps(harbor, separators=(",", ":")).encode()
            return Response(200, [("content-type", HARBOR_REPORT)], body)
        return json_response(200, doc)


def _check_name(name: str) -> None:
    try:
        validate_name(name)
    except NameError_ as exc:
        raise NameInvalid(str(exc), detail={"name": name[:256]}) from exc


async def _empty_body() -> Any:
    return
    yield  # pragma: no cover - makes this an async generator


def _page_size(value: str | None, default: int | None) -> int | None:
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise RegistryError("n must be a non-negative integer", status=400)
    return min(int(value), MAX_PAGE)


def _link(path: str, page: Page, limit: int | None) -> Headers:
    if page.next_last is None or limit is None:
        return []
    return [("link", f'<{path}?n={limit}&last={page.next_last}>; rel="next"')]
