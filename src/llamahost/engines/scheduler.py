"""Continuous batching over llama.cpp's low-level API.

One thread owns a llama.cpp model and a context with ``parallel`` sequence slots. Each
step it builds one ``llama_batch``: the next token of every generating sequence, then
chunks of waiting prompts in the room left, and runs a single ``llama_decode``.
Requests join between steps and leave when done, so eight users share the cost of
reading the weights instead of queueing behind each other.

Written here because llama-cpp-python exposes the pieces (batch, context, sampler
chain) but its ``Llama`` class drives one sequence only; this mirrors what llama.cpp's
``llama-server`` does in C++ (slots, chunked prefill, per-slot samplers, prefix reuse).
"""

from __future__ import annotations

import codecs
import collections
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import observability as obs
from ..errors import EngineFailure
from ..types.chat import SamplingParams, ToolCallDelta
from .base import EngineEvent, Finished, TextOut
from .constraint import Constraint
from .stops import StopMatcher
from .tool_format import ToolStreamParser

log = logging.getLogger(__name__)

PENALTY_LAST_N = 64  # llama.cpp's default window for repetition penalties


@dataclass
class Job:
    """One generation: what to decode and where its events go. ``emit`` is called on
    the decode thread; ``cancel`` is set by the consumer to free the slot."""

    tokens: list[int]
    max_tokens: int
    sampling: SamplingParams
    stops: list[str]
    emit: Callable[[EngineEvent | BaseException], None]
    constraint: Constraint | None = None  # the grammar: masks this sequence's logits
    parser: ToolStreamParser | None = None  # turns text generated under a tool grammar into deltas
    # vision hook: a prompt with images (llamacpp_vision.VisionPrompt); ``tokens`` then
    # holds IMAGE_POSITION where the image embeddings go.
    vision: object | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose K/V this sequence holds
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    last: int = -1  # sampled, not yet decoded
    completion_tokens: int = 0
    sampler: object = None
    decoder: object = None
    stops: StopMatcher | None = None

    @property
    def n_past(self) -> int:
        return len(self.cached)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class BatchScheduler:
    def __init__(
        self,
        model_path: Path,
        *,
        parallel: int,
        context_per_slot: int,
        threads: int,
        batch_size: int = 512,
        name: str = "",
        prefix_cache: bool = True,
    ) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self._llama_cpp = llama_cpp
        self._internals = _internals
        self.parallel = parallel
        self.prefix_cache = prefix_cache
        self.context_per_slot = context_per_slot
        self.batch_size = max(batch_size, parallel)
        self.model = _internals.LlamaModel(
            path_model=str(model_path), params=llama_cpp.llama_model_default_params(), verbose=False
        )
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = parallel * context_per_slot
        params.n_batch = params.n_ubatch = self.batch_size
        params.n_seq_max = parallel
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False  # each slot owns context_per_slot cells: no slot can starve another
        self.ctx = _internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=self.batch_size, embd=0, n_seq_max=1, verbose=False)
        self.n_vocab = self.model.n_vocab()
        vocab = self.model.vocab
        self._is_eog = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        self._slots = [_Slot(seq_id=i) for i in range(parallel)]
        self._reused_tokens = obs.PREFIX_CACHE_TOKENS.labels(name)
        self._pending: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llamacpp-scheduler", daemon=True)
        self._thread.start()

    # --- called from the event loop --------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def free_slots(self) -> int:
        return sum(1 for slot in self._slots if slot.job is None)

    def submit(self, job: Job) -> None:
        with self._lock:
            self._pending.append(job)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.batch.close()
        self.ctx.close()
        self.model.close()

    # --- the decode thread ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._admit()
            active = [slot for slot in self._slots if slot.job is not None]
            if not active:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                self._step(active)
            except Exception as exc:  # a failed decode fails the requests in it, not the server
                log.exception("batched decode failed")
                for slot in active:
                    if slot.job is not None:
                        slot.job.emit(EngineFailure(f"generation failed: {exc}"))
                        self._release(slot, forget_cache=True)

    def _admit(self) -> None:
        while True:
            with self._lock:
                free = [slot for slot in self._slots if slot.job is None]
                if not free or not self._pending:
                    return
                job = self._pending.popleft()
            if job.cancel.is_set():
                continue
            if job.vision is not None:  # vision hook
                slot = free[0]
                self.ctx.kv_cache_seq_rm(slot.seq_id, -1, -1)
                slot.cached = []
                try:
                    # Images and the text before them go into the slot's cache now (other
                    # sequences pause for that); the text after them is prefilled below.
                    keep = job.vision.evaluate_into(self.ctx.ctx, slot.seq_id, self.batch_size)
                except Exception as exc:
                    log.exception("evaluating a prompt's images failed")
                    self.ctx.kv_cache_seq_rm(slot.seq_id, -1, -1)
                    job.emit(EngineFailure(f"generation failed: {exc}"))
                    continue
            elif self.prefix_cache:
                # Prefix reuse: the free slot whose cache shares the longest prefix with
                # this prompt (the previous turn of a chat, a shared system prompt).
                slot = max(free, key=lambda s: _common_prefix(s.cached, job.tokens))
                keep = _common_prefix(slot.cached, job.tokens)
                if keep == len(job.tokens):
                    keep -= 1  # decode at least one prompt token: its logits start the reply
            else:
                slot, keep = free[0], 0
            self.ctx.kv_cache_seq_rm(slot.seq_id, keep, -1)
            if job.vision is None:  # vision hook: what evaluate_into filled is not reuse
                self._reused_tokens.inc(keep)
            slot.cached = job.tokens[:keep]
            slot.pending = job.tokens[keep:]
            slot.job = job
            slot.completion_tokens = 0
            slot.sampler = self._sampler(job)
            slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            slot.stops = StopMatcher(job.stops)

    def _sampler(self, job: Job):
        s = job.sampling
        sampler = self._internals.LlamaSampler()
        sampler.add_penalties(self.n_vocab, PENALTY_LAST_N, s.repetition_penalty, s.frequency_penalty, s.presence_penalty)
        # A grammar is not a sampler here: llguidance masks the logits before the chain
        # runs (see _step), far cheaper than llama.cpp's grammar sampler on a big vocabulary.
        if s.temperature == 0.0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(s.top_k)
            sampler.add_top_p(s.top_p, 1)
            sampler.add_temp(s.temperature)
            sampler.add_dist(s.seed if s.seed is not None else random.getrandbits(31))
        return sampler

    def _add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        b = self.batch.batch
        i = b.n_tokens
        b.token[i] = token
        b.pos[i] = pos
        b.seq_id[i][0] = seq_id
        b.n_seq_id[i] = 1
        b.logits[i] = logits
        b.n_tokens = i + 1
        return i

    def _step(self, active: list[_Slot]) -> None:
        self.batch.reset()
        to_sample: list[tuple[_Slot, int]] = []
        generating = []
        for slot in active:
            if slot.job.cancel.is_set():
                self._release(slot)
            elif not slot.pending:
                generating.append(slot)
        for slot in generating:
            to_sample.append((slot, self._add(slot.last, slot.n_past, slot.seq_id, True)))
            slot.cached.append(slot.last)
        # Prompts fill the room left; while others stream, only a slice, so a long
        # prompt delays their next token by a fraction of its prefill, not all of it.
        room = self.batch_size - len(generating)
        if generating:
            room = min(room, max(64, self.batch_size // 4))
        for slot in active:
            if slot.job is None or not slot.pending or room <= 0:
                continue
            chunk, slot.pending = slot.pending[:room], slot.pending[room:]
            for k, token in enumerate(chunk):
                last = not slot.pending and k == len(chunk) - 1
                index = self._add(token, slot.n_past + k, slot.seq_id, last)
                if last:
                    to_sample.append((slot, index))
            slot.cached.extend(chunk)
            room -= len(chunk)
        if self.batch.batch.n_tokens == 0:
            return
        self.ctx.decode(self.batch)
        for slot, index in to_sample:
            job = slot.job
            try:
                if job.constraint is not None:
                    logits = np.ctypeslib.as_array(self.ctx.get_logits_ith(index), shape=(self.n_vocab,))
                    job.constraint.mask_logits(None, logits)  # in place: the sampler reads this buffer
                self._on_token(slot, slot.sampler.sample(self.ctx, index))
            except Exception as exc:  # this request fails; the others in the batch go on
                log.exception("generation failed")
                job.emit(EngineFailure(f"generation failed: {exc}"))
                self._release(slot, forget_cache=True)

    def _on_token(self, slot: _Slot, token: int) -> None:
        job = slot.job
        if job.cancel.is_set():
            self._release(slot)
            return
        if self._is_eog(token):
            self._finish(slot, "stop")
            return
        if job.constraint is not None:
            job.constraint.advance(token)
        slot.completion_tokens += 1
        self._route(slot, slot.decoder.decode(self.model.detokenize([token])))
        if slot.stops.stopped or (job.constraint is not None and job.constraint.finished):
            # A complete grammar allows only the end of turn: no need to decode it.
            self._finish(slot, "stop")
        elif slot.completion_tokens >= job.max_tokens:
            self._finish(slot, "length")
        else:
            slot.last = token

    def _route(self, slot: _Slot, text: str, final: bool = False) -> None:
        """Text through the tool-call parser (if any), then stop sequences, which apply
        to text only, never inside a tool call."""
        job = slot.job
        if job.parser is not None:
            pieces = job.parser.feed(text) + (job.parser.finish() if final else [])
        else:
            pieces = [text]
        for piece in pieces:
            if isinstance(piece, ToolCallDelta):
                job.emit(piece)
            elif piece and not slot.stops.stopped:
                out = slot.stops.feed(piece)
                if out:
                    job.emit(TextOut(out))

    def _finish(self, slot: _Slot, stop_reason: str) -> None:
        job = slot.job
        self._route(slot, slot.decoder.decode(b"", final=True), final=True)
        held = "" if slot.stops.stopped else slot.stops.flush()
        if held:
            job.emit(TextOut(held))
        job.emit(Finished(stop_reason, len(job.tokens), slot.completion_tokens))
        self._release(slot)

    def _release(self, slot: _Slot, forget_cache: bool = False) -> None:
        slot.job = None
        slot.pending = []
        slot.sampler = None
        if forget_cache:
            self.ctx.kv_cache_seq_rm(slot.seq_id, -1, -1)
            slot.cached = []
