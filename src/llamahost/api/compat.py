"""The OpenAI-compatible surface (``/compat/v1``): OpenAI wire model <-> internal chat model.

Same models, keys, service and engine as the native surface; only the shapes differ.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..chat.service import ChatStream
from ..engines.registry import ModelEntry
from ..errors import APIError, InvalidRequest
from ..http_docs import CHAT_ERRORS, error_responses, operation
from ..protocol import compat as wire
from ..types.chat import ChatMessage, ChatRequest, ChatResult, SamplingParams, TextChunk, ToolCall, ToolSpec
from .common import authenticate, content_images, content_text, delete_tuned_model, parse_body, serve_chat
from .services import Services

router = APIRouter(prefix="/compat/v1", dependencies=[Depends(authenticate)], responses=error_responses(401))

MAX_STOP_SEQUENCES = 4  # OpenAI's limit; clients written for it never send more


# --- wire -> internal ------------------------------------------------------------


def _message(index: int, message: wire.Message) -> ChatMessage:
    tool_calls: tuple[ToolCall, ...] = ()
    if isinstance(message, wire.AssistantMessage) and message.tool_calls:
        tool_calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls)
    return ChatMessage(
        # OpenAI's "developer" role is its newer name for the system prompt.
        role="system" if message.role == "developer" else message.role,
        content=content_text(message.content),
        images=content_images(index, message.content) if message.role == "user" else (),
        tool_calls=tool_calls,
        tool_call_id=message.tool_call_id if isinstance(message, wire.ToolMessage) else None,
    )


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"stop: at most {MAX_STOP_SEQUENCES} sequences", param="stop")
    if any(not s for s in stops):
        raise InvalidRequest("stop: sequences must not be empty", param="stop")
    return stops


def _max_tokens(body: wire.ChatCompletionRequest) -> int | None:
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        if body.max_tokens != body.max_completion_tokens:
            raise InvalidRequest(
                "max_tokens and max_completion_tokens disagree; send only max_completion_tokens", param="max_tokens"
            )
    return body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens


def _json_schema(response_format) -> dict | None:
    if isinstance(response_format, wire.JSONSchemaFormat):
        return response_format.json_schema.schema_ or {"type": "object"}
    if isinstance(response_format, wire.JSONObjectFormat):
        return {"type": "object"}
    return None


def to_chat_request(body: wire.ChatCompletionRequest) -> ChatRequest:
    if body.n not in (None, 1):
        raise InvalidRequest("n: only 1 choice per request is served; send several requests", param="n")
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest("stream_options is only allowed with stream: true", param="stream_options")
    if body.logprobs or body.top_logprobs:
        raise InvalidRequest("logprobs are not returned by this server", param="logprobs" if body.logprobs else "top_logprobs")
    defaults = SamplingParams()
    tool_choice = body.tool_choice.function.name if isinstance(body.tool_choice, wire.NamedToolChoice) else body.tool_choice
    return ChatRequest(
        model=body.model,
        messages=[_message(i, m) for i, m in enumerate(body.messages)],
        max_tokens=_max_tokens(body),
        sampling=SamplingParams(
            temperature=defaults.temperature if body.temperature is None else body.temperature,
            top_p=defaults.top_p if body.top_p is None else body.top_p,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            seed=body.seed,
        ),
        stop=_stops(body.stop),
        user=body.user,
        stream=bool(body.stream),
        tools=[ToolSpec(t.function.name, t.function.description, t.function.parameters) for t in body.tools or []],
        tool_choice=tool_choice,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        json_schema=_json_schema(body.response_format),
    )


# --- internal -> wire ------------------------------------------------------------


def _usage(result: ChatResult) -> dict:
    u = result.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def to_response(result: ChatResult) -> dict:
    tool_calls = [
        wire.ToolCallOut(id=c.id, function=wire.FunctionCallOut(name=c.name, arguments=c.arguments))
        for c in result.tool_calls
    ]
    completion = wire.ChatCompletion(
        id=result.id,
        created=result.created,
        model=result.model,
        choices=[
            wire.Choice(
                message=wire.AssistantOut(
                    content=result.text if result.text or not tool_calls else None, tool_calls=tool_calls or None
                ),
                finish_reason=result.stop_reason,
            )
        ],
        usage=wire.Usage(**_usage(result)),
    )
    return completion.model_dump(mode="json", exclude_none=True) | {"system_fingerprint": None}


def _chunk(stream: ChatStream, delta: dict, finish_reason: str | None = None) -> bytes:
    payload = {
        "id": stream.id,
        "object": "chat.completion.chunk",
        "created": stream.created,
        "model": stream.request.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


_SLOT = "\u0000slot\u0000"


def _content_template(stream: ChatStream) -> tuple[bytes, bytes]:
    """The bytes of a content chunk before and after its JSON-encoded text: one chunk
    per generated token, so the envelope is encoded once per stream, not per token
    (the same bytes ``_chunk`` writes)."""
    # The last occurrence: the content comes after every field a client names.
    head, tail = _chunk(stream, {"content": _SLOT}).rsplit(json.dumps(_SLOT).encode(), 1)
    return head, tail


def stream_chunks(include_usage: bool):
    async def render(stream: ChatStream) -> AsyncIterator[bytes]:
        """role chunk -> content chunks -> finish chunk -> [usage chunk] -> [DONE];
        a failure mid-stream is sent as ``data: {"error": ...}``, which the OpenAI SDK raises."""
        try:
            yield _chunk(stream, {"role": "assistant", "content": ""})
            head, tail = _content_template(stream)
            async for out in stream:
                if isinstance(out, TextChunk):
                    yield head + json.dumps(out.text).encode() + tail
                    continue
                call: dict = {"index": out.index}
                if out.id:
                    call |= {"id": out.id, "type": "function"}
                call["function"] = ({"name": out.name} if out.name else {}) | {"arguments": out.arguments}
                yield _chunk(stream, {"tool_calls": [call]})
            result = stream.result
            assert result is not None
            yield _chunk(stream, {}, result.stop_reason)
            if include_usage:
                usage_chunk = {
                    "id": stream.id,
                    "object": "chat.completion.chunk",
                    "created": stream.created,
                    "model": stream.request.model,
                    "choices": [],
                    "usage": _usage(result),
                }
                yield b"data: " + json.dumps(usage_chunk).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        except APIError as exc:
            yield b"data: " + json.dumps(exc.body()).encode() + b"\n\n"
        finally:
            await stream.aclose()

    return render


# --- routes ------------------------------------------------------------------------


@router.post(
    "/chat/completions",
    **operation(body=wire.ChatCompletionRequest, response=wire.ChatCompletion, errors=CHAT_ERRORS, streams=True),
)
async def create_chat_completion(request: Request) -> Response:
    body = await parse_body(request, wire.ChatCompletionRequest)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await serve_chat(
        request, to_chat_request(body), stream_body=stream_chunks(include_usage), json_body=to_response
    )


def _model(entry: ModelEntry) -> wire.Model:
    return wire.Model(**entry.card())


@router.get("/models", **operation(response=wire.ModelList))
async def list_models(request: Request) -> wire.ModelList:
    # The configured models, then the calling team's tuned models.
    team_id = request.state.principal.team_id
    entries = await run_in_threadpool(request.app.state.services.registry.entries, team_id)  # asks the store
    return wire.ModelList(data=[_model(e) for e in entries])


@router.get("/models/{model_id:path}", **operation(response=wire.Model, errors=(404,)))
async def retrieve_model(model_id: str, request: Request) -> wire.Model:
    return _model(await run_in_threadpool(request.app.state.services.registry.resolve, model_id, request.state.principal.team_id))


@router.delete("/models/{model_id:path}", **operation(response=wire.ModelDeleted, errors=(403, 404)))
async def delete_model(model_id: str, request: Request) -> wire.ModelDeleted:
    return wire.ModelDeleted(id=await run_in_threadpool(delete_tuned_model, request, model_id), deleted=True)


def attach(app: FastAPI, services: Services) -> None:
    app.include_router(router)
