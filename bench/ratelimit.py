"""Rate limiter overhead: the latency it adds per request at 50 concurrent clients.

Three llamahost servers on the same machine and model, measured in the same run:

- ``no limiter`` (``[limits] enabled = false``): the named baseline;
- ``memory``: the in-process limiter (the default);
- ``redis``: ``LLAMAHOST_REDIS_URL=redis://127.0.0.1:6379`` (loopback).

Each gets the same requests (a two-word prompt, up to ``--tokens`` completion tokens,
limits far above the load so nothing is refused) from 50 concurrent clients. Printed per
mode: the end-to-end latency (mostly waiting for the one engine, so it is a sanity
check, not the measure) and the limiter's own time per request, which each response
reports in its ``Server-Timing: ratelimit;dur=<ms>`` header (limits lookup + admission +
settlement). Target: p50 <= 1 ms for Redis on loopback.

Then, for context: the same servers' limiter time with one client, and the limiter
alone in this process, one request at a time (acquire + settle), against a bare Redis
``PING`` round trip as the named peer. Each Redis call is an await, so under load its
time includes waiting for the event loop and the CPU; the in-process limiter never waits.

    python bench/ratelimit.py [--requests 200] [--clients 50] [--tokens 8]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from _server import ROOT, start_llamahost

REDIS_URL = "redis://127.0.0.1:6379/0"
PROMPT = [{"role": "user", "content": "Hi there"}]


def start(data_dir: Path, limits: str, env: dict[str, str]) -> tuple[subprocess.Popen, str, str]:
    # One engine thread: llama.cpp's threads spin while they wait for each other, which
    # collapses on a shared, oversubscribed machine; the engine is not what is measured.
    config = f'[limits]\n{limits}\n\n[[models]]\nid = "bench"\nthreads = 1\ncontext_window = 512\nmax_queue = 1000\n'
    return start_llamahost(data_dir, config, env)


async def load(url: str, key: str, requests: int, clients: int, tokens: int) -> tuple[list[float], list[float]]:
    """Returns (end-to-end ms, limiter ms) per request."""
    body = {"model": "bench", "messages": PROMPT, "max_completion_tokens": tokens}
    e2e: list[float] = []
    limiter: list[float] = []
    todo = iter(range(requests))
    headers = {"Authorization": f"Bearer {key}"}

    async def client(http: httpx.AsyncClient) -> None:
        for _ in todo:
            began = time.perf_counter()
            r = await http.post("/v1/chat/completions", json=body, headers=headers)
            e2e.append((time.perf_counter() - began) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"unexpected {r.status_code}: {r.text}")
            timing = re.search(r"ratelimit;dur=([\d.]+)", r.headers.get("server-timing", ""))
            if timing:
                limiter.append(float(timing.group(1)))

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return e2e, limiter


async def alone(rounds: int, prefix: str) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "src"))
    from llamahost.tenancy.limits import Limits, MemoryLimiter, RedisLimiter

    limits = Limits(rpm=10**9, tpm=10**12)
    out: dict[str, float] = {}
    redis_limiter = RedisLimiter(REDIS_URL, prefix)
    for limiter in (MemoryLimiter(), redis_limiter):
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            decision = await limiter.acquire("bench:model", limits, 100)
            await limiter.settle("bench:model", decision.ticket, 60, limits)
            times.append((time.perf_counter() - began) * 1000)
        out[limiter.name] = statistics.median(times)
    pings = []
    for _ in range(rounds):
        began = time.perf_counter()
        await redis_limiter._redis.ping()
        pings.append((time.perf_counter() - began) * 1000)
    out["redis PING"] = statistics.median(pings)
    await redis_limiter.close()
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200, help="per mode")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--tokens", type=int, default=8,
        help="completion tokens per request; 1 makes the event loop, not the engine, the bottleneck",
    )
    args = parser.parse_args()

    prefix = f"llamahost-bench:{uuid.uuid4().hex[:8]}:"
    generous = "rpm = 100000000\ntpm = 100000000000"
    modes = [
        ("no limiter", "enabled = false", {}),
        ("memory", generous, {}),
        ("redis", generous, {"LLAMAHOST_REDIS_URL": REDIS_URL, "LLAMAHOST_REDIS_PREFIX": prefix}),
    ]
    results = {}
    single: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, limits, env) in enumerate(modes):
            proc, url, key = start(Path(tmp) / f"s{i}", limits, env)
            try:
                asyncio.run(load(url, key, args.clients, args.clients, args.tokens))  # warm up
                results[name] = asyncio.run(load(url, key, args.requests, args.clients, args.tokens))
                # The same server with one client: the limiter without others competing.
                single[name] = asyncio.run(load(url, key, 30, 1, args.tokens))[1]
                print(f"measured {name}", file=sys.stderr, flush=True)
            finally:
                proc.terminate()
                proc.wait()
    solo = asyncio.run(alone(1000, prefix))
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    for k in r.scan_iter(match=prefix + "*"):
        r.delete(k)

    print(f"{args.clients} concurrent clients, {args.requests} requests per mode, up to {args.tokens} completion tokens each")
    print(f"{'mode':<12} {'e2e p50 ms':>11} {'e2e p99 ms':>11} {'limiter p50 ms':>15} {'limiter p99 ms':>15}")
    base_e2e = statistics.median(results["no limiter"][0])
    for name, (e2e, limiter) in results.items():
        lp50 = f"{statistics.median(limiter):.3f}" if limiter else "-"
        lp99 = f"{pct(limiter, 99):.3f}" if limiter else "-"
        print(f"{name:<12} {statistics.median(e2e):>11.1f} {pct(e2e, 99):>11.1f} {lp50:>15} {lp99:>15}")
    for name in ("memory", "redis"):
        e2e, limiter = results[name]
        print(
            f"{name}: limiter adds {statistics.median(limiter):.3f} ms p50 per request; "
            f"end-to-end p50 vs no limiter: {statistics.median(e2e) / base_e2e:.3f}x"
            + (" (target <= 1 ms p50)" if name == "redis" else "")
        )
    print(
        "with 1 client instead (limiter p50): "
        + ", ".join(f"{name} {statistics.median(single[name]):.3f} ms" for name in ("memory", "redis"))
    )
    print(
        f"limiter alone, one at a time (acquire + settle, p50): memory {solo['memory']:.3f} ms, "
        f"redis {solo['redis']:.3f} ms = {solo['redis'] / solo['redis PING']:.1f}x a bare PING ({solo['redis PING']:.3f} ms)"
    )


if __name__ == "__main__":
    main()
