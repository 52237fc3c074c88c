"""Cost of constrained decoding: tokens/s of structured output (json_schema) vs free
text, on the same prompts, same server, same run.

Each run streams the same chat both ways at temperature 0. The rate is decode speed,
(tokens - 1) / (time of last token - time of first token), so prompt processing and
reply length do not skew it. Runs alternate the modes; the printout is the median rate
of each and their ratio. Target: constrained at most 25 % slower. (Tool calls are
decoded by the same mechanism, a JSON Schema inside a larger grammar; they are not
timed here because a call's first event only goes out once its name is complete.)

    python bench/structured.py [--runs 5] [--tokens 160]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import start_llamahost  # noqa: E402  (same server start-up as the serving bench)

PROMPTS = [
    "Describe the planets of the solar system, one by one, in detail.",
    "List everything you know about the history of the Roman Empire.",
    "Write notes about ten famous paintings and their painters.",
]
# Long-running shapes: free-form string fields and open arrays, so both modes decode
# for the whole budget rather than stopping early.
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "details": {"type": "string"}, "year": {"type": "integer"}},
                "required": ["name", "details"],
            },
        },
    },
    "required": ["title", "items"],
}
MODES = {
    "free text": {},
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "notes", "schema": SCHEMA}}},
}


def decode_rate(url: str, key: str, prompt: str, tokens: int, extra: dict) -> tuple[float, int] | None:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_completion_tokens": tokens,
        "temperature": 0,
        "stream": True,
        **extra,
    }
    stamps: list[float] = []
    completion = 0
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])["event"]
            if event["event_type"] == "progress":
                stamps.append(time.perf_counter())
            elif event["event_type"] == "metrics":
                completion = next(m["value"] for m in event["metrics"] if m["metric"] == "num_completion_tokens")
    if completion < 2 or len(stamps) < 2:
        return None
    # Streamed events can bundle tokens; the count comes from the server's metrics.
    return (completion - 1) / (stamps[-1] - stamps[0]), completion


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    lengths: dict[str, list[int]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, key = start_llamahost(Path(tmp), args.threads)
        try:
            for extra in MODES.values():  # warm up: model, grammar tokenizer, caches
                decode_rate(url, key, PROMPTS[0], 16, extra)
            for run in range(args.runs):
                prompt = PROMPTS[run % len(PROMPTS)]
                for mode, extra in MODES.items():
                    timed = decode_rate(url, key, prompt, args.tokens, extra)
                    if timed is None:
                        raise SystemExit(f"{mode}: too short a completion to time")
                    rate, n = timed
                    rates[mode].append(rate)
                    lengths[mode].append(n)
        finally:
            proc.terminate()
            proc.wait()
    free = statistics.median(rates["free text"])
    for mode in MODES:
        rate = statistics.median(rates[mode])
        print(
            f"{mode:22s} {rate:8.1f} tokens/s  (median of {args.runs}, median length {statistics.median(lengths[mode]):.0f})"
            + ("" if mode == "free text" else f"  ratio {rate / free:.3f} -> {100 * (1 - rate / free):+.1f} % slower (target <= 25 %)")
        )


if __name__ == "__main__":
    main()
