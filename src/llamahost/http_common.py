"""What every HTTP route shares, feature slices in their own packages included: who is
calling (``authenticate``), the JSON body parsed strictly into a wire model
(``parse_body``), and which multipart routes stream their bodies under their own size
caps. It sits below ``api/`` because ``api/app.py`` imports the slices that use it."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from .errors import InvalidRequest, UnsupportedMediaType
from .tenancy.keys import Principal

M = TypeVar("M", bound=BaseModel)


class ClientDisconnected(Exception):
    pass


# Declares the bearer key in the OpenAPI document (the "Authorize" button of /docs); the
# header is read below, so a missing or malformed one is this API's 401, not FastAPI's 403.
_bearer_key = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer llh_...`")


async def authenticate(
    request: Request, _documented: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_key)] = None
) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    key = token.strip() if scheme.lower() == "bearer" else None
    keys = request.app.state.services.keys
    principal = keys.recently_authenticated(key) or await run_in_threadpool(keys.authenticate, key)
    request.state.principal = principal
    return principal


def _is_json_content_type(value: str) -> bool:
    media_type = value.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def parse_body(request: Request, model: type[M]) -> M:
    """Parse a JSON body strictly into ``model``; every failure is a 4xx naming the field."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json_content_type(content_type):
        raise UnsupportedMediaType(
            f"request body must be application/json, got {content_type.split(';', 1)[0]!r}", param="content-type"
        )
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", param="body", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", param="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, data) from None


def _validation_error(exc: ValidationError, data: Any) -> InvalidRequest:
    # A union reports one error per member; the deepest is the most specific
    # ("messages[0].content[0].type" rather than "messages[0].content").
    errors = exc.errors(include_url=False)
    error = max(errors, key=lambda e: len(param_from_loc(data, e["loc"])))
    param = param_from_loc(data, error["loc"])
    kind = error["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = str(error.get("ctx", {}).get("discriminator", "")).strip("'")
        param = f"{param}.{discriminator}" if param else discriminator
    if kind == "extra_forbidden":
        message = f"unknown field {param!r}"
    elif kind == "missing":
        message = f"{param}: field required"
    else:
        message = f"{param}: {error['msg']}" if param else error["msg"]
    return InvalidRequest(message, param=param or None)


def param_from_loc(data: Any, loc: tuple) -> str:
    """Turn a pydantic error location into a JSON path like ``messages[0].content``.

    Pydantic puts union member names and discriminator tags into ``loc``; walking the
    input alongside the location keeps only the segments that exist in the request.
    """
    parts: list[str] = []
    node = data
    for segment in loc:
        if isinstance(segment, int) and isinstance(node, list) and 0 <= segment < len(node):
            parts.append(f"[{segment}]")
            node = node[segment]
        elif isinstance(segment, str) and isinstance(node, dict) and segment in (node.get("role"), node.get("type")):
            continue  # a discriminated union's tag, not a field
        elif isinstance(segment, str) and isinstance(node, dict) and segment in node:
            parts.append(f".{segment}" if parts else segment)
            node = node[segment]
        elif isinstance(segment, str) and isinstance(node, dict) and not _looks_like_type_label(segment):
            # A missing or unknown field: name it, then stop walking.
            parts.append(f".{segment}" if parts else segment)
            node = None
    return "".join(parts)


def _looks_like_type_label(segment: str) -> bool:
    # Union member labels such as "str", "list[TextItem]", "TextItem", "function-after[...]".
    return segment in {"str", "int", "float", "bool", "dict", "list", "none"} or "[" in segment or segment[:1].isupper()




# --- multipart routes that stream their bodies -----------------------------------------------

_STREAMED_MULTIPART = "streamed_multipart_paths"


def streamed_multipart(app: FastAPI, *paths: re.Pattern[str]) -> None:
    """Declare routes (path patterns) that read multipart/form-data bodies as a stream and
    enforce their own size cap: the server-wide JSON body cap does not apply to them."""
    if not hasattr(app.state, _STREAMED_MULTIPART):
        setattr(app.state, _STREAMED_MULTIPART, [])
    getattr(app.state, _STREAMED_MULTIPART).extend(paths)


def is_streamed_multipart(scope: Scope) -> bool:
    app = scope.get("app")
    paths = getattr(getattr(app, "state", None), _STREAMED_MULTIPART, None)
    if not paths or scope.get("method") != "POST":
        return False
    content_type = next((v for k, v in scope.get("headers", []) if k == b"content-type"), b"")
    if content_type.split(b";", 1)[0].strip().lower() != b"multipart/form-data":
        return False
    return any(pattern.match(scope["path"]) for pattern in paths)
