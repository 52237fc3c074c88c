"""What every HTTP surface of ``api/`` shares: metered chat calls (rate limits, usage,
``x-ratelimit-*`` headers), admin checks, the body size cap, and racing work against
the client going away. Authentication and body parsing live in ``http_common`` (below
``api/``, for the feature slices too) and are re-exported here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import observability as obs
from ..chat.service import ChatStream
from ..errors import APIError, PayloadTooLarge, PermissionDenied

# Re-exported: the api routers import them from here.
from ..http_common import ClientDisconnected, authenticate, is_streamed_multipart, parse_body  # noqa: F401
from ..tenancy.content import ModerationContent
from ..tenancy.keys import Principal
from ..tenancy.metering import Meter
from ..tenancy.scope import ADMIN, OPERATOR
from ..tenancy.usage import new_record_id
from ..types.chat import ChatRequest, ChatResult, ImageInput
from .errors import error_response


def delete_tuned_model(request: Request, model_id: str) -> str:
    """``DELETE /models/{id}`` of either surface: a team admin's (or operator's) key
    deletes one of its own team's tuned models; a member key may call them, not delete."""
    principal: Principal = request.state.principal
    if principal.role not in (OPERATOR, ADMIN):
        raise PermissionDenied("deleting a tuned model needs an admin or operator key of its team", param="authorization")
    request.app.state.services.registry.delete_tuned(model_id, principal.team_id)
    return model_id


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
    declare a Content-Length (chunked uploads are counted as they arrive). Multipart
    routes that stream their bodies under their own cap (file uploads,
    ``http_common.streamed_multipart``) are left to it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_streamed_multipart(scope):
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
