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
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from .. import observability as obs
from ..engines.base import EngineEvent, Finished, TextOut
from ..engines.registry import ModelEntry, ModelRegistry
from ..errors import APIError, EngineFailure, InvalidRequest, NotFound, ServiceUnavailable
from ..types.chat import (
    ChatEvent,
    ChatRequest,
    ChatResult,
    Outcome,
    TextChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
    new_call_id,
)
from ..types.tuned import TUNED_PREFIX
from .images import ImagePolicy, attach_images
from .protocols import Guard, Meter, OutputCheck
from .tools import check_request

log = logging.getLogger("llamahost.requests")

@dataclass(frozen=True)
class CompletionRecord:
    """How one admitted completion ended. Hooks in ``ChatService.on_finished`` get one
    per completion, whatever the ending: this is where usage accounting plugs in."""

    request_id: str | None
    model: str  # the name the client asked for
    model_id: str  # the configured model serving it
    user: str | None
    status: Literal["ok", "error", "cancelled"]
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str | None
    error: str | None
    time_to_first_token: float | None
    duration: float


def status_of(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return exc.error_type
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    return "server_error"


class ChatStream:
    """A started completion: iterate it for ``TextChunk``s and ``ToolCallDelta``s (each
    call's first delta carries a fresh ``id`` and the name); ``result`` is set at the end."""

    def __init__(
        self,
        request: ChatRequest,
        entry: ModelEntry,
        events: AsyncGenerator[EngineEvent, None],
        first: EngineEvent,
        *,
        prompt_tokens: int,
        started: float,
        on_finished: list[Callable[[CompletionRecord], None]],
        user_logging: obs.UserLogging | None = None,
        meter: Meter | None = None,
        check_output: OutputCheck | None = None,
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.request = request
        self.entry = entry
        self.request_id = obs.request_id_var.get()
        self._events = events
        self._first: EngineEvent | None = first
        self._text: list[str] = []
        self._calls: list[list[str]] = []  # [id, name, arguments so far] per call index
        self._prompt_tokens = prompt_tokens
        self._output_pieces = 0
        self._started = started
        self._first_output: float | None = None
        self._last_output: float | None = None
        self._on_finished = on_finished
        self._user_logging = user_logging or obs.UserLogging()
        self._recorded = False
        self._meter = meter
        self._check_output = check_output
        # Children looked up once: these are observed for every piece of output.
        self._ttft = obs.TIME_TO_FIRST_TOKEN.labels(entry.label)
        self._itl = obs.INTER_TOKEN_LATENCY.labels(entry.label)
        self.result: ChatResult | None = None

    async def __aiter__(self) -> AsyncIterator[ChatEvent]:
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
                    if self._check_output is not None:
                        # Before the result exists, so a stream's final events come only
                        # after the reply passed (a blocked one raises instead).
                        await self._check_output("".join(self._text))
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
                    self._record("ok", event.prompt_tokens, event.completion_tokens, stop_reason)
                    # Before the caller sees the result, so the headers it gets count the
                    # real usage (the meter settles the shared counters in the background).
                    self._end_meter("ok", event.prompt_tokens, event.completion_tokens, stop_reason)
                    continue
                self._observe_output()
                if isinstance(event, TextOut):
                    self._text.append(event.text)
                    yield TextChunk(event.text)
                else:
                    yield self._tool_call_delta(event)
        except APIError as exc:
            tokens = getattr(exc, "completion_tokens", self._output_pieces)
            self._record("error", self._prompt_tokens, tokens, None, error=exc.message)
            self._end_meter(exc.error_type, self._prompt_tokens, tokens)
            raise

    def _end_meter(
        self, status: str, prompt_tokens: int, completion_tokens: int, stop_reason: str | None = None
    ) -> None:
        """Tell the meter once how the request ended. Without the engine's final count, a
        request is charged its prompt and the pieces it produced (a lower bound)."""
        if self._meter is None:
            return
        meter, self._meter = self._meter, None
        latency_ms = (time.monotonic() - self._started) * 1000
        calls = tuple(ToolCall(id=i, name=n, arguments=a) for i, n, a in self._calls)
        outcome = Outcome(
            status, self.request.model, prompt_tokens, completion_tokens, stop_reason, latency_ms,
            text="".join(self._text), tool_calls=calls,
        )
        meter.end(outcome)

    def _observe_output(self) -> None:
        now = time.monotonic()
        if self._last_output is None:
            self._first_output = now
            self._ttft.observe(now - self._started)
        elif self.request.stream:  # between pieces a client receives; JSON replies come whole
            self._itl.observe(now - self._last_output)
        self._last_output = now
        self._output_pieces += 1

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

    def _record(
        self, status: str, prompt_tokens: int, completion_tokens: int, stop_reason: str | None, error: str | None = None
    ) -> None:
        if self._recorded:
            return
        self._recorded = True
        duration = time.monotonic() - self._started
        model = self.entry.label
        obs.REQUESTS.labels(model, status).inc()
        obs.IN_FLIGHT.labels(model).dec()
        obs.REQUEST_DURATION.labels(model).observe(duration)
        obs.PROMPT_TOKENS.labels(model).inc(prompt_tokens)
        obs.COMPLETION_TOKENS.labels(model).inc(completion_tokens)
        record = CompletionRecord(
            request_id=self.request_id,
            model=self.request.model,
            model_id=self.entry.config.id,
            user=self.request.user,
            status=status,  # type: ignore[arg-type]
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            stop_reason=stop_reason,
            error=error,
            time_to_first_token=(self._first_output - self._started) if self._first_output else None,
            duration=duration,
        )
        log.log(
            logging.WARNING if status == "error" else logging.INFO,
            "chat model=%s%s status=%s prompt_tokens=%d completion_tokens=%d stop_reason=%s latency_ms=%.0f%s",
            self.request.model,
            self._user_logging.text(self.request.user),
            status,
            prompt_tokens,
            completion_tokens,
            stop_reason,
            duration * 1000,
            f" error={error!r}" if error else "",
            extra={
                "event": "chat_completion",
                "model": self.request.model,
                **self._user_logging.fields(self.request.user),
                "status": status,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "stop_reason": stop_reason,
                "ttft_ms": round(record.time_to_first_token * 1000, 1) if record.time_to_first_token else None,
                "latency_ms": round(duration * 1000, 1),
                "error": error,
            },
        )
        for hook in self._on_finished:
            try:
                hook(record)
            except Exception:  # accounting must never break the response
                log.exception("completion hook failed")

    async def aclose(self) -> None:
        """Stop generating (a no-op once finished); frees the engine at once."""
        try:
            await self._events.aclose()
        finally:
            # Not finished and not failed: the client went away.
            self._record("cancelled", self._prompt_tokens, self._output_pieces, None)
            self._end_meter("cancelled", self._prompt_tokens, self._output_pieces)


class ChatService:
    def __init__(self, registry: ModelRegistry, guard: Guard | None = None, images: ImagePolicy | None = None) -> None:
        self.registry = registry
        self.images = images or ImagePolicy()
        # Set after construction: the moderation behind the guard may itself run a chat
        # model through this service.
        self.guard = guard
        # Called with a CompletionRecord when each admitted completion ends (usage
        # records, audit). Hooks run on the event loop: keep them quick.
        self.on_finished: list[Callable[[CompletionRecord], None]] = []
        # How the request log names end users (``[server] log_users``); set by the server.
        self.user_logging = obs.UserLogging()

    async def start(self, request: ChatRequest, meter: Meter | None = None, *, guarded: bool = True) -> ChatStream:
        """Admit and start a completion. Every error a client can cause is raised here,
        before the first byte of a response, so it can still be an HTTP status.

        ``guarded=False`` skips the guardrails (for the moderation models' own calls)."""
        started = time.monotonic()
        try:
            # Team-aware: a tuned model resolves for its own team only, which asks the
            # tuned-model store (a database query: off the event loop).
            if request.model.startswith(TUNED_PREFIX):
                entry = await asyncio.to_thread(self.registry.resolve, request.model, request.team_id)
            else:
                entry = self.registry.resolve(request.model)
        except NotFound as exc:
            obs.REQUESTS.labels("unknown", "404").inc()
            if meter is not None:
                meter.end(Outcome(status_of(exc), request.model, 0, 0, None, (time.monotonic() - started) * 1000))
            raise
        model = entry.label
        obs.IN_FLIGHT.labels(model).inc()
        try:
            if not entry.engine.ready:
                raise ServiceUnavailable(
                    f"model {request.model!r} is still loading", code="model_loading", headers={"Retry-After": "2"}
                )
            self._reject_unsupported(entry, request)
            check_request(request)
            if request.images:
                # Only for a model that takes images (checked above), so a text-only
                # model never makes the server fetch anything. Engines see the
                # validated bytes, never the client's URL.
                request.messages = await attach_images(request.messages, self.images)
            check_output = None
            if guarded and self.guard is not None:
                # Before the engine sees anything: a blocked input costs no generation,
                # and the meter records it as refused.
                on_check = meter.record_check if meter is not None else None
                check_output = await self.guard.check_input(request, on_check)
            if entry.tuned is not None:
                # The first request for a tuned model in this process loads its adapter
                # (requests in flight go on undisturbed); then this request runs with it.
                await entry.engine.ensure_adapter(entry.tuned)
                request.adapter = entry.tuned.id
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
            obs.IN_FLIGHT.labels(model).dec()
            if isinstance(exc, APIError):
                obs.REQUESTS.labels(model, str(exc.status_code)).inc()
            if meter is not None:
                meter.end(Outcome(status_of(exc), request.model, 0, 0, None, (time.monotonic() - started) * 1000))
            raise
        return ChatStream(
            request,
            entry,
            events,
            first,
            prompt_tokens=prepared.prompt_tokens,
            started=started,
            on_finished=self.on_finished,
            user_logging=self.user_logging,
            meter=meter,
            check_output=check_output,
        )

    def model_ready(self, name: str) -> bool:
        return self.registry.resolve(name).engine.ready

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
