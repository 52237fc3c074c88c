"""Chat completion as a service: resolve the model, check what it can serve, budget
tokens against its context window, and run the engine. Both wire surfaces call this;
neither knows how generation works.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from ..engines.base import EngineEvent, Finished, TextOut
from ..engines.registry import ModelEntry, ModelRegistry
from ..protocol.errors import EngineFailure, InvalidRequest, ServiceUnavailable
from .types import ChatMessage, ChatRequest, ChatResult, Usage

if TYPE_CHECKING:
    from ..safety.guardrails import Guardrails

log = logging.getLogger("llamahost.requests")


class ChatStream:
    """A started completion: iterate it for text pieces; ``result`` is set at the end."""

    def __init__(
        self,
        request: ChatRequest,
        entry: ModelEntry,
        events: AsyncIterator[EngineEvent],
        first: EngineEvent,
        check_output: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.request = request
        self.entry = entry
        self._events = events
        self._first: EngineEvent | None = first
        self._text: list[str] = []
        self._started = time.monotonic()
        self._check_output = check_output
        self.result: ChatResult | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
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
                yield event.text
            elif isinstance(event, Finished):
                if self._check_output is not None:
                    # Before the result exists, so a stream's final events come only
                    # after the reply passed (a blocked one raises instead).
                    await self._check_output("".join(self._text))
                self.result = ChatResult(
                    id=self.id,
                    model=self.request.model,
                    created=self.created,
                    text="".join(self._text),
                    stop_reason=event.stop_reason,
                    usage=Usage(event.prompt_tokens, event.completion_tokens),
                )
                self._log()

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
    def __init__(self, registry: ModelRegistry, guardrails: "Guardrails | None" = None) -> None:
        self.registry = registry
        # Set after construction: the moderation behind the guardrails may itself run
        # a chat model through this service.
        self.guardrails = guardrails

    async def start(self, request: ChatRequest, *, guarded: bool = True) -> ChatStream:
        """Admit and start a completion. Every error a client can cause is raised here,
        before the first byte of a response, so it can still be an HTTP status.

        ``guarded=False`` skips the guardrails (for the moderation models' own calls)."""
        entry = self.registry.resolve(request.model)
        if not entry.engine.ready:
            raise ServiceUnavailable(
                f"model {request.model!r} is still loading", code="model_loading", headers={"Retry-After": "2"}
            )
        self._reject_unsupported(request)
        check_output = None
        guardrails = self.guardrails if guarded else None
        policy = guardrails.policy_for(request) if guardrails else None
        if guardrails is not None and policy is not None:
            if policy.checks_input:
                # Before the engine sees anything: a blocked input costs no generation.
                await guardrails.check(request, policy, "input", request.messages)
            if policy.checks_output:

                async def check_output(text: str, guardrails=guardrails, policy=policy) -> object:
                    reply = ChatMessage(role="assistant", content=text)
                    return await guardrails.check(request, policy, "output", [*request.messages, reply])

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
        return ChatStream(request, entry, events, first, check_output)

    async def complete(self, request: ChatRequest, *, guarded: bool = True) -> ChatResult:
        stream = await self.start(request, guarded=guarded)
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
        if request.tools:
            raise InvalidRequest("tool calling is not supported by this server yet", param="tools")
        if request.tool_choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice needs tools, which this server does not support yet", param="tool_choice")
        if request.json_schema is not None:
            raise InvalidRequest(
                "response_format json_schema is not supported by this server yet", param="response_format"
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
