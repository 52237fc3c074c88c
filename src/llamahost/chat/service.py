"""Chat completion as a service: resolve the model, check what it can serve, budget
tokens against its context window, and run the engine. Both wire surfaces call this;
neither knows how generation works.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator

from ..engines.base import EngineEvent, Finished, TextOut
from ..engines.registry import ModelEntry, ModelRegistry
from ..protocol.errors import EngineFailure, InvalidRequest, ServiceUnavailable
from .tools import check_request, new_call_id
from .types import ChatEvent, ChatRequest, ChatResult, TextChunk, ToolCall, ToolCallDelta, Usage

log = logging.getLogger("llamahost.requests")


class ChatStream:
    """A started completion: iterate it for ``TextChunk``s and ``ToolCallDelta``s (each
    call's first delta carries a fresh ``id`` and the name); ``result`` is set at the end."""

    def __init__(
        self, request: ChatRequest, entry: ModelEntry, events: AsyncIterator[EngineEvent], first: EngineEvent
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.request = request
        self.entry = entry
        self._events = events
        self._first: EngineEvent | None = first
        self._text: list[str] = []
        self._calls: list[list[str]] = []  # [id, name, arguments so far] per call index
        self._started = time.monotonic()
        self.result: ChatResult | None = None

    async def __aiter__(self) -> AsyncIterator[ChatEvent]:
        while self.result is None:
            if self._first is not None:
                event, self._first = self._first, None
            else:
                try:
                    event = await anext(self._events)
                except StopAsyncIteration:
                    raise EngineFailure("the engine ended the generation without finishing it") from None
            if isinstance(event, TextOut):
                self._text.append(event.text)
                yield TextChunk(event.text)
            elif isinstance(event, ToolCallDelta):
                yield self._tool_call_delta(event)
            elif isinstance(event, Finished):
                stop_reason = event.stop_reason
                if self._calls and stop_reason == "stop":
                    stop_reason = "tool_calls"
                self.result = ChatResult(
                    id=self.id,
                    model=self.request.model,
                    created=self.created,
                    text="".join(self._text),
                    stop_reason=stop_reason,
                    usage=Usage(event.prompt_tokens, event.completion_tokens),
                    tool_calls=[ToolCall(id=i, name=n, arguments=a) for i, n, a in self._calls],
                )
                self._log()

    def _tool_call_delta(self, delta: ToolCallDelta) -> ToolCallDelta:
        if delta.index == len(self._calls):
            if delta.name is None:
                raise EngineFailure("the engine streamed tool call arguments before the call's name")
            # Fresh ids, whatever the engine had: a later tool message is matched by it.
            self._calls.append([new_call_id(), delta.name, ""])
            call = self._calls[-1]
            call[2] += delta.arguments
            return ToolCallDelta(index=delta.index, id=call[0], name=delta.name, arguments=delta.arguments)
        if not 0 <= delta.index < len(self._calls):
            raise EngineFailure(f"the engine streamed tool call {delta.index} out of order")
        self._calls[delta.index][2] += delta.arguments
        return ToolCallDelta(index=delta.index, arguments=delta.arguments)

    def _log(self) -> None:
        assert self.result is not None
        log.info(
            "chat model=%s user=%s prompt_tokens=%d completion_tokens=%d stop_reason=%s latency_ms=%.0f",
            self.request.model,
            self.request.user,
            self.result.usage.prompt_tokens,
            self.result.usage.completion_tokens,
            self.result.stop_reason,
            (time.monotonic() - self._started) * 1000,
        )

    async def aclose(self) -> None:
        """Stop generating (a no-op once finished); frees the engine at once."""
        await self._events.aclose()


class ChatService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def start(self, request: ChatRequest) -> ChatStream:
        """Admit and start a completion. Every error a client can cause is raised here,
        before the first byte of a response, so it can still be an HTTP status."""
        entry = self.registry.resolve(request.model)
        if not entry.engine.ready:
            raise ServiceUnavailable(
                f"model {request.model!r} is still loading", code="model_loading", headers={"Retry-After": "2"}
            )
        self._reject_unsupported(request)
        check_request(request)
        prepared = await entry.engine.prepare(request)
        max_tokens = self._token_budget(entry, prepared.prompt_tokens, request.max_tokens)
        events = entry.engine.generate(prepared, max_tokens)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise EngineFailure("the engine produced nothing") from None
        except BaseException:
            await events.aclose()
            raise
        return ChatStream(request, entry, events, first)

    async def complete(self, request: ChatRequest) -> ChatResult:
        stream = await self.start(request)
        try:
            async for _ in stream:
                pass
        finally:
            await stream.aclose()
        assert stream.result is not None
        return stream.result

    @staticmethod
    def _reject_unsupported(request: ChatRequest) -> None:
        # Not yet implemented features are refused, never silently ignored.
        for message in request.messages:
            for image in message.images:
                raise InvalidRequest(
                    f"model {request.model!r} does not accept image input (text only)", param=image.param
                )

    @staticmethod
    def _token_budget(entry: ModelEntry, prompt_tokens: int, requested: int | None) -> int:
        window = entry.config.context_window
        if requested is not None:
            if prompt_tokens + requested > window:
                raise InvalidRequest(
                    f"prompt ({prompt_tokens} tokens) + max_completion_tokens ({requested}) = "
                    f"{prompt_tokens + requested} tokens exceeds the context window of {window} tokens "
                    f"of model {entry.name!r}",
                    param="max_completion_tokens",
                    code="context_length_exceeded",
                )
            return requested
        if prompt_tokens >= window:
            raise InvalidRequest(
                f"prompt ({prompt_tokens} tokens) leaves no room in the context window of {window} tokens "
                f"of model {entry.name!r}",
                param="messages",
                code="context_length_exceeded",
            )
        return min(entry.config.default_max_completion_tokens, window - prompt_tokens)
