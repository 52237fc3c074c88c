"""Gateway overhead: the same OpenAI-compatible upstream reached directly, through
llamahost (``/compat/v1``) and through LiteLLM's proxy, in one run, under the same load.

The upstream is a stub (below) that answers at once with a fixed completion, so what
is measured is what each gateway adds. For each target:
- latency: N sequential chat completions (one at a time, interleaved across targets
  in rounds); p50 and p99, and "added" = the gateway's minus the direct path's;
- throughput: C concurrent clients for T seconds; completed requests per second.

Targets: llamahost's added p50 <= 1/5 of LiteLLM's, and >= 2x LiteLLM's requests/s.
For JSON (non-streaming) requests llamahost runs twice: as configured by default
(it streams from the upstream anyway) and with ``upstream_streaming = "as_requested"``.

Needs LiteLLM's proxy, which is not a llamahost dependency:

    .venv/bin/pip install 'litellm[proxy]'
    .venv/bin/python bench/gateway.py [--requests 400] [--concurrency 32] [--seconds 12] [--stream]

Both gateways run one process at warning-level logging (no per-request log lines)
and check a key on every request: LiteLLM its master key (no database), llamahost an
API key in its SQLite database. Everything
shares this machine's cores with the load generator, equally for every target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import free_port, start_llamahost as start_server  # noqa: E402
COMPLETION_WORDS = ["Hello", " there", "!", " This", " is", " a", " fixed", " reply", " from", " the", " stub",
                    " upstream", ",", " twenty", " pieces", " long", " so", " streams", " have", " body", "."]


# --- the stub upstream (runs as its own process: `gateway.py --stub PORT`) ------------


def stub_app():
    """A raw ASGI app (no framework, so the stub costs as little as possible)."""
    created = int(time.time())
    text = "".join(COMPLETION_WORDS)
    usage = {"prompt_tokens": 12, "completion_tokens": len(COMPLETION_WORDS), "total_tokens": 12 + len(COMPLETION_WORDS)}
    whole = json.dumps({
        "id": "chatcmpl-stub", "object": "chat.completion", "created": created, "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage,
    }).encode()

    def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
        body = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created, "model": "stub",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if delta is not None else [], **extra}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    stream = b"".join(
        [chunk({"role": "assistant", "content": ""})]
        + [chunk({"content": w}) for w in COMPLETION_WORDS]
        + [chunk({}, "stop"), chunk(None, usage=usage), b"data: [DONE]\n\n"]
    )
    stream_no_usage = stream.replace(chunk(None, usage=usage), b"")
    models = json.dumps({"object": "list", "data": [{"id": "stub", "object": "model", "created": created, "owned_by": "stub"}]}).encode()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":
            payload, ctype = models, b"application/json"
        else:
            request = json.loads(body or b"{}")
            if request.get("stream"):
                wants_usage = (request.get("stream_options") or {}).get("include_usage")
                payload, ctype = (stream if wants_usage else stream_no_usage), b"text/event-stream"
            else:
                payload, ctype = whole, b"application/json"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    return app


def run_stub(port: int) -> None:
    import uvicorn

    uvicorn.run(stub_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- processes -------------------------------------------------------------------------


def wait_http(url: str, proc: subprocess.Popen, name: str, timeout: float = 120, headers: dict | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name} did not start")


def start_stub(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--stub", str(port)])
    wait_http(f"http://127.0.0.1:{port}/v1/models", proc, "stub")
    return proc


def start_llamahost(tmp: Path, stub_port: int, streaming: str) -> tuple[subprocess.Popen, str, str]:
    proc, url, key = start_server(
        tmp / f"llamahost-{streaming}",
        # Limits far above what the bench sends: it measures the proxy, not the limiter's refusals.
        '[server]\nlog_level = "warning"\n\n[limits]\nrpm = 1000000000\ntpm = 1000000000000\n\n[[models]]\nid = "bench"\nengine = "openai"\n'
        f'upstream_model = "stub"\nreplicas = ["http://127.0.0.1:{stub_port}/v1"]\ncontext_window = 131072\n'
        f'upstream_streaming = "{streaming}"\n',
    )
    return proc, url + "/compat/v1", key


LITELLM_KEY = "sk-bench-" + "0" * 48


def start_litellm(tmp: Path, stub_port: int) -> tuple[subprocess.Popen, str]:
    litellm = shutil.which("litellm", path=str(Path(sys.executable).parent)) or shutil.which("litellm")
    if not litellm:
        raise SystemExit("LiteLLM's proxy is not installed: pip install 'litellm[proxy]'")
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/stub\n"
        f"      api_base: http://127.0.0.1:{stub_port}/v1\n"
        "      api_key: sk-stub\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
    )
    port = free_port()
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
           "LITELLM_MASTER_KEY": LITELLM_KEY}
    proc = subprocess.Popen(
        [litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=(tmp / "litellm.log").open("wb"),
    )
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, "LiteLLM", timeout=180)
    return proc, f"http://127.0.0.1:{port}/v1"


# --- load ------------------------------------------------------------------------------


class Target:
    def __init__(self, name: str, base_url: str, model: str, key: str | None) -> None:
        self.name = name
        self.url = base_url + "/chat/completions"
        self.model = model
        self.headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})


async def one_request(session, target: Target, stream: bool) -> float:
    body = {"model": target.model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 32}
    if stream:
        body["stream"] = True
    started = time.perf_counter()
    async with session.post(target.url, json=body, headers=target.headers) as response:
        payload = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{target.name}: HTTP {response.status}: {payload[:300]!r}")
        if stream:
            if b"[DONE]" not in payload:
                raise RuntimeError(f"{target.name}: stream without [DONE]")
        elif "".join(COMPLETION_WORDS) not in json.loads(payload)["choices"][0]["message"]["content"]:
            raise RuntimeError(f"{target.name}: unexpected completion {payload[:300]!r}")
    return time.perf_counter() - started


async def latencies(targets: list[Target], n: int, stream: bool, rounds: int = 10) -> dict[str, list[float]]:
    import aiohttp

    out: dict[str, list[float]] = {t.name: [] for t in targets}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for t in targets:  # warm-up: connections, caches, lazy imports
            for _ in range(20):
                await one_request(session, t, stream)
        per_round = max(1, n // rounds)
        for _ in range(rounds):
            for t in targets:
                for _ in range(per_round):
                    out[t.name].append(await one_request(session, t, stream))
    return out


async def throughput(target: Target, concurrency: int, seconds: float, stream: bool) -> float:
    import aiohttp

    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        for _ in range(concurrency):
            await one_request(session, target, stream)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await one_request(session, target, stream)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return done / elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400, help="sequential requests per target for latency")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=12.0, help="throughput run length per target")
    parser.add_argument("--stream", action="store_true", help="streaming requests instead of JSON ones")
    parser.add_argument("--stub", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stub:
        run_stub(args.stub)
        return

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            stub_port = free_port()
            procs.append(start_stub(stub_port))
            targets = [Target("direct", f"http://127.0.0.1:{stub_port}/v1", "stub", None)]
            # llamahost as configured by default (the upstream always streams) and, for
            # JSON requests, with upstream_streaming = "as_requested" (JSON goes up as JSON).
            for streaming, name in [("always", "llamahost"), ("as_requested", "llamahost-json")]:
                if streaming == "as_requested" and args.stream:
                    continue  # identical to the default for streaming requests
                lh, lh_url, key = start_llamahost(tmp, stub_port, streaming)
                procs.append(lh)
                targets.append(Target(name, lh_url, "bench", key))
            ll, ll_url = start_litellm(tmp, stub_port)
            procs.append(ll)
            targets.append(Target("litellm", ll_url, "bench", LITELLM_KEY))
            lat = asyncio.run(latencies(targets, args.requests, args.stream))
            rps = {t.name: asyncio.run(throughput(t, args.concurrency, args.seconds, args.stream)) for t in targets}
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()

    kind = "streaming" if args.stream else "non-streaming"
    print(f"{kind} chat completions; latency: {args.requests} sequential requests per target; "
          f"throughput: {args.concurrency} concurrent clients for {args.seconds:g}s")
    base50, base99 = pct(lat["direct"], 0.5), pct(lat["direct"], 0.99)
    print(f"{'target':<15} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} {'req/s':>8}")
    for t in targets:
        p50, p99 = pct(lat[t.name], 0.5), pct(lat[t.name], 0.99)
        added = "" if t.name == "direct" else f"{(p50 - base50) * 1000:10.2f}"
        added99 = "" if t.name == "direct" else f"{(p99 - base99) * 1000:10.2f}"
        print(f"{t.name:<15} {p50 * 1000:8.2f} {p99 * 1000:8.2f} {added:>10} {added99:>10} {rps[t.name]:8.0f}")
    theirs = pct(lat["litellm"], 0.5) - base50
    for t in targets:
        if t.name.startswith("llamahost"):
            ours = pct(lat[t.name], 0.5) - base50
            print(f"added p50: {t.name} / LiteLLM = {ours / theirs:.3f} (target <= 0.200); "
                  f"requests/s: {t.name} / LiteLLM = {rps[t.name] / rps['litellm']:.2f}x (target >= 2.00x)")


if __name__ == "__main__":
    main()
