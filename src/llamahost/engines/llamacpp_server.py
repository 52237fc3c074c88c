"""llama.cpp's own C++ server, run in-process through xllamacpp (a prebuilt wheel).

It does what the embedded engine needs from llama.cpp: continuous batching over
``parallel`` slots, prompt (prefix) caching, LLGuidance grammars given per request,
multimodal projectors, LoRA adapters chosen per request, n-gram speculative decoding.
llamahost renders prompts, writes grammars and parses replies itself (``llamacpp.py``);
this module only starts the server and talks to it.

Two channels reach it:
- ``complete`` calls its completion handler directly (no HTTP): the call blocks the
  calling thread for the whole generation and hands each streamed chunk to a Python
  callback; returning True from the callback stops the sequence and frees its slot.
- the few things xllamacpp does not expose to Python (tokenizing, the server's
  properties: chat template, media marker) go over llama.cpp's own HTTP listener.

That listener cannot be turned off, and serves everything (completions, slots, LoRA
scales) to whoever reaches it. So it listens on a Unix socket in a fresh directory only
this process's user can enter, and asks for a random key: one per engine, so
``--workers`` processes and parallel tests never meet, and no TCP port is opened.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

# Tokens of a prompt decoded per llama_decode call (llama-server's default -b / -ub).
BATCH_SIZE = 2048
MICRO_BATCH_SIZE = 512


# sun_path holds 108 bytes on Linux, the terminating NUL included.
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class ServerSettings:
    model_path: Path
    parallel: int
    context_per_slot: int
    threads: int
    prefix_cache: bool = True
    projector_path: Path | None = None
    # name -> GGUF path; loaded at start with scale 0 and chosen per request.
    lora_adapters: tuple[tuple[str, Path], ...] = ()
    # n-gram self-speculation (no draft model): up to this many drafted tokens, 0 = off.
    ngram_draft_max: int = 0
    kv_cache_type: str = "f16"  # "f16" | "f32" (keys and values, and no flash attention)


# How long an idle OpenMP worker of llama.cpp spins before it sleeps (libgomp's default:
# 300,000 iterations, about a millisecond). A token's compute is hundreds of parallel
# steps microseconds apart:
# - workers that sleep at once (OMP_WAIT_POLICY=PASSIVE) pay a futex wake-up at each
#   step, which an idle core's sleep state makes slow;
# - workers that spin long starve whatever shares their cores (a busy host,
#   `--workers`, two models), and each step then waits for a descheduled spinner.
# Measured with the bundled model, 2 threads on 2 cores, 128-token streams: idle, 1
# client 37-44 tokens/s passive, 87-109 spinning 1,000 and 106 at the default; 8
# clients 98-122, 132-157, 142. Beside 2 CPU-bound processes: 1 client 59, 46 and 17;
# 8 clients 77, 60 and 42. Beside 4: 19 / 26 passive, 25 / 30 spinning 1,000.
OPENMP_SPIN_COUNT = "1000"


def use_openmp_defaults(environ: MutableMapping[str, str]) -> None:
    """Set llamahost's OpenMP wait policy in ``environ`` unless the operator chose one.
    libgomp reads it once, when it loads: call before importing xllamacpp."""
    if "OMP_WAIT_POLICY" not in environ:  # PASSIVE or ACTIVE: the operator's choice stands
        environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)


def server_params(s: ServerSettings) -> Any:
    """llama.cpp's server parameters for ``s`` (an ``xllamacpp.CommonParams``), before the
    listener's address and key. Also what bench/engine.py runs xllamacpp's own HTTP
    server with, to tell llamahost's overhead from the engine's."""
    use_openmp_defaults(os.environ)
    import xllamacpp  # type: ignore[import-untyped]

    params = xllamacpp.CommonParams()
    params.model.path = str(s.model_path)
    params.n_parallel = s.parallel
    # Each slot owns context_per_slot cells of the KV cache (not one pool): no slot
    # can starve another, and a prompt's limit is the model's context_window.
    params.kv_unified = False
    params.n_ctx = s.parallel * s.context_per_slot
    params.n_batch = BATCH_SIZE
    params.n_ubatch = MICRO_BATCH_SIZE
    params.cpuparams.n_threads = s.threads
    params.cpuparams_batch.n_threads = s.threads
    params.cache_prompt = s.prefix_cache
    if s.kv_cache_type == "f32":
        params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
        # And no flash attention, whose CPU kernel rounds through F16 on the way (it
        # alone moved log-probabilities by ~5e-3 against an fp32 reference; off: 2e-4).
        params.flash_attn_type = 0
    # No host-memory prompt cache beside the slots' own: memory stays what `parallel`
    # x `context_window` says (llama.cpp's default would keep up to 8 GiB of old
    # prompts' state).
    params.cache_ram_mib = 0
    params.warmup = True
    params.verbosity = -1  # llamahost logs requests itself
    params.endpoint_metrics = False
    params.endpoint_slots = False
    params.ui = False
    # The chat template is applied by llamahost; the server sees completions only.
    params.use_jinja = False
    if s.projector_path is not None:
        params.mmproj.path = str(s.projector_path)
        params.mmproj_use_gpu = False
    if s.lora_adapters:
        params.lora_init_without_apply = True  # every adapter at scale 0 unless a request asks
        params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(str(path), 0.0) for _, path in s.lora_adapters]
    # llama.cpp's listener serves a connection on one thread for as long as the client
    # keeps it alive, and further connections wait for a free thread: with one thread,
    # concurrent tokenize calls over several pooled connections starved (a 60 s read
    # timeout at 8 clients). Tokenizing uses one connection; each prompt with images
    # streams over one of its own, up to `parallel`.
    params.n_threads_http = s.parallel + 2
    params.sleep_idle_seconds = -1
    if s.ngram_draft_max > 0:
        params.speculative.types = [xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
        # Drafts come from an earlier occurrence of the last 12 tokens (llama.cpp's
        # default lookup size) in the prompt or the reply so far.
        params.speculative.ngram_simple.size_m = s.ngram_draft_max
    return params


class EmbeddedServer:
    """One llama.cpp server for one GGUF: start, tokenize, complete, stop."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._server = None
        self._socket_dir: str | None = None
        self._http: httpx.AsyncClient | None = None
        self._sync_http: httpx.Client | None = None
        self.props: dict[str, Any] = {}
        self.adapter_ids: dict[str, int] = {name: i for i, (name, _) in enumerate(settings.lora_adapters)}

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Load the model (blocking; returns once llama.cpp can serve a request)."""
        s = self.settings
        params = server_params(s)  # first: it sets OpenMP's policy before xllamacpp loads libgomp
        import xllamacpp

        self._socket_dir = tempfile.mkdtemp(prefix="llamahost-llamacpp-")  # mode 0700
        socket_path = os.path.join(self._socket_dir, "server.sock")
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            # A long TMPDIR (a test's tmp path, a deep container volume) makes a socket
            # path the kernel refuses (108 bytes with the NUL), and llama.cpp then fails
            # with a bare "Failed to init server": fall back to a short private dir.
            os.rmdir(self._socket_dir)
            self._socket_dir = tempfile.mkdtemp(prefix="llh-", dir="/tmp")
            socket_path = os.path.join(self._socket_dir, "server.sock")
        key = secrets.token_urlsafe(32)
        params.hostnames = [socket_path]
        params.api_keys = [key]
        try:
            self._server = xllamacpp.Server(params)
        except RuntimeError as exc:
            self.close()
            raise RuntimeError(f"llama.cpp could not load {s.model_path.name}: {exc}") from exc
        headers = {"Authorization": f"Bearer {key}"}
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path, limits=httpx.Limits(max_connections=1)),
            base_url="http://llama.cpp",
            headers=headers,
            timeout=60,
        )
        self._sync_http = httpx.Client(
            transport=httpx.HTTPTransport(uds=socket_path), base_url="http://llama.cpp", headers=headers, timeout=60
        )
        self.props = self._sync_http.get("/props").raise_for_status().json()

    def close(self) -> None:
        server, self._server = self._server, None
        del server  # the C++ destructor stops the decode loop and joins it
        for client in (self._sync_http,):
            if client is not None:
                client.close()
        self._http = self._sync_http = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    @property
    def running(self) -> bool:
        return self._server is not None

    # --- what the server knows -----------------------------------------------------------

    @property
    def chat_template(self) -> str:
        return self.props.get("chat_template") or ""

    @property
    def media_marker(self) -> str:
        # Random per process (llama.cpp draws it at start): client text cannot forge it.
        return self.props["media_marker"]

    async def tokenize(self, text: str, add_special: bool) -> list[int]:
        """Token ids exactly as llama.cpp's tokenizer gives them (special tokens parsed)."""
        assert self._http is not None
        response = await self._http.post(
            "/tokenize", json={"content": text, "add_special": add_special, "parse_special": True}
        )
        return response.raise_for_status().json()["tokens"]

    def tokenize_sync(self, text: str, add_special: bool) -> list[int]:
        assert self._sync_http is not None
        response = self._sync_http.post(
            "/tokenize", json={"content": text, "add_special": add_special, "parse_special": True}
        )
        return response.raise_for_status().json()["tokens"]

    # --- generation ------------------------------------------------------------------------

    def complete_native(self, body: dict[str, Any], on_chunk: Callable[[dict[str, Any]], bool]) -> None:
        """``complete`` over the listener's native ``/completion`` endpoint, the one that
        takes a prompt with images (``{"prompt_string", "multimodal_data"}``) when a
        projector is loaded; chunks arrive in ``complete``'s shape. Returning True from
        ``on_chunk`` closes the connection, which llama.cpp takes as a cancel."""
        assert self._sync_http is not None
        no_read_timeout = httpx.Timeout(60, read=None)  # a long prompt with images is silent while it is read
        # A connection of its own, closed after the stream: llama.cpp's listener now and
        # then closes a kept-alive connection after a streamed reply without saying so
        # (bench/engine.py met it), and the next call sent on it would fail.
        with self._sync_http.stream(
            "POST", "/completion", json={**body, "stream": True}, timeout=no_read_timeout, headers={"Connection": "close"}
        ) as r:
            if r.status_code != 200:
                on_chunk({"error": {"code": r.status_code, "message": r.read().decode(errors="replace")}})
                return
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = json.loads(line[len("data: ") :])
                if "error" in data:
                    on_chunk(data)
                    return
                chunk: dict[str, Any] = {"choices": [{"text": data.get("content") or "", "finish_reason": None}]}
                if data.get("completion_probabilities"):  # asked for with n_probs
                    chunk["completion_probabilities"] = data["completion_probabilities"]
                if data.get("stop"):
                    chunk["choices"][0]["finish_reason"] = "length" if data.get("stop_type") == "limit" else "stop"
                    chunk["usage"] = {
                        "prompt_tokens": data.get("tokens_evaluated"),
                        "completion_tokens": data.get("tokens_predicted"),
                        "prompt_tokens_details": {"cached_tokens": (data.get("timings") or {}).get("cache_n", 0)},
                    }
                if on_chunk(chunk):
                    return

    def complete(self, body: dict[str, Any], on_chunk: Callable[[dict[str, Any]], bool]) -> None:
        """Run one streamed completion on the calling thread. ``on_chunk`` gets each chunk
        (or the error object) and returns True to stop the sequence at once."""
        assert self._server is not None
        self._server.handle_completions(json.dumps({**body, "stream": True}), lambda raw: on_chunk(json.loads(raw)))
