"""Embedded-engine throughput under concurrency: llamahost vs llama.cpp's llama-server
vs llama-cpp-python's own server, on the same GGUF and thread count, in one run.

For 1, 4, 8 and 16 concurrent streaming clients (128-token completions) it prints
aggregate generated tokens/s and time-to-first-token p50/p95 for each server, then
llamahost's ratios. Targets (issue 8): >= 0.9x llama-server's throughput at 8 and 16
clients, >= 1.5x llama_cpp.server's, TTFT p95 at 8 clients <= 1.5x llama-server's.

llama-server is built from the llama.cpp sources vendored in the llama-cpp-python
source distribution matching the installed version, in bench/.scratch (first run:
several minutes of compiling). Servers run one at a time so they never share cores.

    python bench/engine.py [--threads 2] [--tokens 128] [--clients 1,4,8,16]
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

from llamahost.engines.llamacpp import bundled_model_path  # noqa: E402

PARALLEL = 8
CONTEXT_PER_SLOT = 1024
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_llama_server() -> Path:
    binary = SCRATCH / "llama.cpp-build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    SCRATCH.mkdir(parents=True, exist_ok=True)
    want = version("llama_cpp_python")
    sdists = list(SCRATCH.glob(f"llama_cpp_python-{want}.tar.gz"))
    if not sdists:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(SCRATCH), f"llama-cpp-python=={want}"],
            check=True,
        )
        sdists = list(SCRATCH.glob(f"llama_cpp_python-{want}.tar.gz"))
    source = SCRATCH / f"llama_cpp_python-{want}"
    if not source.exists():
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(SCRATCH, filter="data")
    build = SCRATCH / "llama.cpp-build"
    subprocess.run(
        ["cmake", "-S", str(source / "vendor" / "llama.cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"],
        check=True,
    )
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)], check=True)
    return binary


class Server:
    def __init__(self, name: str, argv: list[str], url: str, path: str, headers: dict, health: str, env=None):
        self.name, self.argv, self.url, self.path, self.headers, self.health, self.env = name, argv, url, path, headers, health, env

    def __enter__(self):
        self.log = tempfile.NamedTemporaryFile(prefix="bench-engine-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        for _ in range(1200):
            try:
                if httpx.get(self.url + self.health, headers=self.headers, timeout=2).status_code == 200:
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


async def one_stream(client: httpx.AsyncClient, server: Server, prompt: str, tokens: int) -> tuple[float, int]:
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0.8, "seed": 1, "stream": True}
    started = time.perf_counter()
    ttft, pieces = None, 0
    async with client.stream("POST", server.url + server.path, json=body, headers=server.headers) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            choices = json.loads(line[5:]).get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                pieces += 1
                if ttft is None:
                    ttft = time.perf_counter() - started
    return ttft or float("nan"), pieces


async def load(server: Server, clients: int, tokens: int) -> tuple[float, float, float]:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        await one_stream(client, server, PROMPTS[0], 8)  # warm
        started = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, server, PROMPTS[i % len(PROMPTS)], tokens) for i in range(clients)))
        wall = time.perf_counter() - started
    ttfts = sorted(r[0] for r in results)
    generated = sum(r[1] for r in results)
    p95 = ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))]
    return generated / wall, statistics.median(ttfts), p95


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,4,8,16")
    args = parser.parse_args()
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
    servers = []
    port = free_port()
    servers.append(Server(
        "llamahost", [sys.executable, "-m", "llamahost", "serve", "--port", str(port), "--config", str(tmp / "bench.toml"),
                      "--log-level", "warning"],
        f"http://127.0.0.1:{port}", "/compat/v1/chat/completions", {"Authorization": f"Bearer {key}"}, "/health", env))
    port = free_port()
    servers.append(Server(
        "llama-server -np 8", [str(llama_server), "-m", gguf, "--port", str(port), "-np", str(PARALLEL),
                               "-c", str(PARALLEL * CONTEXT_PER_SLOT), "-t", str(args.threads), "-tb", str(args.threads),
                               "--no-webui"],
        f"http://127.0.0.1:{port}", "/v1/chat/completions", {}, "/health"))
    port = free_port()
    servers.append(Server(
        "llama_cpp.server", [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--port", str(port),
                             "--n_ctx", str(CONTEXT_PER_SLOT), "--n_threads", str(args.threads), "--model_alias", "bench",
                             # By default it cuts a running stream off when the next request comes in.
                             "--interrupt_requests", "False"],
        f"http://127.0.0.1:{port}", "/v1/chat/completions", {}, "/v1/models"))

    table: dict[str, dict[int, tuple[float, float, float]]] = {}
    for server in servers:
        with server:
            table[server.name] = {n: asyncio.run(load(server, n, args.tokens)) for n in levels}
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.tokens}-token streamed completions, {args.threads} threads, bundled SmolLM2-135M Q4_1")
    print(f"{'server':<20} {'clients':>7} {'tokens/s':>9} {'TTFT p50':>9} {'TTFT p95':>9}")
    for name, rows in table.items():
        for n, (tps, p50, p95) in rows.items():
            print(f"{name:<20} {n:>7} {tps:9.1f} {p50 * 1000:8.0f}ms {p95 * 1000:8.0f}ms")
    ours, peer, slow = table["llamahost"], table["llama-server -np 8"], table["llama_cpp.server"]
    print("\nllamahost ratios:")
    for n in levels:
        print(f"  {n:>2} clients: throughput {ours[n][0] / peer[n][0]:.2f}x llama-server (target >= 0.9 at 8, 16), "
              f"{ours[n][0] / slow[n][0]:.2f}x llama_cpp.server (target >= 1.5); "
              f"TTFT p95 {ours[n][2] / peer[n][2]:.2f}x llama-server (target <= 1.5 at 8)")


if __name__ == "__main__":
    main()
