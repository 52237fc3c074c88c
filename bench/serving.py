"""Serving overhead: llamahost over HTTP vs the same GGUF through llama_cpp.Llama directly.

Both generate the same greedy (temperature 0) completion of up to 256 tokens from the
same chat, with the same thread count, alternating runs on the same machine; the
printout is the ratio of their tokens/s. Target: llamahost within 10 %.

    python bench/serving.py [--runs 5] [--tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from llamahost.engines.llamacpp import bundled_model_path  # noqa: E402
from _server import start_llamahost as start_server  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a detailed, very long essay about the history of the Roman Empire."}]


def start_llamahost(data_dir: Path, threads: int = 1, config_text: str | None = None) -> tuple[subprocess.Popen, str, str]:
    """A llamahost serving model "bench" (the bundled GGUF unless ``config_text`` says otherwise)."""
    return start_server(data_dir, config_text or f'[[models]]\nid = "bench"\nthreads = {threads}\ncontext_window = 2048\n')


def run_llamahost(url: str, key: str, tokens: int) -> tuple[int, float]:
    body = {"model": "bench", "messages": MESSAGES, "max_completion_tokens": tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    completion = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])["event"]
                if event["event_type"] == "metrics":
                    completion = next(m["value"] for m in event["metrics"] if m["metric"] == "num_completion_tokens")
    return completion, time.perf_counter() - started


def run_direct(llm, tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    completion = 0
    for chunk in llm.create_chat_completion(messages=MESSAGES, max_tokens=tokens, temperature=0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            completion += 1
    return completion, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import llama_cpp
    from llamacpp_no_repack import disable_weight_repacking_on_amx

    if disable_weight_repacking_on_amx():  # its AMX kernels crash the process
        print("AMX host: llama_cpp.Llama runs without weight repacking")
    llm = llama_cpp.Llama(
        model_path=str(bundled_model_path()), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, key = start_llamahost(Path(tmp), args.threads)
        try:
            run_llamahost(url, key, 16), run_direct(llm, 16)  # warm both
            ours, theirs = [], []
            for _ in range(args.runs):
                n, t = run_llamahost(url, key, args.tokens)
                ours.append(n / t)
                m, u = run_direct(llm, args.tokens)
                theirs.append(m / u)
            print(f"completion tokens per run: llamahost {n}, llama_cpp.Llama {m} (budget {args.tokens})")
        finally:
            proc.terminate()
            proc.wait()
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"llamahost (HTTP, streaming)     {a:8.1f} tokens/s  (median of {args.runs})")
    print(f"llama_cpp.Llama (in-process)    {b:8.1f} tokens/s  (median of {args.runs})")
    print(f"llamahost / llama_cpp.Llama = {a / b:.3f}  -> serving overhead {100 * (1 - a / b):+.1f} % (target <= 10 %)")


if __name__ == "__main__":
    main()
