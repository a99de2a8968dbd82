"""The structured access log: one JSON object per request, written once the
reply is complete so the status and byte count are final (a blob's 206 or 416
is decided while it is sent). No header, query string or credential is kept."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

REPOSITORY_KEY = "moorage.repository"


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        length = request.headers.get("Content-Length", "")
        self.logger.info(
            json.dumps(
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
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
