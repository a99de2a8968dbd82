"""The structured access log: one JSON object per request, written once the
reply is complete so the status and byte count are final (a blob's 206 or 416
is decided while it is sent). No header, query string or credential is kept.

Lines look like every other log line (``<time> INFO moorage.access {...}``).
When the server logs to stderr (``configure_logging``), they skip the logging
module: building a LogRecord, taking the handler's lock and a write per line
came to a fifth of the event loop's time on cached manifest GETs (py-spy).
Instead, the lines of one turn of the event loop are joined and written at
its end, in one call."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

REPOSITORY_KEY = "moorage.repository"


class DirectWriter:
    """Access log lines to a stream, batched per turn of the event loop."""

    def __init__(self, stream: TextIO, name: str = "moorage.access") -> None:
        self.stream = stream
        self.name = name
        self._pending: list[str] = []
        self._second = -1
        self._prefix = ""

    def _stamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        return f"{self._prefix},{int((now - second) * 1000):03d} INFO {self.name} "

    def write(self, message: str) -> None:
        line = self._stamp() + message + "\n"
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.stream.write(line)
            self.stream.flush()
            return
        if not self._pending:
            loop.call_soon(self.flush)
        self._pending.append(line)

    def flush(self) -> None:
        lines, self._pending = self._pending, []
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed: nothing to tell it
                pass


_direct: DirectWriter | None = None


def write_directly(writer: DirectWriter | None) -> None:
    """Send access lines to ``writer`` rather than through logging (None: logging)."""
    global _direct
    _direct = writer


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        length = request.headers.get("Content-Length", "")
        line = json.dumps(
            {
                "method": request.method,
                "path": request.rel_url.raw_path,
                "repository": request.get(REPOSITORY_KEY),
                "status": response.status,
                "bytes_in": int(length) if length.isdigit() else None,
                "bytes_out": 0 if request.method == "HEAD" else response.content_length,
                "duration_ms": round(time * 1000, 3),
                "client": request.remote,
                "user_agent": request.headers.get("User-Agent"),
            },
            separators=(",", ":"),
        )
        if _direct is not None:
            _direct.write(line)
        else:
            self.logger.info(line)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
