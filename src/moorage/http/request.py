"""A thin, typed view of an aiohttp request: only what the handlers read."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from moorage.registry.errors import SizeInvalid


class Request:
    __slots__ = ("_raw", "headers", "method", "path")

    def __init__(self, raw: web.Request) -> None:
        self._raw = raw
        self.method: str = raw.method
        # The path as sent, still percent-encoded, so encoded tricks stay visible.
        self.path: str = raw.rel_url.raw_path
        self.headers = raw.headers

    @property
    def client(self) -> str | None:
        return self._raw.remote

    async def form(self) -> dict[str, list[str]]:
        """An urlencoded form body (small: the token endpoint's)."""
        data = await self._raw.post()
        form: dict[str, list[str]] = {}
        for key, value in data.items():
            form.setdefault(key, []).append(str(value))
        return form

    def query_all(self, name: str) -> list[str]:
        return list(self._raw.rel_url.query.getall(name, []))

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def header_values(self, name: str) -> list[str]:
        return list(self.headers.getall(name, []))

    def query(self, name: str) -> str | None:
        return self._raw.rel_url.query.get(name)

    @property
    def content_length(self) -> int | None:
        value = self.header("content-length")
        if value is None:
            return None
        if not value.isdigit():
            raise SizeInvalid("Content-Length must be a non-negative integer")
        return int(value)

    @property
    def has_body(self) -> bool:
        return self._raw.body_exists

    async def body(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a connection that drops mid-body is SIZE_INVALID."""
        try:
            async for chunk in self._raw.content.iter_any():
                yield chunk
        except (RequestPayloadError, HttpProcessingError, ConnectionError) as exc:
            raise SizeInvalid("request body ended before it was complete") from exc

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None when it exceeds ``limit`` bytes."""
        parts: list[bytes] = []
        total = 0
        async for chunk in self.body():
            total += len(chunk)
            if total > limit:
                return None
            parts.append(chunk)
        return b"".join(parts)
