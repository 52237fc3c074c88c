"""An upstream engine: any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp's
``llama-server``, Ollama, ``llama_cpp.server``, ...) on one or more replicas.

The internal ``ChatRequest`` becomes an OpenAI chat-completions request (tools ->
``tools``, json_schema -> ``response_format`` json_schema, images -> ``image_url``
parts); the upstream's SSE stream becomes engine events (text, tool-call deltas,
one ``Finished``). By default (``upstream_streaming = "always"``) the upstream is
asked to stream whatever the client asked for: that makes "the replica went silent
for ``read_timeout``" mean the same for every request, and gives time to first token
for non-streaming requests too. ``"as_requested"`` sends non-streaming requests up as
JSON, which costs less per request.

Token counts come from the upstream's ``usage`` (``stream_options.include_usage``);
upstreams that send none (llama.cpp's servers) are counted with the Llama tokenizer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from typing import Any

import httpx

from .. import observability as obs
from ..config import ModelConfig
from ..errors import APIError, EngineFailure, InvalidRequest, ServiceUnavailable
from ..types.chat import ChatMessage, ChatRequest, StopReason
from ..types.tuned import TunedModel
from .base import Engine, EngineEvent, Finished, PreparedPrompt, TextOut, ToolCallDelta, openai_message
from .llama_tokens import LlamaTokenCounter, tokenizer_for
from .replicas import Replica, ReplicaPool
from .upstream_lora import UpstreamLoras

log = logging.getLogger(__name__)

_FINISH_REASONS: dict[str, StopReason] = {
    "stop": "stop",
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "content_filter": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}
# Prompts longer than this are tokenized on a worker thread rather than the event loop.
_INLINE_TOKENIZE_CHARS = 32_000


class _Retry(Exception):
    """This replica failed before anything was streamed; another may be tried."""

    def __init__(
        self, reason: str, *, health_failure: bool = True, answered: bool = False, refused: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.health_failure = health_failure
        self.refused = refused
        # The replica answered with an error status (it is up; the request failed there).
        self.answered = answered


class UpstreamBroken(EngineFailure):
    """The replica failed after output was streamed: the client's stream ends with an error."""

    status_code = 502

    def __init__(self, message: str, *, completion_tokens: int) -> None:
        super().__init__(message, code="upstream_error")
        self.completion_tokens = completion_tokens


def _message(message: ChatMessage) -> dict[str, Any]:
    # Text content is "" rather than null beside tool calls: both are valid OpenAI,
    # and some servers (llama-cpp-python's) refuse null.
    out = openai_message(message)
    if message.images:
        # Images first: the Llama vision models are trained with the image before the
        # question. Always as data URLs of the bytes llamahost fetched and validated: the
        # upstream never sees (so never fetches) a client's URL.
        parts: list[dict[str, Any]] = []
        for image in message.images:
            if image.loaded is None:
                raise EngineFailure(f"{image.param}: image was not validated before reaching the engine")
            parts.append({"type": "image_url", "image_url": {"url": image.loaded.data_url}})
        if message.content:
            parts.append({"type": "text", "text": message.content})
        out["content"] = parts
    return out


def upstream_body(request: ChatRequest, upstream_model: str) -> dict[str, Any]:
    """The OpenAI chat-completions body for ``request``, without the token budget."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": [_message(m) for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": s.temperature,
        "top_p": s.top_p,
    }
    # Sent only when set: not every OpenAI-compatible server knows the non-OpenAI ones
    # (top_k, repetition_penalty are vLLM/SGLang extensions).
    if s.top_k:
        body["top_k"] = s.top_k
    if s.repetition_penalty != 1.0:
        body["repetition_penalty"] = s.repetition_penalty
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.seed is not None:
        body["seed"] = s.seed
    if request.stop:
        body["stop"] = request.stop
    if request.user is not None:
        body["user"] = request.user
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    k: v
                    for k, v in {"name": t.name, "description": t.description, "parameters": t.parameters}.items()
                    if v is not None
                },
            }
            for t in request.tools
        ]
        if not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    if request.tool_choice is not None:
        if request.tool_choice in ("none", "auto", "required"):
            body["tool_choice"] = request.tool_choice
        else:
            body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice}}
    if request.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": request.json_schema, "strict": True},
        }
    return body


def _upstream_error_message(response_body: bytes) -> str:
    try:
        data = json.loads(response_body)
    except ValueError:
        return response_body[:500].decode("utf-8", "replace").strip() or "(empty body)"
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:2000]
    return str(error)[:2000]


class OpenAIUpstreamEngine(Engine):
    capabilities = frozenset({"vision", "tools", "json_schema"})
    default_capabilities = frozenset({"tools", "json_schema"})

    def __init__(self, config: ModelConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        # Injectable so the wire mapping and the JSON/SSE decoding can be unit-tested
        # against an ``httpx.MockTransport`` in microseconds; None is the real network.
        self._transport = transport
        self.upstream_model = config.upstream_name
        self.api_key = config.resolved_api_key()
        self.tokenizer_name = tokenizer_for(config.tokenizer, self.upstream_model)
        self.pool = ReplicaPool(
            config.id,
            config.replicas,
            failure_threshold=config.failure_threshold,
            ejection_seconds=config.ejection_seconds,
        )
        n = len(config.replicas)
        self.description = (
            f"upstream {self.upstream_model!r} on {n} replica{'s' if n != 1 else ''} "
            f"({', '.join(r.url for r in self.pool.replicas)})"
        )
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"
        self._counter: LlamaTokenCounter | None = None
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task | None = None
        # Tuned models (``tuned_source``, set by the registry before load) with a lora_dir
        # are served as vLLM LoRA adapters (``loras``, made at load).
        self.loras: UpstreamLoras | None = None

    @property
    def _auth(self) -> dict[str, str]:
        return {k: v for k, v in self._headers.items() if k == "Authorization"}

    @property
    def ready(self) -> bool:
        return self._counter is not None and self._client is not None

    async def load(self) -> None:
        self._counter = await asyncio.to_thread(LlamaTokenCounter, self.tokenizer_name)
        cfg = self.config
        self._client = httpx.AsyncClient(
            transport=self._transport,
            # HTTP/2 where the upstream offers it (ALPN over TLS); pooled HTTP/1.1 keep-alive otherwise.
            http2=True,
            # Idle connections are dropped before the 5 s keep-alive timeout of the
            # uvicorn-based servers (vLLM, SGLang, llama_cpp.server): reusing one the
            # server is closing at that moment fails the request for nothing.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=4.0),
            timeout=httpx.Timeout(
                connect=cfg.connect_timeout, read=cfg.read_timeout, write=cfg.read_timeout, pool=cfg.connect_timeout
            ),
        )
        self._request_headers = httpx.Headers({**self._client.headers, **self._headers})
        if self.tuned_source is not None and cfg.lora_dir:
            self.loras = UpstreamLoras(cfg.id, cfg.lora_dir, cfg.upstream_lora_dir, self.tuned_source)
            # Tuned models that exist already: the health loop loads them into every replica.
            await asyncio.to_thread(self.loras.preload)
        self._health_task = asyncio.create_task(self._health_loop(), name=f"health-{cfg.id}")

    async def _health_loop(self) -> None:
        cfg = self.config
        assert self._client is not None
        while True:
            try:
                await self.pool.check(
                    self._client,
                    cfg.health_check_path,
                    self._auth,
                    timeout=min(cfg.connect_timeout + cfg.read_timeout, cfg.health_check_interval * 2, 10.0),
                )
                if self.loras is not None:
                    await self.loras.reconcile(self._client, [r.url for r in self.pool.replicas if r.healthy], self._auth)
            except Exception:  # a bug here must not stop the checks for good
                log.exception("health check of %s failed", cfg.id)
            await asyncio.sleep(cfg.health_check_interval)

    def _require_loras(self) -> UpstreamLoras:
        if self.loras is None:
            raise InvalidRequest(
                f"model {self.config.id!r} does not serve tuned models (its configuration has no lora_dir)", param="model"
            )
        return self.loras

    async def ensure_adapter(self, model: TunedModel) -> None:
        """A tuned model asked for: every replica should serve it from now on (each loads it
        before its first request for it; the health loop loads it into the others)."""
        self._require_loras().want(model)

    async def prepare(self, request: ChatRequest) -> PreparedPrompt:
        assert self._counter is not None
        if request.adapter is not None:
            loras = self._require_loras()
            tuned = await asyncio.to_thread(loras.resolve, request.team_id, request.adapter)
            prepared = await self._prepare(request)
            prepared.engine_data["model"] = loras.name(tuned)
            return prepared
        return await self._prepare(request)

    async def _prepare(self, request: ChatRequest) -> PreparedPrompt:
        assert self._counter is not None
        # Long prompts and images (base64-encoding megabytes) are prepared off the event loop.
        if request.images or sum(len(m.content) for m in request.messages) > _INLINE_TOKENIZE_CHARS:
            return await asyncio.to_thread(self._prepare_sync, request)
        return self._prepare_sync(request)

    def _prepare_sync(self, request: ChatRequest) -> PreparedPrompt:
        assert self._counter is not None
        tokens = self._counter.count_prompt(request.messages, request.tools)
        return PreparedPrompt(request=request, prompt_tokens=tokens, engine_data=upstream_body(request, self.upstream_model))

    def _max_tokens_field(self, prepared: PreparedPrompt, max_tokens: int) -> int | None:
        if prepared.request.max_tokens is not None:
            return max_tokens
        # No budget from the client: send the default budget, but when the context
        # window is what limits it, send nothing and let the upstream fill its own
        # window, since our count of a non-Llama upstream's prompt is an estimate.
        if max_tokens < self.config.context_window - prepared.prompt_tokens:
            return max_tokens
        return None

    async def generate(self, prepared: PreparedPrompt, max_tokens: int) -> AsyncGenerator[EngineEvent, None]:
        assert self._client is not None and self._counter is not None
        body = dict(prepared.engine_data)
        budget = self._max_tokens_field(prepared, max_tokens)
        if budget is not None:
            body["max_tokens"] = budget
        whole = not prepared.request.stream and self.config.upstream_streaming == "as_requested"
        if whole:
            body["stream"] = False
            del body["stream_options"]
        if prepared.request.images:
            payload = await asyncio.to_thread(lambda: json.dumps(body).encode())
        else:
            payload = json.dumps(body).encode()
        cfg = self.config
        deadline = time.monotonic() + cfg.total_timeout
        tried: set[Replica] = set()
        reasons: list[str] = []
        answered = True
        for _ in range(min(cfg.max_attempts, len(self.pool.replicas))):
            if time.monotonic() >= deadline:
                raise EngineFailure(
                    f"model {cfg.id!r}: no upstream answered within the total timeout of {cfg.total_timeout:g}s",
                    code="upstream_timeout",
                    status_code=504,
                )
            replica = self.pool.pick(tried)
            if replica is None:
                break
            tried.add(replica)
            replica.begin()
            streamed = False
            outcome = "cancelled"
            try:
                async with aclosing(self._attempt(replica, payload, prepared, deadline, whole)) as events:
                    async for event in events:
                        streamed = True
                        if isinstance(event, Finished):
                            # Settled before yielding: the consumer may close us right after.
                            outcome = "ok"
                            self.pool.success(replica)
                        yield event
                return
            except _Retry as exc:
                outcome = "retried"
                reasons.append(f"{replica.url}: {exc.reason}")
                answered = answered and exc.answered
                if exc.health_failure:
                    self.pool.failure(replica, exc.reason, definite=exc.refused)
                else:
                    self.pool.release_trial(replica)
                log.warning("upstream %s failed before streaming (%s); trying another replica", replica.url, exc.reason)
            except UpstreamBroken as exc:
                outcome = "failed"
                self.pool.failure(replica, exc.message)
                raise
            except APIError:
                outcome = "error"  # answered with an error that another replica would repeat
                self.pool.release_trial(replica)
                raise
            finally:
                replica.end()
                if outcome == "cancelled":
                    self.pool.release_trial(replica)
                obs.UPSTREAM_ATTEMPTS.labels(cfg.id, replica.url, outcome).inc()
            assert not streamed
        if not reasons:
            raise ServiceUnavailable(
                f"model {cfg.id!r} has no healthy upstream replica; retry shortly",
                code="no_healthy_replica",
                headers={"Retry-After": "2"},
            )
        if answered:
            # Every replica is up and answered with an error: that is the upstream's
            # answer to this request, not an outage.
            raise EngineFailure(
                f"model {cfg.id!r}: the upstream failed the request: {'; '.join(reasons)}",
                code="upstream_error",
                status_code=502,
            )
        raise ServiceUnavailable(
            f"model {cfg.id!r}: every upstream replica tried failed: {'; '.join(reasons)}",
            code="upstream_unavailable",
            headers={"Retry-After": "2"},
        )

    def _tuned(self, prepared: PreparedPrompt) -> TunedModel | None:
        if prepared.request.adapter is None or self.loras is None:
            return None
        return self.loras.wanted.get(prepared.engine_data["model"])

    async def _send(self, replica: Replica, request: httpx.Request, tuned: TunedModel | None) -> httpx.Response:
        assert self._client is not None
        if tuned is None or self.loras is None:
            return await self._client.send(request, stream=True)
        await self.loras.ensure(self._client, replica.url, tuned, self._auth)
        response = await self._client.send(request, stream=True)
        if response.status_code == 404:
            # The replica no longer knows the adapter (it restarted since loading it):
            # load it again and send once more; nothing has reached the client yet.
            await response.aclose()
            log.warning("replica %s lost LoRA adapter %s; reloading it", replica.url, tuned.id)
            self.loras.forget(replica.url, self.loras.name(tuned))
            await self.loras.ensure(self._client, replica.url, tuned, self._auth)
            response = await self._client.send(request, stream=True)
        return response

    async def _attempt(
        self, replica: Replica, payload: bytes, prepared: PreparedPrompt, deadline: float, whole: bool = False
    ) -> AsyncGenerator[EngineEvent, None]:
        """One request to one replica. Raises _Retry while nothing has been yielded."""
        assert self._client is not None and self._counter is not None
        cfg = self.config
        remaining = deadline - time.monotonic()
        timeout = httpx.Timeout(
            connect=min(cfg.connect_timeout, remaining),
            read=remaining if whole else min(cfg.read_timeout, remaining),
            write=min(cfg.read_timeout, remaining),
            pool=min(cfg.connect_timeout, remaining),
        )
        # A Request built directly (``send`` takes one), not through ``build_request``,
        # which re-parses and re-merges the URL and headers on every call.
        request = httpx.Request(
            "POST", replica.completions_url, content=payload, headers=self._request_headers,
            extensions={"timeout": timeout.as_dict()},
        )
        try:
            response = await self._send(replica, request, self._tuned(prepared))
        except httpx.TimeoutException as exc:
            raise _Retry(f"{type(exc).__name__} before the response started") from None
        except httpx.HTTPError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}".rstrip(": "), refused=isinstance(exc, httpx.ConnectError)) from None
        streamed = False
        text: list[str] = []
        try:
            if response.status_code != 200:
                await self._refuse(response)
            if whole:
                body = await response.aread()
                result = json.loads(body)
                choices = result.get("choices") if isinstance(result, dict) else None
                if not choices:
                    message = _upstream_error_message(body)
                    raise EngineFailure(f"upstream answered without a choice: {message}", code="upstream_error", status_code=502)
                choice = choices[0]
                reply: dict[str, Any] = choice.get("message") or {}
                pieces: list[str] = []
                if reply.get("content"):
                    pieces.append(reply["content"])
                    yield TextOut(reply["content"])
                for i, call in enumerate(reply.get("tool_calls") or ()):
                    function = call.get("function") or {}
                    pieces.append(function.get("arguments") or "")
                    yield ToolCallDelta(
                        index=i, id=call.get("id"), name=function.get("name"), arguments=function.get("arguments") or ""
                    )
                counted: dict[str, Any] = result.get("usage") or {}
                completion_tokens = counted.get("completion_tokens")
                if completion_tokens is None:
                    completion_tokens = self._counter.count("".join(pieces))
                yield Finished(
                    _FINISH_REASONS.get(choice.get("finish_reason") or "stop", "stop"),
                    int(counted.get("prompt_tokens") or prepared.prompt_tokens),
                    int(completion_tokens),
                )
                return
            finish: str | None = None
            usage: dict | None = None
            done = False
            # A client that is not streaming gets the first piece at once (time to first
            # token means the same for every request) and the rest in one piece: each
            # event costs a trip through the service, which only a stream needs.
            coalesce = not prepared.request.stream
            held: list[str] = []
            lines = response.aiter_lines()
            while True:
                try:
                    line = await anext(lines)
                except StopAsyncIteration:
                    break
                if time.monotonic() > deadline:
                    raise UpstreamBroken(
                        f"upstream {replica.url} exceeded the total timeout of {cfg.total_timeout:g}s",
                        completion_tokens=self._counter.count("".join(text)),
                    ) if streamed else _Retry("total timeout", health_failure=False)
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), event: lines
                data = line[5:].strip()
                if data == "[DONE]":
                    # Read on to the end of the body (servers end it right here): a
                    # response closed unread loses its keep-alive connection.
                    done = True
                    continue
                if done:
                    continue
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk and not chunk.get("choices"):
                    message = _upstream_error_message(data.encode())
                    if not streamed:
                        raise EngineFailure(f"upstream error: {message}", code="upstream_error", status_code=502)
                    raise UpstreamBroken(
                f"upstream error mid-stream: {message}", completion_tokens=self._counter.count("".join(text))
            )
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    if choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta") or {}
                    content = delta.get("content")
                    if content:
                        text.append(content)
                        if coalesce and streamed:
                            held.append(content)
                        else:
                            streamed = True
                            yield TextOut(content)
                    for call in delta.get("tool_calls") or ():
                        if held:
                            yield TextOut("".join(held))
                            held.clear()
                        function = call.get("function") or {}
                        arguments = function.get("arguments") or ""
                        text.append(arguments)
                        streamed = True
                        yield ToolCallDelta(
                            index=call.get("index", 0), id=call.get("id"), name=function.get("name"), arguments=arguments
                        )
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
            if finish is None:
                reason = "the stream ended without a finish reason" + ("" if done else " (connection closed)")
                if not streamed:
                    raise _Retry(reason)
                raise UpstreamBroken(f"upstream {replica.url}: {reason}", completion_tokens=self._counter.count("".join(text)))
            if held:
                yield TextOut("".join(held))
            prompt_tokens = prepared.prompt_tokens
            completion_tokens = None
            if usage:
                prompt_tokens = int(usage.get("prompt_tokens") or prompt_tokens)
                completion_tokens = usage.get("completion_tokens")
            if completion_tokens is None:
                completion_tokens = self._counter.count("".join(text))
            yield Finished(_FINISH_REASONS.get(finish, "stop"), prompt_tokens, int(completion_tokens))
        except httpx.TimeoutException:
            if not streamed:
                raise _Retry(f"no data for {cfg.read_timeout:g}s (read timeout)") from None
            raise UpstreamBroken(
                f"upstream {replica.url} sent nothing for {cfg.read_timeout:g}s (read timeout)",
                completion_tokens=self._counter.count("".join(text)),
            ) from None
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if not streamed:
                raise _Retry(reason) from None
            raise UpstreamBroken(
                f"upstream {replica.url} failed mid-stream: {reason}", completion_tokens=self._counter.count("".join(text))
            ) from None
        finally:
            with suppress(Exception):
                await response.aclose()

    async def _refuse(self, response: httpx.Response) -> None:
        """A non-200 answer: retry elsewhere if the replica is unwell or busy, else say why."""
        body = await response.aread()
        message = _upstream_error_message(body)
        status = response.status_code
        if status in (502, 503, 504):
            # Down, overloaded, draining or behind a proxy that lost it: eject and go elsewhere.
            raise _Retry(f"HTTP {status}: {message}")
        if status >= 500 or status in (408, 429):
            # The replica is up; this request failed or was shed there. Another replica
            # may serve it, but one bad request must not take replicas out of service.
            raise _Retry(f"HTTP {status}: {message}", health_failure=False, answered=True)
        if status in (401, 403, 404):
            # The client's request is fine; llamahost's upstream configuration is not.
            raise EngineFailure(
                f"upstream refused llamahost's request for model {self.config.id!r} (HTTP {status}: {message}); "
                "check upstream_model and the upstream key",
                code="upstream_misconfigured",
                status_code=502,
            )
        raise InvalidRequest(f"upstream rejected the request: {message}", code="upstream_rejected")

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._health_task
        if self._client is not None:
            await self._client.aclose()

    def status(self) -> dict:
        return {"replicas": self.pool.status()}
