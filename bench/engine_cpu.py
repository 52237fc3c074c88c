"""CPU time per generated token: llamahost's embedded engine vs llama-server, the same
load and server parameters as ``bench/engine.py``.

Wall-clock ratios on a shared machine move with whatever else runs; the CPU time a
server process spends per token it streams does much less (it grows a little with
cache contention, on both sides alike). llama.cpp's compute is the same on both sides,
so the difference is what llamahost adds per request and per token: Python's callback,
event loop, SSE rendering.

Split by thread (from /proc/<pid>/task/*/stat): ``compute`` is the busiest --threads
threads (llama.cpp's decode loop and its OpenMP workers); ``loop`` the process's main
thread (llamahost: the asyncio event loop; llama-server: its decode loop, so there
compute includes it); ``other`` everything else (llamahost: the pool threads running
llama.cpp's per-token callback; llama-server: its HTTP threads).

    python bench/engine_cpu.py [--clients 1,8,16] [--rounds 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine as bench  # noqa: E402  (bench/engine.py: the servers and the load)

TICK = os.sysconf("SC_CLK_TCK")


def thread_times(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each live thread of ``pid``."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        times[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICK
    return times


def process_time(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def measure(server: bench.Server, clients: int, tokens: int, rounds: int, threads: int) -> dict[str, float]:
    pid = server.proc.pid
    await bench.load(server, clients, 8)  # warm: the pool's threads exist, caches are hot
    before, total_before = thread_times(pid), process_time(pid)
    generated = 0
    for _ in range(rounds):
        generated += await count_tokens(server, clients, tokens)
    after, total_after = thread_times(pid), process_time(pid)
    used = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    compute = sorted((t for tid, t in used.items() if tid != pid), reverse=True)[:threads]
    main = used.get(pid, 0.0)
    total = total_after - total_before
    if server.name == "llama-server":  # its main thread is the decode loop
        compute = sorted(used.values(), reverse=True)[:threads]
        main = 0.0
    per = 1000 / max(1, generated)
    return {
        "tokens": generated,
        "total": total * per,
        "compute": sum(compute) * per,
        "loop": main * per,
        "other": (total - sum(compute) - main) * per,
    }


async def count_tokens(server: bench.Server, clients: int, tokens: int) -> int:
    async with bench.load_client() as client:
        results = await asyncio.gather(
            *(bench.one_stream(client, server, bench.PROMPTS[i % len(bench.PROMPTS)], tokens) for i in range(clients))
        )
    return sum(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,8,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["llamahost", "llama-server"], default=None)
    args = parser.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    gguf = str(bench.bundled_model_path())

    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-cpu-"))
    env = {**os.environ, "PYTHONPATH": str(bench.ROOT / "src"), "LLAMAHOST_DATA_DIR": str(tmp)}
    (tmp / "bench.toml").write_text(
        f'[[models]]\nid = "bench"\nthreads = {args.threads}\nparallel = {bench.PARALLEL}\n'
        f"context_window = {bench.CONTEXT_PER_SLOT}\nmax_queue = 64\n"
    )
    servers = []
    if args.only != "llama-server":
        key = subprocess.run([sys.executable, "-m", "llamahost", "keys", "create", "--team", "bench"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        port = bench.free_port()
        servers.append(bench.Server(
            "llamahost", [sys.executable, "-m", "llamahost", "serve", "--port", str(port), "--config",
                          str(tmp / "bench.toml"), "--log-level", "warning"],
            f"http://127.0.0.1:{port}", "/compat/v1/chat/completions", {"Authorization": f"Bearer {key}"}, {}, env))
    if args.only != "llamahost":
        port = bench.free_port()
        servers.append(bench.Server(
            "llama-server", [str(bench.build_llama_server()), "-m", gguf, "--port", str(port), "-np", str(bench.PARALLEL),
                             "-c", str(bench.PARALLEL * bench.CONTEXT_PER_SLOT), "--no-kv-unified", "-b",
                             str(bench.BATCH_SIZE), "-ub", str(bench.MICRO_BATCH_SIZE), "-t", str(args.threads), "-tb",
                             str(args.threads), "--no-webui", "--cache-ram", "0"],
            f"http://127.0.0.1:{port}", "/v1/chat/completions", {}, bench.PEER_SAMPLING,
            bench.openmp_env()))
    print(f"CPU ms per streamed token ({args.tokens}-token chat completions, {args.rounds} rounds per level, "
          f"{args.threads} threads); load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'server':<13} {'clients':>7} {'tokens':>7} {'total':>7} {'compute':>8} {'loop':>7} {'other':>7}")
    for server in servers:
        with server:
            for n in levels:
                r = asyncio.run(measure(server, n, args.tokens, args.rounds, args.threads))
                print(f"{server.name:<13} {n:>7} {r['tokens']:>7} {r['total']:7.2f} {r['compute']:8.2f} "
                      f"{r['loop']:7.2f} {r['other']:7.2f}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
