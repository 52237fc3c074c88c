"""n-gram speculative decoding (``ngram_speculation``) on replies that repeat their
input, and on free text: llamahost with it off and on, beside llama-server with the same
option (``--spec-type ngram-simple --spec-ngram-simple-size-m N``) off and on; same
server parameters as ``bench/engine.py``, greedy decoding, one client at a time.

Printed per prompt set: decode tokens/s (completion tokens over the time from the first
token to the last) of each configuration, and on/off per server. The bundled 135M model
copies the text of the repeating prompts (edits that hand most of the input back).

    python bench/speculation.py [--draft 16] [--runs 3] [--tokens 160]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine as bench  # noqa: E402  (bench/engine.py: the servers and their parameters)

CODE = '''def parse_config(path):
    with open(path) as f:
        lines = f.readlines()
    config = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        config[key.strip()] = value.strip()
    return config
'''
TEXT = ("The quick brown fox jumps over the lazy dog. The dog was not amused, and it barked loudly at the fox. "
        "Then the fox ran away into the forest, where it lived with its family in a small den under an old oak tree.")
# Edits that hand most of the input back: the bundled model copies these (checked: 4-word
# overlap with the prompt of 1.00 on the text ones). Asked to repeat JSON it writes about
# JSON instead, so no JSON prompt is here.
REPEATING = [
    "Fix the spelling mistakes in this text and write it out in full:\n"
    + TEXT.replace("jumps", "jumsp").replace("forest", "forrest"),
    "Rewrite this text with every sentence on its own line:\n" + TEXT,
    "Repeat after me, word for word: " + TEXT,
    "Add a docstring to this function and repeat the whole code:\n" + CODE,
]
FREE = bench.PROMPTS[:3]


async def decode_rate(server: bench.Server, prompt: str, tokens: int) -> tuple[float, int]:
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0.0, **server.extra}
    async with bench.load_client() as client:
        times = await bench.content_times(client, server, body)
    if len(times) < 2 or times[-1] <= times[0]:
        return float("nan"), len(times)
    return (len(times) - 1) / (times[-1] - times[0]), len(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--draft", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    gguf = str(bench.bundled_model_path())
    llama_server = bench.build_llama_server()
    tmp = Path(tempfile.mkdtemp(prefix="bench-spec-"))
    env = {**os.environ, "PYTHONPATH": str(bench.ROOT / "src"), "LLAMAHOST_DATA_DIR": str(tmp)}
    key = subprocess.run([sys.executable, "-m", "llamahost", "keys", "create", "--team", "bench"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    # With these samplers llama-server's greedy matches llamahost's (bench/engine.py's set at temperature 0).
    peer_sampling = bench.PEER_SAMPLING

    def ours(draft: int) -> bench.Server:
        config = tmp / f"spec-{draft}.toml"
        config.write_text(
            f'[[models]]\nid = "bench"\nthreads = {args.threads}\nparallel = {bench.PARALLEL}\n'
            f"context_window = {bench.CONTEXT_PER_SLOT}\nmax_queue = 64\nngram_speculation = {draft}\n"
        )
        port = bench.free_port()
        return bench.Server(
            f"llamahost spec={draft}",
            [sys.executable, "-m", "llamahost", "serve", "--port", str(port), "--config", str(config), "--log-level", "warning"],
            f"http://127.0.0.1:{port}", "/compat/v1/chat/completions", {"Authorization": f"Bearer {key}"}, {}, env)

    def peer(draft: int) -> bench.Server:
        port = bench.free_port()
        spec = ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-m", str(draft)] if draft else []
        return bench.Server(
            f"llama-server spec={draft}",
            [str(llama_server), "-m", gguf, "--port", str(port), "-np", str(bench.PARALLEL),
             "-c", str(bench.PARALLEL * bench.CONTEXT_PER_SLOT), "--no-kv-unified", "-b", str(bench.BATCH_SIZE),
             "-ub", str(bench.MICRO_BATCH_SIZE), "-t", str(args.threads), "-tb", str(args.threads), "--no-webui",
             "--cache-ram", "0", *spec],
            f"http://127.0.0.1:{port}", "/v1/chat/completions", {}, peer_sampling,
            bench.openmp_env())

    servers = [ours(0), ours(args.draft), peer(0), peer(args.draft)]
    rates: dict[str, dict[str, list[float]]] = {s.name: {"repeating": [], "free": []} for s in servers}
    for run in range(args.runs):
        for server in servers if run % 2 == 0 else reversed(servers):
            with server:
                for kind, prompts in (("repeating", REPEATING), ("free", FREE)):
                    for prompt in prompts:
                        rates[server.name][kind].append(asyncio.run(decode_rate(server, prompt, args.tokens))[0])
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ngreedy decode tokens/s (median over {args.runs} runs x prompts), up to {args.tokens} tokens, "
          f"draft {args.draft}; load average at the end {os.getloadavg()[0]:.2f}")
    for kind in ("repeating", "free"):
        medians = {name: statistics.median(r[kind]) for name, r in rates.items()}
        line = ", ".join(f"{name} {value:.1f}" for name, value in medians.items())
        ours_gain = medians[f"llamahost spec={args.draft}"] / medians["llamahost spec=0"]
        peer_gain = medians[f"llama-server spec={args.draft}"] / medians["llama-server spec=0"]
        print(f"  {kind:<9}: {line}; on/off llamahost {ours_gain:.2f}x, llama-server {peer_gain:.2f}x")


if __name__ == "__main__":
    main()
