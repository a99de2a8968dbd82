"""The distribution spec's error codes, raised by services and rendered by HTTP."""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    code = "UNKNOWN"
    status = 500

    def __init__(
        self,
        message: str,
        *,
        detail: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}


def _error(code: str, status: int) -> type[RegistryError]:
    return type(
        code.title().replace("_", "") + "Error", (RegistryError,), {"code": code, "status": status}
    )


BlobUnknown = _error("BLOB_UNKNOWN", 404)
BlobUploadInvalid = _error("BLOB_UPLOAD_INVALID", 400)
BlobUploadUnknown = _error("BLOB_UPLOAD_UNKNOWN", 404)
DigestInvalid = _error("DIGEST_INVALID", 400)
ManifestBlobUnknown = _error("MANIFEST_BLOB_UNKNOWN", 400)
ManifestInvalid = _error("MANIFEST_INVALID", 400)
ManifestUnknown = _error("MANIFEST_UNKNOWN", 404)
NameInvalid = _error("NAME_INVALID", 400)
NameUnknown = _error("NAME_UNKNOWN", 404)
SizeInvalid = _error("SIZE_INVALID", 400)
Unauthorized = _error("UNAUTHORIZED", 401)
Denied = _error("DENIED", 403)
Unsupported = _error("UNSUPPORTED", 400)
TooManyRequests = _error("TOOMANYREQUESTS", 429)
RangeInvalid = _error("BLOB_UPLOAD_INVALID", 416)
