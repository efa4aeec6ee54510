"""One error tree. Each error knows its HTTP status and the API error envelope's `type`."""

from __future__ import annotations

from typing import Any, ClassVar


class OMAError(Exception):
    """Base of every error this platform raises on purpose."""


class APIError(OMAError):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"

    def __init__(
        self,
        message: str,
        *,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.error_code:
            error["details"] = {"error_code": self.error_code}
        return {"type": "error", "error": error, "request_id": request_id}


class InvalidRequest(APIError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(APIError):
    status = 401
    error_type = "authentication_error"


class PermissionDenied(APIError):
    status = 403
    error_type = "permission_error"


class NotFound(APIError):
    status = 404
    error_type = "not_found_error"


class MethodNotAllowed(APIError):
    status = 405
    error_type = "invalid_request_error"


class Conflict(APIError):
    """A request that cannot apply to the object's current state; retrying it unchanged won't help."""

    status = 409
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, error_code: str | None = None) -> None:
        super().__init__(message, error_code=error_code, headers={"x-should-retry": "false"})


class PayloadTooLarge(APIError):
    status = 413
    error_type = "request_too_large"


class RateLimited(APIError):
    status = 429
    error_type = "rate_limit_error"


class InternalError(APIError):
    status = 500
    error_type = "api_error"


class ConfigError(OMAError):
    """The platform is misconfigured; the message says which setting to fix."""
