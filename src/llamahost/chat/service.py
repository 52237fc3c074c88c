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
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Protocol

from .. import observability as obs
from ..engines.base import EngineEvent, Finished, TextOut, ToolCallDelta
from ..engines.registry import ModelEntry, ModelRegistry
from ..protocol.errors import APIError, EngineFailure, InvalidRequest, RateLimited, ServiceUnavailable
from .types import ChatRequest, ChatResult, ToolCall, Usage

log = logging.getLogger("llamahost.requests")

Output = TextOut | ToolCallDelta


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
    """A started completion: iterate it for output events (text, tool-call pieces);
    ``result`` is set at the end. Every ending (finished, failed, abandoned) is
    counted in the metrics, logged, and told to the meter exactly once."""

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
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.request = request
        self.entry = entry
        self._events = events
        self._first: EngineEvent | None = first
        self._text: list[str] = []
        self._calls: dict[int, list] = {}  # index -> [id, name, argument pieces]
        self._pieces = 0
        self._started = time.monotonic() if started is None else started
        self._first_output: float | None = None
        self._last_output: float | None = None
        self._prompt_tokens = prompt_tokens
        self._meter = meter
        self._ended = False
        # Children looked up once: these are observed for every piece of output.
        self._ttft = obs.TIME_TO_FIRST_TOKEN.labels(entry.name)
        self._itl = obs.INTER_TOKEN_LATENCY.labels(entry.name)
        self.result: ChatResult | None = None

    async def __aiter__(self) -> AsyncIterator[Output]:
        try:
            while self.result is None:
                if self._first is not None:
                    event, self._first = self._first, None
                else:
                    try:
                        event = await anext(self._events)
                    except StopAsyncIteration:
                        raise EngineFailure("the engine ended the generation without finishing it") from None
                if isinstance(event, Finished):
                    result = ChatResult(
                        id=self.id,
                        model=self.request.model,
                        created=self.created,
                        text="".join(self._text),
                        stop_reason=event.stop_reason,
                        usage=Usage(event.prompt_tokens, event.completion_tokens),
                        tool_calls=self._tool_calls(),
                    )
                    self.result = result
                    # Settled before the caller sees the result, so what it reports
                    # (e.g. remaining tokens) already counts the real usage. Shielded: a
                    # caller cancelled now must not cut the bookkeeping short.
                    if not self._ended:
                        metered = self._end("ok", event.prompt_tokens, event.completion_tokens, event.stop_reason)
                        if metered is not None:
                            await asyncio.shield(metered)
                    continue
                self._observe_output()
                if isinstance(event, TextOut):
                    self._text.append(event.text)
                else:
                    call = self._calls.setdefault(event.index, [None, None, []])
                    call[0] = call[0] or event.id
                    call[1] = call[1] or event.name
                    call[2].append(event.arguments)
                yield event
        except BaseException as exc:
            if not self._ended:
                # An upstream that broke mid-stream says how much it had generated.
                self._end(status_of(exc), completion_tokens=getattr(exc, "completion_tokens", None), error=exc)
            raise

    def _observe_output(self) -> None:
        now = time.monotonic()
        if self._last_output is None:
            self._first_output = now
            self._ttft.observe(now - self._started)
        else:
            self._itl.observe(now - self._last_output)
        self._last_output = now
        self._pieces += 1

    def _tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=call_id or f"call_{uuid.uuid4().hex[:24]}", name=name or "", arguments="".join(pieces))
            for _, (call_id, name, pieces) in sorted(self._calls.items())
        ]

    def _end(
        self, status: str, prompt_tokens: int | None = None, completion_tokens: int | None = None,
        stop_reason: str | None = None, error: BaseException | None = None,
    ) -> Awaitable[None] | None:
        """Record the ending once: metrics, the log line, and the meter. Without the
        engine's final count, a request is charged its prompt and the pieces of output
        it produced (a lower bound of its tokens)."""
        self._ended = True
        outcome = Outcome(
            status=status,
            model=self.request.model,
            prompt_tokens=self._prompt_tokens if prompt_tokens is None else prompt_tokens,
            completion_tokens=self._pieces if completion_tokens is None else completion_tokens,
            stop_reason=stop_reason,
            latency_ms=(time.monotonic() - self._started) * 1000,
        )
        model = self.entry.name
        label = "ok" if status == "ok" else ("cancelled" if status == "cancelled" else "error")
        obs.REQUESTS.labels(model, label).inc()
        obs.IN_FLIGHT.labels(model).dec()
        obs.REQUEST_DURATION.labels(model).observe(outcome.latency_ms / 1000)
        obs.PROMPT_TOKENS.labels(model).inc(outcome.prompt_tokens)
        obs.COMPLETION_TOKENS.labels(model).inc(outcome.completion_tokens)
        message = getattr(error, "message", None) or (str(error) if error is not None else None)
        ttft_ms = round((self._first_output - self._started) * 1000, 1) if self._first_output else None
        log.log(
            logging.WARNING if label == "error" else logging.INFO,
            "chat model=%s user=%s status=%s prompt_tokens=%d completion_tokens=%d stop_reason=%s latency_ms=%.0f%s",
            self.request.model,
            self.request.user,
            status,
            outcome.prompt_tokens,
            outcome.completion_tokens,
            stop_reason,
            outcome.latency_ms,
            f" error={message!r}" if message else "",
            extra={
                "event": "chat_completion",
                "model": self.request.model,
                "user": self.request.user,
                "status": status,
                "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "stop_reason": stop_reason,
                "ttft_ms": ttft_ms,
                "latency_ms": round(outcome.latency_ms, 1),
                "error": message,
            },
        )
        return None if self._meter is None else self._meter.end(outcome)

    async def aclose(self) -> None:
        """Stop generating (a no-op once finished); frees the engine at once."""
        if not self._ended:
            self._end("cancelled")
        await self._events.aclose()



class ChatService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def start(self, request: ChatRequest, meter: Meter | None = None) -> ChatStream:
        """Admit and start a completion. Every error a client can cause is raised here,
        before the first byte of a response, so it can still be an HTTP status."""
        started = time.monotonic()
        model = "unknown"  # label for names that are not configured: never client text
        in_flight = None
        try:
            entry = self.registry.resolve(request.model)
            model = entry.name
            in_flight = obs.IN_FLIGHT.labels(model)
            in_flight.inc()
            if not entry.engine.ready:
                raise ServiceUnavailable(
                    f"model {request.model!r} is still loading", code="model_loading", headers={"Retry-After": "2"}
                )
            self._reject_unsupported(entry, request)
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
            if in_flight is not None:
                in_flight.dec()
            if isinstance(exc, APIError):
                obs.REQUESTS.labels(model, str(exc.status_code)).inc()
                if isinstance(exc, RateLimited) and exc.code:
                    obs.RATE_LIMIT_REJECTIONS.labels(exc.code).inc()
            if meter is not None:
                meter.end(Outcome(status_of(exc), request.model, 0, 0, None, (time.monotonic() - started) * 1000))
            raise
        return ChatStream(
            request, entry, events, first, prompt_tokens=prepared.prompt_tokens, meter=meter, started=started
        )

    async def complete(self, request: ChatRequest, meter: Meter | None = None) -> ChatResult:
        stream = await self.start(request, meter)
        try:
            async for _ in stream:
                pass
        finally:
            await stream.aclose()
        assert stream.result is not None
        return stream.result

    @staticmethod
    def _reject_unsupported(entry: ModelEntry, request: ChatRequest) -> None:
        # What the model cannot serve is refused, never silently ignored.
        capabilities = entry.capabilities
        if "vision" not in capabilities:
            for message in request.messages:
                for image in message.images:
                    raise InvalidRequest(
                        f"model {request.model!r} does not accept image input (text only)", param=image.param
                    )
        if "tools" not in capabilities:
            if request.tools:
                raise InvalidRequest(f"model {request.model!r} does not support tool calling", param="tools")
            if request.tool_choice not in (None, "none", "auto"):
                raise InvalidRequest(
                    f"tool_choice needs tools, which model {request.model!r} does not support", param="tool_choice"
                )
        elif request.tool_choice not in (None, "none", "auto", "required"):
            if request.tool_choice not in {t.name for t in request.tools}:
                raise InvalidRequest(
                    f"tool_choice names {request.tool_choice!r}, which is not one of the request's tools",
                    param="tool_choice",
                )
        if request.json_schema is not None and "json_schema" not in capabilities:
            raise InvalidRequest(
                f"model {request.model!r} does not support response_format json_schema", param="response_format"
            )
        if request.tool_choice == "required" and not request.tools:
            raise InvalidRequest("tool_choice 'required' needs tools", param="tool_choice")

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
