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


class BlobUnknown(RegistryError):
    code = "BLOB_UNKNOWN"
    status = 404


class BlobUploadInvalid(RegistryError):
    code = "BLOB_UPLOAD_INVALID"
    status = 400


class BlobUploadUnknown(RegistryError):
    code = "BLOB_UPLOAD_UNKNOWN"
    status = 404


class DigestInvalid(RegistryError):
    code = "DIGEST_INVALID"
    status = 400


class ManifestBlobUnknown(RegistryError):
    code = "MANIFEST_BLOB_UNKNOWN"
    status = 400


class ManifestInvalid(RegistryError):
    code = "MANIFEST_INVALID"
    status = 400


class ManifestUnknown(RegistryError):
    code = "MANIFEST_UNKNOWN"
    status = 404


class NameInvalid(RegistryError):
    code = "NAME_INVALID"
    status = 400


class NameUnknown(RegistryError):
    code = "NAME_UNKNOWN"
    status = 404


class SizeInvalid(RegistryError):
    code = "SIZE_INVALID"
    status = 400


class Unauthorized(RegistryError):
    code = "UNAUTHORIZED"
    status = 401


class Denied(RegistryError):
    code = "DENIED"
    status = 403


class Unsupported(RegistryError):
    code = "UNSUPPORTED"
    status = 400


class TooManyRequests(RegistryError):
    code = "TOOMANYREQUESTS"
    status = 429


class RangeInvalid(BlobUploadInvalid):
    """A chunk that does not continue the upload: 416, with the current Range."""

    status = 416


class NamespaceGone(Denied):
    """The namespace a write was authorised for changed hands (or went) meanwhile."""

    def __init__(self) -> None:
        super().__init__("the namespace was removed or changed hands while this request ran")


class Conflict(RegistryError):
    code = "CONFLICT"
    status = 409


class SignatureInvalid(RegistryError):
    """A signature (or a signer's key) that is not what it must be."""

    code = "SIGNATURE_INVALID"
    status = 400


class StorageUnavailable(RegistryError):
    """The blob store's backend failed (unreachable, refused, full): try again later."""

    code = "UNKNOWN"
    status = 503
