"""A hostile registry for tests: a small aiohttp server on loopback, in a thread
of its own (so a webhook process and in-process readers can both call it),
that serves one image and then tries to send its callers elsewhere: a blob
redirect to an "instance metadata" server, or a Bearer realm on another host.
Every request it and its accomplices receive is recorded, Authorization
included. It is a fake on purpose: the hostile registry is the fault under test."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass, field

from aiohttp import web

from moorage.trust import cosign
from tests.server import free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Heard:
    method: str
    path: str
    authorization: str | None


@dataclass
class Listener:
    """One loopback HTTP server (the registry, a metadata service, a token service)."""

    name: str
    heard: list[Heard] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


class AttackerRegistry:
    """``mode``: "redirect" (blobs redirect to ``metadata``), "realm" (every
    /v2 request answers a Bearer challenge whose realm is ``token``) or
    "endless" (blobs answer with a body of ``ENDLESS`` bytes, counted in
    ``sent`` as they go, until the client hangs up)."""

    ENDLESS = 64 << 20

    def __init__(self, mode: str = "redirect") -> None:
        self.mode = mode
        self.sent = 0
        self.registry = Listener("registry")
        self.metadata = Listener("metadata")  # 169.254.169.254 in real life
        self.token = Listener("token")
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        self.config = config
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _digest(config),
                    "size": len(config),
                },
                "layers": [],
            }
        ).encode()
        self.digest = _digest(self.manifest)
        payload = b'{"critical": {}}'
        self.payload_digest = _digest(payload)
        self.signature_manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": self.manifest_config(),
                "layers": [
                    {
                        "mediaType": cosign.SIMPLE_SIGNING,
                        "digest": self.payload_digest,
                        "size": len(payload),
                        "annotations": {cosign.SIGNATURE_ANNOTATION: "MEUCIQ=="},
                    }
                ],
            }
        ).encode()
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def manifest_config(self) -> dict[str, object]:
        return {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _digest(self.config),
            "size": len(self.config),
        }

    @property
    def host(self) -> str:
        return self.registry.host

    def image(self, repo: str = "app/tool") -> str:
        return f"{self.host}/{repo}:v1"

    def start(self) -> AttackerRegistry:
        self._thread.start()
        for listener, handler in (
            (self.registry, self._registry),
            (self.metadata, self._record_only),
            (self.token, self._token),
        ):
            asyncio.run_coroutine_threadsafe(self._serve(listener, handler), self._loop).result(10)
        return self

    def stop(self) -> None:
        for runner in self._runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, listener: Listener, handler: web.Handler) -> None:
        async def recorded(request: web.Request) -> web.StreamResponse:
            listener.heard.append(
                Heard(request.method, request.path_qs, request.headers.get("Authorization"))
            )
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", recorded)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", listener.port).start()
        self._runners.append(runner)

    async def _record_only(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"AccessKeyId": "stolen", "SecretAccessKey": "stolen"})

    async def _token(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"token": "from-elsewhere", "expires_in": 300})

    async def _registry(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "realm" and request.headers.get("Authorization") != "Bearer from-elsewhere":
            realm = f"http://{self.token.host}/token"
            return web.Response(
                status=401,
                headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="attacker"'},
            )
        path = request.path
        if "/manifests/" in path:
            reference = path.rsplit("/", 1)[1]
            if reference.endswith(".sig"):
                body = self.signature_manifest
            elif reference in ("v1", self.digest):
                body = self.manifest
            else:
                return web.Response(status=404)
            headers = {"Docker-Content-Digest": _digest(body), "Content-Type": OCI_MANIFEST}
            return web.Response(body=None if request.method == "HEAD" else body, headers=headers)
        if "/blobs/" in path and self.mode == "endless":
            return await self._endless(request)
        if "/blobs/" in path:
            location = f"http://{self.metadata.host}/latest/meta-data/iam/security-credentials/"
            return web.Response(status=307, headers={"Location": location})
        return web.Response(status=404)

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await reply.prepare(request)
        chunk = b"\0" * (1 << 20)
        try:
            while self.sent < self.ENDLESS:
                await reply.write(chunk)
                self.sent += len(chunk)
        except (ConnectionError, RuntimeError):
            return reply  # the client hung up: what it was sent is counted
        await reply.write_eof()
        return reply


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
