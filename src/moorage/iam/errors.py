"""IAM errors: each says what was wrong in one line, never echoing a secret."""

from __future__ import annotations


class IamError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(IamError):
    pass


class NotFound(IamError):
    status = 404
    code = "not_found"


class Conflict(IamError):
    status = 409
    code = "conflict"


class LimitReached(IamError):
    status = 409
    code = "limit_reached"


class Forbidden(IamError):
    status = 403
    code = "forbidden"


class Unauthenticated(IamError):
    status = 401
    code = "unauthenticated"


class Throttled(IamError):
    status = 429
    code = "too_many_requests"
