"""The wire shape of every error, as a model for the OpenAPI document: what
``errors.APIError.body()`` renders, on the native and compat surfaces alike."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    # Some errors carry more: a conflict the state to resume from (an upload's offset).
    model_config = ConfigDict(extra="allow")

    type: str  # invalid_request_error, authentication_error, permission_error, not_found_error, ...
    message: str
    param: str | None  # the field, query parameter or header at fault (a JSON path such as messages[0].role)
    code: str | None = None  # a stable machine-readable reason where there is one (model_not_found, ...)
    categories: list[str] | None = None  # content_policy errors only: the hazards that blocked the request


class ErrorResponse(BaseModel):
    error: ErrorDetail
