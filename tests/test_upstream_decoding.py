"""The upstream engine's wire mapping and JSON/SSE decoding, unit-tested through an
injected ``httpx.MockTransport``: no server, so each case runs in milliseconds. The
engine's behaviour against real OpenAI-compatible servers is in test_upstream.py."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from llamahost.config import ModelConfig
from llamahost.engines.base import Finished, TextOut, ToolCallDelta
from llamahost.engines.openai_upstream import OpenAIUpstreamEngine
from llamahost.errors import APIError
from llamahost.types.chat import ChatMessage, ChatRequest, ToolSpec

URL = "http://upstream.test/v1"


def sse(*events: dict | str) -> bytes:
    return b"".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events)


def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> dict:
    body: dict = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return body


class Upstream:
    """Answers health checks, records every completion request, replies with ``reply``."""

    def __init__(self, reply: httpx.Response) -> None:
        self.reply = reply
        self.requests: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": []})
        self.requests.append(json.loads(request.content))
        return self.reply


async def run(upstream: Upstream, request: ChatRequest, *, max_tokens: int = 16, **config) -> list:
    engine = OpenAIUpstreamEngine(
        ModelConfig(id="m", engine="openai", replicas=[URL], **config), transport=httpx.MockTransport(upstream)
    )
    await engine.load()
    try:
        prepared = await engine.prepare(request)
        return [event async for event in engine.generate(prepared, max_tokens)]
    finally:
        await engine.close()


def chat(**kw) -> ChatRequest:
    kw.setdefault("messages", [ChatMessage("user", "hi")])
    return ChatRequest(model="m", **kw)


def test_sse_text_and_usage_become_engine_events():
    body = sse(
        chunk({"role": "assistant", "content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        {"id": "x", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}},
        "[DONE]",
    )
    upstream = Upstream(httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    events = asyncio.run(run(upstream, chat()))
    assert "".join(e.text for e in events if isinstance(e, TextOut)) == "Hello"
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.stop_reason == "stop" and finished.prompt_tokens == 7 and finished.completion_tokens == 2
    sent = upstream.requests[0]
    assert sent["model"] == "m" and sent["stream"] is True and sent["max_tokens"] == 16
    assert sent["messages"] == [{"role": "user", "content": "hi"}]


def test_streamed_tool_call_fragments_join_into_one_call():
    body = sse(
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, "tool_calls"),
        "[DONE]",
    )
    upstream = Upstream(httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    tool = ToolSpec("get_weather", None, {"type": "object", "properties": {"location": {"type": "string"}}})
    events = asyncio.run(run(upstream, chat(tools=[tool], tool_choice="auto")))
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas and deltas[0].name == "get_weather"
    assert "".join(d.arguments for d in deltas) == '{"location": "Paris"}'
    assert isinstance(events[-1], Finished) and events[-1].stop_reason == "tool_calls"
    assert upstream.requests[0]["tools"][0]["function"]["name"] == "get_weather"


def test_length_finish_reason_is_kept():
    body = sse(chunk({"content": "abc"}), chunk({}, "length"), "[DONE]")
    upstream = Upstream(httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    events = asyncio.run(run(upstream, chat()))
    assert isinstance(events[-1], Finished) and events[-1].stop_reason == "length"


def test_json_reply_when_streaming_only_as_requested():
    reply = {
        "id": "x", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    upstream = Upstream(httpx.Response(200, json=reply))
    events = asyncio.run(run(upstream, chat(), upstream_streaming="as_requested"))
    assert "".join(e.text for e in events if isinstance(e, TextOut)) == "Hi there"
    assert upstream.requests[0]["stream"] is False


def test_an_upstream_client_error_is_relayed_as_an_api_error():
    upstream = Upstream(httpx.Response(400, json={"error": {"message": "bad temperature", "type": "invalid_request_error"}}))
    with pytest.raises(APIError) as info:
        asyncio.run(run(upstream, chat()))
    assert info.value.status_code == 400
    assert "bad temperature" in info.value.message
