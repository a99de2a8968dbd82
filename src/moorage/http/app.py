"""Routes of the distribution API, each a thin handler over a registry service."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from moorage.http.access import DELETE, PULL, PUSH, AccessPolicy
from moorage.http.access_log import REPOSITORY_KEY
from moorage.http.request import Request
from moorage.oci.names import NameError_, validate_name
from moorage.registry import BlobService, ManifestService, Page, RegistryError, range_header
from moorage.registry.errors import NameInvalid, Unsupported

log = logging.getLogger("moorage.http")

API_VERSION = ("docker-distribution-api-version", "registry/2.0")
JSON = "application/json"
MAX_PAGE = 10_000
DEFAULT_CATALOG_PAGE = 1000

Headers = list[tuple[str, str]]


@dataclass
class Response:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    file: str | None = None  # a blob served with sendfile; Range is honoured there


def json_response(status: int, payload: Any, headers: Headers | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, [("content-type", JSON), *(headers or [])], body)


def error_response(error: RegistryError) -> Response:
    return json_response(error.status, error.body(), list(error.headers.items()))


Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern[str]
    methods: dict[str, tuple[Handler, tuple[str, ...]]]


class RegistryApp:
    """The RSGI application. ``health`` returns a dict that is served at /health."""

    def __init__(
        self,
        blobs: BlobService,
        manifests: ManifestService,
        access: AccessPolicy,
        health: Callable[[], dict[str, Any]],
    ) -> None:
        self.blobs = blobs
        self.manifests = manifests
        self.access = access
        self.health = health
        self.routes = self._routes()
        self.inflight = 0

    def _routes(self) -> list[Route]:
        name = r"(?P<name>.+?)"
        return [
            Route(re.compile(r"^/v2/?$"), {"GET": (self.base, ()), "HEAD": (self.base, ())}),
            Route(re.compile(r"^/v2/_catalog$"), {"GET": (self.catalog, (PULL,))}),
            Route(re.compile(rf"^/v2/{name}/tags/list$"), {"GET": (self.tags, (PULL,))}),
            Route(
                re.compile(rf"^/v2/{name}/manifests/(?P<ref>[^/]+)$"),
                {
                    "GET": (self.get_manifest, (PULL,)),
                    "HEAD": (self.get_manifest, (PULL,)),
                    "PUT": (self.put_manifest, (PULL, PUSH)),
                    "DELETE": (self.delete_manifest, (DELETE,)),
                },
            ),
            Route(
                re.compile(rf"^/v2/{name}/blobs/uploads/?$"),
                {"POST": (self.start_upload, (PULL, PUSH))},
            ),
            Route(
                re.compile(rf"^/v2/{name}/blobs/uploads/(?P<upload>[^/]+)$"),
                {
                    "GET": (self.upload_status, (PUSH,)),
                    "PATCH": (self.patch_upload, (PUSH,)),
                    "PUT": (self.finish_upload, (PUSH,)),
                    "DELETE": (self.cancel_upload, (PUSH,)),
                },
            ),
            Route(
                re.compile(rf"^/v2/{name}/blobs/(?P<digest>[^/]+)$"),
                {
                    "GET": (self.get_blob, (PULL,)),
                    "HEAD": (self.get_blob, (PULL,)),
                    "DELETE": (self.delete_blob, (DELETE,)),
                },
            ),
            Route(
                re.compile(rf"^/v2/{name}/referrers/(?P<digest>[^/]+)$"),
                {"GET": (self.referrers, (PULL,))},
            ),
            Route(re.compile(r"^/health$"), {"GET": (self.get_health, ())}),
        ]

    # -- aiohttp entry points ---------------------------------------------

    def build(self) -> web.Application:
        # Bodies are streamed by the handlers, never buffered by aiohttp.
        application = web.Application(client_max_size=0)
        application.router.add_route("*", "/{path:.*}", self.handle)
        return application

    async def handle(self, raw: web.Request) -> web.StreamResponse:
        request = Request(raw)
        repository: str | None = None
        self.inflight += 1
        try:
            handler, params, actions = self._dispatch(request)
            repository = params.get("name")
            if repository is not None:
                try:
                    validate_name(repository)
                except NameError_ as exc:
                    raise NameInvalid(str(exc), detail={"name": repository[:256]}) from exc
            self.access.check(request.headers, repository, actions)
            response = await handler(request, params)
        except RegistryError as exc:
            response = error_response(exc)
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

    def _dispatch(self, request: Request) -> tuple[Handler, dict[str, str], tuple[str, ...]]:
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

    @staticmethod
    def _render(response: Response) -> web.StreamResponse:
        headers = [API_VERSION, *response.headers]
        if response.file is not None:
            # aiohttp's FileResponse uses os.sendfile and answers Range and HEAD itself.
            return web.FileResponse(response.file, status=response.status, headers=headers)
        return web.Response(status=response.status, headers=headers, body=response.body)

    # -- base, health ------------------------------------------------------

    async def base(self, request: Request, params: dict[str, str]) -> Response:
        return json_response(200, {})

    async def get_health(self, request: Request, params: dict[str, str]) -> Response:
        report = self.health()
        report["inflight_requests"] = self.inflight - 1
        return json_response(200 if report.get("status") == "ok" else 503, report)

    # -- blobs -------------------------------------------------------------

    async def get_blob(self, request: Request, params: dict[str, str]) -> Response:
        blob = self.blobs.get(params["name"], params["digest"])
        headers: Headers = [
            ("docker-content-digest", str(blob.digest)),
            ("content-type", "application/octet-stream"),
            ("cache-control", "max-age=31536000"),
        ]
        return Response(200, headers, file=blob.path)

    async def delete_blob(self, request: Request, params: dict[str, str]) -> Response:
        digest = self.blobs.delete(params["name"], params["digest"])
        return Response(202, [("docker-content-digest", str(digest))])

    def _upload_headers(self, name: str, upload_id: str, size: int) -> Headers:
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

    async def start_upload(self, request: Request, params: dict[str, str]) -> Response:
        name = params["name"]
        mount = request.query("mount")
        if mount:
            source = request.query("from")
            if source:
                try:
                    validate_name(source)
                except NameError_ as exc:
                    raise NameInvalid(str(exc), detail={"name": source[:256]}) from exc
                self.access.check(request.headers, source, (PULL,))
            mounted = self.blobs.mount(name, mount, source)
            if mounted is not None:
                return self._blob_created(name, str(mounted))
        digest = request.query("digest")
        if digest is not None:
            body = request.body() if request.has_body else _empty_body()
            stored = await self.blobs.upload_whole(name, digest, body, request.content_length)
            return self._blob_created(name, str(stored))
        upload = self.blobs.start_upload(name)
        return Response(202, self._upload_headers(name, upload.upload_id, upload.size))

    async def upload_status(self, request: Request, params: dict[str, str]) -> Response:
        upload = self.blobs.status(params["name"], params["upload"])
        return Response(204, self._upload_headers(params["name"], upload.upload_id, upload.size))

    async def patch_upload(self, request: Request, params: dict[str, str]) -> Response:
        upload = await self.blobs.append(
            params["name"],
            params["upload"],
            request.body(),
            request.header("content-range"),
            request.content_length,
        )
        return Response(202, self._upload_headers(params["name"], upload.upload_id, upload.size))

    async def finish_upload(self, request: Request, params: dict[str, str]) -> Response:
        digest = await self.blobs.finish(
            params["name"],
            params["upload"],
            request.query("digest"),
            request.body() if request.has_body else None,
            request.header("content-range"),
            request.content_length,
        )
        return self._blob_created(params["name"], str(digest))

    async def cancel_upload(self, request: Request, params: dict[str, str]) -> Response:
        self.blobs.cancel(params["name"], params["upload"])
        return Response(204)

    # -- manifests ---------------------------------------------------------

    async def get_manifest(self, request: Request, params: dict[str, str]) -> Response:
        manifest = self.manifests.get(
            params["name"], params["ref"], request.header_values("accept")
        )
        headers: Headers = [
            ("content-type", manifest.media_type),
            ("docker-content-digest", manifest.digest),
            ("etag", f'"{manifest.digest}"'),
        ]
        return Response(200, headers, manifest.content)  # aiohttp drops the body on HEAD

    async def put_manifest(self, request: Request, params: dict[str, str]) -> Response:
        self.manifests.check_size(request.content_length)
        body = await request.read(self.manifests.max_manifest_bytes)
        if body is None:
            raise self.manifests.too_large()
        result = self.manifests.put(
            params["name"], params["ref"], body, request.header("content-type")
        )
        headers: Headers = [
            ("location", f"/v2/{params['name']}/manifests/{result.digest}"),
            ("docker-content-digest", result.digest),
        ]
        if result.subject:
            headers.append(("oci-subject", result.subject))
        return Response(201, headers)

    async def delete_manifest(self, request: Request, params: dict[str, str]) -> Response:
        self.manifests.delete(params["name"], params["ref"])
        return Response(202)

    # -- listings ----------------------------------------------------------

    async def tags(self, request: Request, params: dict[str, str]) -> Response:
        limit = _page_size(request.query("n"), None)
        page = self.manifests.tags(params["name"], limit, request.query("last"))
        return json_response(
            200,
            {"name": params["name"], "tags": page.items},
            _link(f"/v2/{params['name']}/tags/list", page, limit),
        )

    async def catalog(self, request: Request, params: dict[str, str]) -> Response:
        limit = _page_size(request.query("n"), DEFAULT_CATALOG_PAGE)
        page = self.manifests.catalog(limit, request.query("last"))
        return json_response(200, {"repositories": page.items}, _link("/v2/_catalog", page, limit))

    async def referrers(self, request: Request, params: dict[str, str]) -> Response:
        artifact_type = request.query("artifactType")
        body = self.manifests.referrers(params["name"], params["digest"], artifact_type)
        headers: Headers = [("content-type", "application/vnd.oci.image.index.v1+json")]
        if artifact_type is not None:
            headers.append(("oci-filters-applied", "artifactType"))
        return Response(200, headers, body)


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
