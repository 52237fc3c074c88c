"""The native Llama API surface (``/v1``): wire model <-> internal chat model."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..chat.service import ChatStream
from ..engines.registry import ModelEntry
from ..errors import APIError, InvalidRequest
from ..http_docs import CHAT_ERRORS, error_responses, operation
from ..protocol import native as wire
from ..types.chat import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    SamplingParams,
    TextChunk,
    ToolCall,
    ToolSpec,
    Usage,
)
from .common import (
    ClientDisconnected,
    authenticate,
    content_images,
    content_text,
    delete_tuned_model,
    moderation_content,
    parse_body,
    serve_chat,
    unless_disconnected,
)
from .services import Services

router = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], responses=error_responses(401))


# --- wire -> internal ------------------------------------------------------------


def _message(index: int, message: wire.Message) -> ChatMessage:
    tool_calls: tuple[ToolCall, ...] = ()
    if isinstance(message, wire.AssistantMessage) and message.tool_calls:
        tool_calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls)
    return ChatMessage(
        role=message.role,
        content=content_text(message.content),
        images=content_images(index, message.content) if message.role == "user" else (),
        tool_calls=tool_calls,
        tool_call_id=message.tool_call_id if isinstance(message, wire.ToolMessage) else None,
    )


def to_chat_request(body: wire.ChatCompletionRequest) -> ChatRequest:
    defaults = SamplingParams()
    tool_choice = body.tool_choice.function.name if isinstance(body.tool_choice, wire.NamedToolChoice) else body.tool_choice
    json_schema = None
    if isinstance(body.response_format, wire.JSONSchemaFormat):
        json_schema = body.response_format.json_schema.schema_
    return ChatRequest(
        model=body.model,
        messages=[_message(i, m) for i, m in enumerate(body.messages)],
        max_tokens=body.max_completion_tokens,
        sampling=SamplingParams(
            temperature=defaults.temperature if body.temperature is None else body.temperature,
            top_p=defaults.top_p if body.top_p is None else body.top_p,
            top_k=defaults.top_k if body.top_k is None else body.top_k,
            repetition_penalty=defaults.repetition_penalty if body.repetition_penalty is None else body.repetition_penalty,
        ),
        user=body.user,
        stream=body.stream,
        tools=[ToolSpec(t.function.name, t.function.description, t.function.parameters) for t in body.tools or []],
        tool_choice=tool_choice,
        json_schema=json_schema,
    )


def to_moderation_messages(body: wire.ModerationRequest) -> list[ChatMessage]:
    messages = [_message(i, m) for i, m in enumerate(body.messages)]
    for message in messages:
        for image in message.images:
            raise InvalidRequest("moderation judges text only; image items are not accepted", param=image.param)
    return messages


# --- internal -> wire ------------------------------------------------------------


def _metrics(usage: Usage) -> list[wire.Metric]:
    return [
        wire.Metric(metric="num_completion_tokens", value=usage.completion_tokens),
        wire.Metric(metric="num_prompt_tokens", value=usage.prompt_tokens),
        wire.Metric(metric="num_total_tokens", value=usage.total_tokens),
    ]


def to_response(result: ChatResult) -> wire.ChatCompletionResponse:
    # Exactly {id, function: {name, arguments}}: clients send the message back
    # verbatim, and the request side accepts no more than that.
    tool_calls = [{"id": c.id, "function": {"name": c.name, "arguments": c.arguments}} for c in result.tool_calls]
    return wire.ChatCompletionResponse(
        id=result.id,
        completion_message=wire.CompletionMessage(
            content=wire.TextContent(text=result.text), stop_reason=result.stop_reason, tool_calls=tool_calls
        ),
        metrics=_metrics(result.usage),
    )


_SLOT = "\u0000slot\u0000"


def _json_text(text: str) -> bytes:
    # As pydantic's model_dump_json encodes a string.
    return json.dumps(text, ensure_ascii=False).encode()


def _sse(payload: wire.StreamChunk) -> bytes:
    return b"data: " + payload.model_dump_json(exclude_none=True).encode() + b"\n\n"


async def stream_events(stream: ChatStream) -> AsyncIterator[bytes]:
    """start -> progress* -> complete -> metrics; a failure mid-stream ends it with an
    ``error`` event, which the SDK raises as an APIError."""
    try:
        yield _sse(wire.StreamChunk(id=stream.id, event=wire.StreamEvent(event_type="start")))
        # A text delta per generated token: its envelope is encoded once, around the text
        # (the bytes _sse writes for it; pydantic and json.dumps both leave non-ASCII as is).
        progress = wire.StreamEvent(event_type="progress", delta=wire.TextDelta(text=_SLOT))
        text_chunk = _sse(wire.StreamChunk(id=stream.id, event=progress))
        head, tail = text_chunk.rsplit(_json_text(_SLOT), 1)
        async for event in stream:
            if isinstance(event, TextChunk):
                yield head + _json_text(event.text) + tail
                continue
            if event.name is not None:
                # A call opens with its id and name; its arguments follow in later deltas.
                delta = wire.ToolCallDelta(id=event.id, function={"name": event.name})
                yield _sse(wire.StreamChunk(id=stream.id, event=wire.StreamEvent(event_type="progress", delta=delta)))
                if not event.arguments:
                    continue
                delta = wire.ToolCallDelta(function={"arguments": event.arguments})
            else:
                delta = wire.ToolCallDelta(function={"arguments": event.arguments})
            yield _sse(wire.StreamChunk(id=stream.id, event=wire.StreamEvent(event_type="progress", delta=delta)))
        result = stream.result
        assert result is not None
        yield _sse(
            wire.StreamChunk(
                id=stream.id, event=wire.StreamEvent(event_type="complete", stop_reason=result.stop_reason)
            )
        )
        yield _sse(
            wire.StreamChunk(
                id=stream.id,
                event=wire.StreamEvent(
                    event_type="metrics", stop_reason=result.stop_reason, metrics=_metrics(result.usage)
                ),
            )
        )
    except APIError as exc:
        yield b"event: error\ndata: " + json.dumps(exc.body()).encode() + b"\n\n"
    finally:
        await stream.aclose()


# --- routes ------------------------------------------------------------------------


@router.post(
    "/chat/completions",
    **operation(body=wire.ChatCompletionRequest, response=wire.ChatCompletionResponse, errors=CHAT_ERRORS, streams=True),
)
async def create_chat_completion(request: Request) -> Response:
    body = await parse_body(request, wire.ChatCompletionRequest)
    return await serve_chat(
        request,
        to_chat_request(body),
        stream_body=stream_events,
        json_body=lambda result: to_response(result).model_dump(mode="json"),
    )


@router.post("/moderations", **operation(body=wire.ModerationRequest, response=wire.ModerationResponse, errors=(404, 502, 503)))
async def create_moderation(request: Request) -> Response:
    body = await parse_body(request, wire.ModerationRequest)
    messages = to_moderation_messages(body)
    services = request.app.state.services
    started = time.monotonic()
    try:
        outcome = await unless_disconnected(request, services.moderation.moderate(body.model, messages))
    except ClientDisconnected:
        return Response(status_code=499)
    principal = request.state.principal
    # A usage record of its own (kind "moderation"), with the call's content if the team keeps it.
    services.metering.usage_writer.record(
        content=moderation_content(request, outcome.model, messages, outcome.verdict),
        team_id=principal.team_id,
        key_id=principal.key_id,
        model=outcome.model,
        user=None,
        prompt_tokens=0,
        completion_tokens=0,
        latency_ms=(time.monotonic() - started) * 1000,
        status="flagged" if outcome.verdict.flagged else "ok",
        stop_reason=None,
        kind="moderation",
    )
    result = wire.ModerationResult(flagged=outcome.verdict.flagged, flagged_categories=list(outcome.verdict.categories))
    return JSONResponse(wire.ModerationResponse(model=outcome.model, results=[result]).model_dump(mode="json"))


@router.get("/models", **operation(response=wire.ModelList))
async def list_models(request: Request) -> wire.ModelList:
    # The configured models, then the calling team's tuned models.
    team_id = request.state.principal.team_id
    entries = await run_in_threadpool(request.app.state.services.registry.entries, team_id)  # asks the store
    return wire.ModelList(data=[_card(e) for e in entries])


@router.get("/models/{model_id:path}", **operation(response=wire.ModelCard, errors=(404,)))
async def retrieve_model(model_id: str, request: Request) -> wire.ModelCard:
    return _card(await run_in_threadpool(request.app.state.services.registry.resolve, model_id, request.state.principal.team_id))


@router.delete("/models/{model_id:path}", **operation(response=wire.ModelDeleted, errors=(403, 404)))
async def delete_model(model_id: str, request: Request) -> wire.ModelDeleted:
    return wire.ModelDeleted(id=await run_in_threadpool(delete_tuned_model, request, model_id), deleted=True)


def _card(entry: ModelEntry) -> wire.ModelCard:
    return wire.ModelCard(**entry.card())


def attach(app: FastAPI, services: Services) -> None:
    app.include_router(router)
