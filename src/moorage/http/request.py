"""A thin, typed view of an RSGI request: only what the handlers read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from moorage.registry.errors import SizeInvalid


class Request:
    __slots__ = ("_proto", "_query", "headers", "method", "path", "query_string", "scope")

    def __init__(self, scope: Any, proto: Any) -> None:
        self.scope = scope
        self._proto = proto
        self.method: str = scope.method
        self.path: str = scope.path
        self.query_string: str = scope.query_string
        self.headers = scope.headers
        self._query: dict[str, list[str]] | None = None

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else str(value)

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers.items() if k.lower() == name]

    def query(self, name: str) -> str | None:
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        values = self._query.get(name)
        return values[0] if values else None

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
        length = self.content_length
        if length is not None:
            return length > 0
        return "chunked" in (self.header("transfer-encoding") or "").lower()

    async def body(self) -> AsyncIterator[bytes]:
        async for chunk in self._proto:
            yield chunk

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None when it exceeds ``limit`` bytes."""
        parts: list[bytes] = []
        total = 0
        async for chunk in self._proto:
            total += len(chunk)
            if total > limit:
                return None
            parts.append(chunk)
        return b"".join(parts)
