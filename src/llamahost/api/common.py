"""What every HTTP surface shares: request body parsing into a wire model,
authentication, metered chat calls (rate limits, usage, ``x-ratelimit-*`` headers),
and racing work against the client going away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Response, Security
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import observability as obs
from ..chat.service import ChatStream
from ..errors import APIError, InvalidRequest, PayloadTooLarge, PermissionDenied, UnsupportedMediaType
from ..tenancy.content import ModerationContent
from ..tenancy.keys import Principal
from ..tenancy.metering import Meter
from ..tenancy.scope import ADMIN, OPERATOR
from ..tenancy.usage import new_record_id
from ..types.chat import ChatRequest, ChatResult, ImageInput
from .errors import error_response

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
    principal = await run_in_threadpool(keys.authenticate, key)
    request.state.principal = principal
    return principal


async def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """An operator key, or a team's admin key (whose scope is its own team)."""
    if principal.role not in (OPERATOR, ADMIN):
        raise PermissionDenied("this endpoint needs an admin or operator key", param="authorization")
    return principal


def surface_of(request: Request) -> str:
    return "compat" if request.scope["path"].startswith("/compat/") else "native"


def moderation_content(request: Request, model: str, messages, verdict) -> ModerationContent:
    """A moderation call's content, to queue for storage (kept if the team keeps content)."""
    principal: Principal = request.state.principal
    return ModerationContent(
        record_id=new_record_id(),
        created_at=datetime.now(UTC),
        team_id=principal.team_id,
        key_id=principal.key_id,
        user=None,
        kind="moderation",
        surface=surface_of(request),
        model=model,
        status="ok",
        flagged=verdict.flagged,
        messages=messages,
        categories=verdict.categories,
        request_id=obs.request_id_var.get(),
    )


# --- metered chat: what every inference route calls --------------------------------


def _meter(request: Request, chat_request: ChatRequest) -> Meter:
    principal: Principal = request.state.principal
    chat_request.team, chat_request.team_id = principal.team_name, principal.team_id  # per-team policies
    return request.app.state.services.metering.meter(
        request.state.principal, chat_request.user, chat_request, surface_of(request)
    )


async def _metered(request: Request, meter: Meter, call):
    try:
        return await unless_disconnected(request, call)
    except APIError as exc:
        # Rate-limit headers on every inference response, errors included.
        exc.headers = {**meter.headers(), **exc.headers}
        raise


async def start_chat(request: Request, chat_request: ChatRequest) -> tuple[ChatStream, dict[str, str]]:
    """Start a metered completion for the authenticated caller; returns the stream and
    the headers its response must carry. Raises ClientDisconnected, or APIError (429
    included) already carrying the rate-limit headers."""
    meter = _meter(request, chat_request)
    stream = await _metered(request, meter, request.app.state.services.chat.start(chat_request, meter))
    return stream, meter.headers()


async def complete_chat(request: Request, chat_request: ChatRequest) -> tuple[ChatResult, dict[str, str]]:
    """Run a metered completion to its end; as ``start_chat``, with the headers counting
    the tokens really used."""
    meter = _meter(request, chat_request)
    result = await _metered(request, meter, request.app.state.services.chat.complete(chat_request, meter))
    return result, meter.headers()


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


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, coro):
    """Run ``coro``; if the client disconnects first, cancel it and raise ClientDisconnected.

    ``coro`` runs in the calling task (one watcher task per request, not two tasks and a
    wait): the watcher cancels this task when the client goes away."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _wait_for_disconnect(request)
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await coro
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientDisconnected() from None
        raise
    finally:
        watcher.cancel()


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not they
    declare a Content-Length (chunked uploads are counted as they arrive)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"request body exceeds the limit of {self.limit} bytes", param="body")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await error_response(too_large)(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large
            return message

        await self.app(scope, counting_receive, send)


async def serve_chat(
    request: Request,
    chat_request: ChatRequest,
    *,
    stream_body: Callable[[ChatStream], AsyncIterator[bytes]],
    json_body: Callable[[ChatResult], dict],
) -> Response:
    """Run a chat request for a wire surface, which only supplies its two renderings."""
    try:
        if chat_request.stream:
            stream, headers = await start_chat(request, chat_request)
            return StreamingResponse(stream_body(stream), media_type="text/event-stream", headers=headers)
        result, headers = await complete_chat(request, chat_request)
    except ClientDisconnected:
        return Response(status_code=499)
    return JSONResponse(json_body(result), headers=headers)


# Both surfaces' content items are pydantic models with `type` "text" (`.text`) or
# "image_url" (`.image_url.url`); these read either.


def content_text(content) -> str:
    """The text of a message's content: a string, one text item, or a list of items."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    items = content if isinstance(content, list) else [content]
    return "\n".join(item.text for item in items if item.type == "text")


def content_images(message_index: int, content) -> tuple[ImageInput, ...]:
    if not isinstance(content, list):
        return ()
    return tuple(
        ImageInput(url=item.image_url.url, param=f"messages[{message_index}].content[{j}]")
        for j, item in enumerate(content)
        if item.type == "image_url"
    )
