"""Embedded-engine throughput under concurrency: llamahost vs llama.cpp's llama-server,
on the same GGUF with identical server parameters, in one run.

llamahost's engine is llama.cpp's own server run in-process (xllamacpp). The peer is
the newest llama-server: built natively (-march=native) from the llama.cpp vendored in
the xllamacpp source distribution of the installed version, into bench/.scratch (first
run: several minutes of compiling). Both get the same slots, context per slot, batch
and micro-batch sizes, KV layout (one cache per slot, no host-memory prompt cache),
threads and OpenMP wait policy (``GOMP_SPINCOUNT``), and the same explicit
sampler settings in every request (llamahost sets every sampler; llama-server is sent
the same values), so the difference is llamahost's own overhead against the build.

A third server tells the two apart: ``xllamacpp``, the wheel llamahost runs, serving on
its own C++ HTTP listener with llamahost's server parameters (``server_params``) and no
llamahost around it (llama.cpp applies the chat template, as llama-server does).
xllamacpp / llama-server is then what the prebuilt engine itself gives against the
native build, and llamahost / xllamacpp is what llamahost's Python costs.

For each client count (concurrent 128-token streamed chat completions; each client sends
its streams one after another, at least 16 streams in all and 2 per client, so that TTFT
p95 is a percentile of many requests) each server is measured --runs times (servers
alternate, one at a time, never sharing cores); printed: aggregate generated tokens/s
and TTFT p95, then the ratios' min / median / max.
Targets (issue 19), median of 5 runs: throughput >= 1.0x at 1 and 4 clients, >= 1.05x at
8 and 16; TTFT p95 <= 1.0x.

    python bench/engine.py [--threads 2] [--tokens 128] [--clients 1,4,8,16] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "bench" / ".scratch"
sys.path.insert(0, str(ROOT / "src"))

from llamahost.config import ModelConfig  # noqa: E402
from llamahost.engines.llamacpp import bundled_model_path, sampling_fields  # noqa: E402
from llamahost.engines.llamacpp_server import (  # noqa: E402
    BATCH_SIZE,
    MICRO_BATCH_SIZE,
    ServerSettings,
    server_params,
    use_openmp_defaults,
)
from llamahost.types.chat import SamplingParams  # noqa: E402

PARALLEL = 8
# Streams per client count and run (rounds_for).
MIN_STREAMS = 16
CONTEXT_PER_SLOT = 1024
TEMPERATURE = 0.7
PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how photosynthesis works.",
    "Describe the history of the printing press at length.",
    "Write a detailed travel guide to Lisbon.",
    "Explain how a compiler works, step by step.",
    "Tell a long fairy tale about a clever fox.",
    "Describe the water cycle in great detail.",
    "Write an essay about the invention of the telephone.",
]
# What llamahost sends llama.cpp for a request with only a temperature (the Llama API's
# defaults for the rest, and the bundled model's own sampling defaults: DRY), sent to
# llama-server explicitly so both sample alike; the bench sends the temperature itself.
PEER_SAMPLING = {
    key: value
    for key, value in sampling_fields(SamplingParams(temperature=TEMPERATURE), ModelConfig(id="bench").resolved_sampling).items()
    if key not in ("temperature", "seed")
}


def openmp_env() -> dict[str, str]:
    """The environment with llamahost's OpenMP wait policy (or the one set here): what
    llama-server gets too, so both wait alike."""
    env = dict(os.environ)
    use_openmp_defaults(env)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_llama_server() -> Path:
    want = version("xllamacpp")
    build = SCRATCH / f"llama-server-{want}"
    binary = build / "bin" / "llama-server"
    if binary.exists():
        return binary
    SCRATCH.mkdir(parents=True, exist_ok=True)
    sdists = list(SCRATCH.glob(f"xllamacpp-{want}.tar.gz"))
    if not sdists:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(SCRATCH),
             f"xllamacpp=={want}"],
            check=True,
        )
        sdists = list(SCRATCH.glob(f"xllamacpp-{want}.tar.gz"))
    source = SCRATCH / f"xllamacpp-{want}"
    if not source.exists():
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(SCRATCH, filter="data")
    subprocess.run(
        ["cmake", "-S", str(source / "thirdparty" / "llama.cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
         "-DLLAMA_BUILD_EXAMPLES=OFF"],
        check=True,
    )
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)], check=True)
    return binary


def serve_engine_alone(port: int, threads: int) -> None:
    """Run xllamacpp's own HTTP server with llamahost's parameters until terminated."""
    import signal

    params = server_params(ServerSettings(bundled_model_path(), PARALLEL, CONTEXT_PER_SLOT, threads))
    import xllamacpp  # type: ignore[import-untyped]  # after server_params, which sets OpenMP's policy

    params.use_jinja = True  # its chat endpoint renders the template, as llama-server's does
    params.hostnames, params.port = ["127.0.0.1"], port
    server = xllamacpp.Server(params)  # noqa: F841 (serves while referenced)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


class Server:
    def __init__(self, name: str, argv: list[str], url: str, path: str, headers: dict, extra: dict, env=None):
        self.name, self.argv, self.url, self.path, self.headers, self.extra, self.env = name, argv, url, path, headers, extra, env

    def __enter__(self):
        self.log = tempfile.NamedTemporaryFile(prefix="bench-engine-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        for _ in range(1200):
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise SystemExit(f"{self.name} did not start")

    def __exit__(self, exc_type, *exc):
        self.proc.terminate()
        self.proc.wait()
        if exc_type is not None:
            tail = Path(self.log.name).read_text(errors="replace")[-3000:]
            print(f"\n{self.name} failed; the end of its log ({self.log.name}):\n{tail}", file=sys.stderr)
        else:
            os.unlink(self.log.name)


def load_client() -> httpx.AsyncClient:
    # One connection per request, for every server alike (a loopback connect, well under a
    # millisecond): llama.cpp's listener (llama-server's and xllamacpp's) now and then
    # closed a kept-alive connection after a streamed reply without saying so, failing the
    # next request sent on it.
    return httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64), headers={"Connection": "close"})


async def content_times(client: httpx.AsyncClient, server: Server, body: dict) -> list[float]:
    """Stream one chat completion; the perf_counter time of each chunk that carries content."""
    times = []
    async with client.stream("POST", server.url + server.path, json={**body, "stream": True}, headers=server.headers) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            choices = json.loads(line[5:]).get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                times.append(time.perf_counter())
    return times


async def one_stream(client: httpx.AsyncClient, server: Server, prompt: str, tokens: int) -> tuple[float, int]:
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": TEMPERATURE, **server.extra}
    started = time.perf_counter()
    times = await content_times(client, server, body)
    return (times[0] - started if times else float("nan")), len(times)


def rounds_for(clients: int) -> int:
    """Streams each client sends one after another: at least MIN_STREAMS in all, so that
    one client's TTFT p95 is a percentile of many requests, not one request's time."""
    return max(2, -(-MIN_STREAMS // clients))


async def load(server: Server, clients: int, tokens: int) -> tuple[float, float]:
    async def client_streams(client: httpx.AsyncClient, first: int) -> list[tuple[float, int]]:
        rounds = range(rounds_for(clients))
        return [await one_stream(client, server, PROMPTS[(first + r) % len(PROMPTS)], tokens) for r in rounds]

    async with load_client() as client:
        await one_stream(client, server, PROMPTS[0], 8)  # warm
        started = time.perf_counter()
        per_client = await asyncio.gather(*(client_streams(client, i) for i in range(clients)))
        wall = time.perf_counter() - started
    results = [r for streams in per_client for r in streams]
    ttfts = sorted(r[0] for r in results)
    generated = sum(r[1] for r in results)
    p95 = ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))]
    return generated / wall, p95


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--serve-engine-alone", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_engine_alone:
        serve_engine_alone(args.serve_engine_alone, args.threads)
        return
    levels = [int(x) for x in args.clients.split(",")]
    gguf = str(bundled_model_path())
    llama_server = build_llama_server()

    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LLAMAHOST_DATA_DIR": str(tmp)}
    (tmp / "bench.toml").write_text(
        f'[[models]]\nid = "bench"\nthreads = {args.threads}\nparallel = {PARALLEL}\n'
        f"context_window = {CONTEXT_PER_SLOT}\nmax_queue = 64\n"
    )
    key = subprocess.run([sys.executable, "-m", "llamahost", "keys", "create", "--team", "bench"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    ours = Server(
        "llamahost", [sys.executable, "-m", "llamahost", "serve", "--port", str(port), "--config", str(tmp / "bench.toml"),
                      "--log-level", "warning"],
        f"http://127.0.0.1:{port}", "/compat/v1/chat/completions", {"Authorization": f"Bearer {key}"}, {}, env)
    port = free_port()
    peer = Server(
        "llama-server", [str(llama_server), "-m", gguf, "--port", str(port), "-np", str(PARALLEL),
                         "-c", str(PARALLEL * CONTEXT_PER_SLOT), "--no-kv-unified", "-b", str(BATCH_SIZE),
                         "-ub", str(MICRO_BATCH_SIZE), "-t", str(args.threads), "-tb", str(args.threads), "--no-webui",
                         "--cache-ram", "0"],
        # llamahost's engine's OpenMP wait policy (README, Load): the same here.
        f"http://127.0.0.1:{port}", "/v1/chat/completions", {}, PEER_SAMPLING,
        openmp_env())

    port = free_port()
    alone = Server(
        "xllamacpp", [sys.executable, __file__, "--serve-engine-alone", str(port), "--threads", str(args.threads)],
        f"http://127.0.0.1:{port}", "/v1/chat/completions", {}, PEER_SAMPLING, env)
    servers = (ours, peer, alone)

    # runs[name][clients] = [(tokens/s, TTFT p95), ...]
    runs: dict[str, dict[int, list[tuple[float, float]]]] = {s.name: {n: [] for n in levels} for s in servers}
    for run in range(args.runs):
        for server in servers if run % 2 == 0 else servers[::-1]:
            with server:
                for n in levels:
                    runs[server.name][n].append(asyncio.run(load(server, n, args.tokens)))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.tokens}-token streamed chat completions, {args.threads} threads, {PARALLEL} slots x {CONTEXT_PER_SLOT} "
          f"tokens, bundled SmolLM2-135M Q4_1, temperature {TEMPERATURE}, {args.runs} runs (median)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"{'server':<14} {'clients':>7} {'tokens/s':>9} {'TTFT p95':>9}")
    for name, rows in runs.items():
        for n, samples in rows.items():
            tps = statistics.median(s[0] for s in samples)
            p95 = statistics.median(s[1] for s in samples)
            print(f"{name:<14} {n:>7} {tps:9.1f} {p95 * 1000:8.0f}ms")

    def ratios(name: str, base: str, n: int) -> tuple[list[float], list[float]]:
        pairs = list(zip(runs[name][n], runs[base][n], strict=True))
        return sorted(a[0] / b[0] for a, b in pairs), sorted(a[1] / b[1] for a, b in pairs)

    def spread(values: list[float]) -> str:
        return f"{values[0]:.2f} / {statistics.median(values):.2f} / {values[-1]:.2f}x"

    print("\nllamahost / llama-server, per run pair: min / median / max")
    for n in levels:
        tput, ttft = ratios("llamahost", "llama-server", n)
        target = 1.05 if n >= 8 else 1.0
        print(f"  {n:>2} clients: throughput {spread(tput)} (target >= {target}), TTFT p95 {spread(ttft)} (target <= 1.0)")
    print("\nwhere it comes from: the engine alone (xllamacpp / llama-server) and llamahost's Python (llamahost / xllamacpp)")
    for n in levels:
        tput, ttft = ratios("xllamacpp", "llama-server", n)
        own_tput, own_ttft = ratios("llamahost", "xllamacpp", n)
        print(f"  {n:>2} clients: engine throughput {spread(tput)}, TTFT p95 {spread(ttft)}; "
              f"llamahost's own throughput {spread(own_tput)}, TTFT p95 {spread(own_ttft)}")


if __name__ == "__main__":
    main()
