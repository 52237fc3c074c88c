"""The one error type every layer raises, and its wire shape.

Native and compat surfaces share ``{"error": {"type", "message", "param", "code"}}``:
the Llama SDK accepts any JSON error body, and OpenAI's SDK reads exactly these keys.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status_code = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.error_type, "message": self.message, "param": self.param, "code": self.code}}


class InvalidRequest(APIError):
    status_code = 400


class AuthenticationFailed(APIError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDenied(APIError):
    status_code = 403
    error_type = "permission_error"


class NotFound(APIError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(APIError):
    """The request raced the resource's state (an upload part at a stale offset);
    ``details`` (the state to resume from) are added to the error object."""

    status_code = 409
    error_type = "conflict_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.details = details or {}

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"].update(self.details)
        return body


class PayloadTooLarge(APIError):
    status_code = 413


class UnsupportedMediaType(APIError):
    status_code = 415


class RateLimited(APIError):
    status_code = 429
    error_type = "rate_limit_error"


class ServiceUnavailable(APIError):
    status_code = 503
    error_type = "service_unavailable"


class EngineFailure(APIError):
    status_code = 500
    error_type = "server_error"


class ContentPolicyViolation(APIError):
    """A guardrail blocked the input or the reply; ``categories`` names the hazards."""

    status_code = 400
    error_type = "content_policy"

    def __init__(self, message: str, *, categories: tuple[str, ...] | list[str], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.categories = list(categories)

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["categories"] = self.categories
        return body
