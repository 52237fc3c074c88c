"""Chat completion as a service: resolve the model, check what it can serve, budget
tokens against its context window, and run the engine. Both wire surfaces call this;
neither knows how generation works.

A caller may pass a ``Meter`` (rate limiting and usage accounting, see
``tenancy/metering.py``): the service asks it to admit the request once the prompt is
counted and the completion budgeted, before any generation, and tells it exactly once
how the request ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..engines.base import EngineEvent, Finished, TextOut
from ..engines.registry import ModelEntry, ModelRegistry
from ..protocol.errors import APIError, EngineFailure, InvalidRequest, ServiceUnavailable
from .types import ChatMessage, ChatRequest, ChatResult, Usage

if TYPE_CHECKING:
    from ..safety.guardrails import Guardrails

log = logging.getLogger("llamahost.requests")


@dataclass(frozen=True)
class Outcome:
    """How a request ended. Tokens are those really processed: a request refused or
    failed before generation started processed none."""

    status: str  # "ok", "cancelled" (the caller went away), or the APIError type that ended it
    model: str  # as requested
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str | None
    latency_ms: float


class Meter(Protocol):
    async def admit(self, model_id: str, prompt_tokens: int, max_tokens: int) -> None:
        """Called before generating, with the backing model's id and the most tokens the
        request can use; raising (e.g. a 429) refuses it."""

    def end(self, outcome: Outcome) -> Awaitable[None]:
        """Called exactly once. Must start its work before returning: the service awaits
        it only after a success (so the caller's response reflects it); after a failure
        or a disconnect it frees the engine first and leaves the work running."""


def status_of(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return exc.error_type
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    return "server_error"


class ChatStream:
    """A started completion: iterate it for text pieces; ``result`` is set at the end."""

    def __init__(
        self,
        request: ChatRequest,
        entry: ModelEntry,
        events: AsyncIterator[EngineEvent],
        first: EngineEvent,
        *,
        prompt_tokens: int = 0,
        meter: Meter | None = None,
        started: float | None = None,
        check_output: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.request = request
        self.entry = entry
        self._events = events
        self._first: EngineEvent | None = first
        self._text: list[str] = []
        self._started = time.monotonic() if started is None else started
        self._prompt_tokens = prompt_tokens
        self._meter = meter
        self._ended = meter is None
        self._check_output = check_output
        self.result: ChatResult | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
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
                    result = ChatResult(
                        id=self.id,
                        model=self.request.model,
                        created=self.created,
                        text="".join(self._text),
                        stop_reason=event.stop_reason,
                        usage=Usage(event.prompt_tokens, event.completion_tokens),
                    )
                    self.result = result
                    self._log()
                    # Settled before the caller sees the result, so what it reports
                    # (e.g. remaining tokens) already counts the real usage. Shielded: a
                    # caller cancelled now must not cut the bookkeeping short.
                    if not self._ended:
                        await asyncio.shield(
                            self._end("ok", event.prompt_tokens, event.completion_tokens, event.stop_reason)
                        )
        except BaseException as exc:
            if not self._ended:
                self._end(status_of(exc))
            raise

    def _end(
        self, status: str, prompt_tokens: int | None = None, completion_tokens: int | None = None,
        stop_reason: str | None = None,
    ) -> Awaitable[None]:
        """Tell the meter once. Without the engine's final count, a request is charged its
        prompt and the pieces of text it produced (a lower bound of its tokens)."""
        assert self._meter is not None
        self._ended = True
        outcome = Outcome(
            status=status,
            model=self.request.model,
            prompt_tokens=self._prompt_tokens if prompt_tokens is None else prompt_tokens,
            completion_tokens=len(self._text) if completion_tokens is None else completion_tokens,
            stop_reason=stop_reason,
            latency_ms=(time.monotonic() - self._started) * 1000,
        )
        return self._meter.end(outcome)

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
        if not self._ended:
            self._end("cancelled")
        await self._events.aclose()


class ChatService:
    def __init__(self, registry: ModelRegistry, guardrails: "Guardrails | None" = None) -> None:
        self.registry = registry
        # Set after construction: the moderation behind the guardrails may itself run
        # a chat model through this service.
        self.guardrails = guardrails

    async def start(self, request: ChatRequest, meter: Meter | None = None, *, guarded: bool = True) -> ChatStream:
        """Admit and start a completion. Every error a client can cause is raised here,
        before the first byte of a response, so it can still be an HTTP status.

        ``guarded=False`` skips the guardrails (for the moderation models' own calls)."""
        started = time.monotonic()
        check_output = None
        try:
            entry = self.registry.resolve(request.model)
            if not entry.engine.ready:
                raise ServiceUnavailable(
                    f"model {request.model!r} is still loading", code="model_loading", headers={"Retry-After": "2"}
                )
            self._reject_unsupported(request)
            check_output = await self._guard_input(request) if guarded else None
            prepared = await entry.engine.prepare(request)
            max_tokens = self._token_budget(entry, prepared.prompt_tokens, request.max_tokens)
            if meter is not None:
                await meter.admit(entry.config.id, prepared.prompt_tokens, max_tokens)
            events = entry.engine.generate(prepared, max_tokens)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                raise EngineFailure("the engine produced nothing") from None
            except BaseException:
                await events.aclose()
                raise
        except BaseException as exc:
            if meter is not None:
                meter.end(Outcome(status_of(exc), request.model, 0, 0, None, (time.monotonic() - started) * 1000))
            raise
        return ChatStream(
            request, entry, events, first, prompt_tokens=prepared.prompt_tokens, meter=meter, started=started,
            check_output=check_output,
        )

    async def _guard_input(self, request: ChatRequest) -> Callable[[str], Awaitable[object]] | None:
        """Run the input guardrail (before the engine sees anything: a blocked input costs
        no generation, and the meter records it as refused); return the output check."""
        guardrails = self.guardrails
        policy = guardrails.policy_for(request) if guardrails is not None else None
        if guardrails is None or policy is None:
            return None
        if policy.checks_input:
            await guardrails.check(request, policy, "input", request.messages)
        if not policy.checks_output:
            return None

        async def check_output(text: str) -> object:
            reply = ChatMessage(role="assistant", content=text)
            return await guardrails.check(request, policy, "output", [*request.messages, reply])

        return check_output

    async def complete(self, request: ChatRequest, meter: Meter | None = None, *, guarded: bool = True) -> ChatResult:
        stream = await self.start(request, meter, guarded=guarded)
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
