"""Structured output on the bundled model: what constrained decoding costs (default mode)
and whether replies close their JSON (``--close``).

Cost: tokens/s of structured output (json_schema) vs free text, on the same prompts,
same server, same run.

Each run streams the same chat both ways at temperature 0. The rate is decode speed,
(tokens - 1) / (time of last token - time of first token), so prompt processing and
reply length do not skew it. Runs alternate the modes; the printout is the median rate
of each and their ratio. Target: constrained at most 25 % slower. (Tool calls are
decoded by the same mechanism, a JSON Schema inside a larger grammar; they are not
timed here because a call's first event only goes out once its name is complete.)

    python bench/structured.py [--runs 5] [--tokens 160]

Closing (``--close``): 50 prompt x schema pairs, as LangChain's ``with_structured_output``
sends them (``response_format`` json_schema, strict, two or three fields), at temperature 0
with ``max_tokens`` 512; the share of replies that finish their JSON within the budget
(``finish_reason`` "stop" and the content parses), with the model's sampling defaults off
("before": ``sampling = { dry_multiplier = 0, json_string_max_length = 0, json_number_decimals = 0 }``) and as configured ("after": the default
configuration). Free text must not get worse for it: on a small set of questions with a
known answer, the share answered right, ended within budget, and the share of distinct
word 3-grams in the replies (repetition), both ways.

    nice -n 10 python bench/structured.py --close [--threads 2] [--parallel 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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
    parser.add_argument("--close", action="store_true", help="measure JSON closing within budget instead of speed")
    parser.add_argument("--parallel", type=int, default=4, help="--close: requests in flight (the model's parallel slots)")
    parser.add_argument("--only", choices=["before", "after"], help="--close: run one configuration")
    args = parser.parse_args()
    if args.close:
        close_bench(args.threads, args.parallel, args.only)
        return

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


# --- closing JSON within budget ------------------------------------------------------------


def _schema(fields: dict[str, dict], name: str) -> dict:
    # What LangChain's with_structured_output(method="json_schema") sends for a Pydantic model.
    schema = {"type": "object", "properties": fields, "required": list(fields), "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


S = {"type": "string"}
CLOSE_SET: list[tuple[dict, list[str]]] = [
    (
        _schema({"setup": {**S, "description": "The setup of the joke"}, "punchline": {**S, "description": "The punchline"}}, "Joke"),
        ["Tell me a joke about cats.", "Tell me a joke about programmers.", "Tell me a joke about the weather.",
         "Tell me a joke about a banana.", "Tell me a joke about school."],
    ),
    (
        _schema({"name": S, "country": S}, "City"),
        ["Describe Rome.", "Tell me about a big city in Japan.", "Which city is the capital of Canada?",
         "Describe a famous city in South America.", "Tell me about Paris."],
    ),
    (
        _schema({"title": S, "author": S}, "Book"),
        ["Recommend a classic novel.", "Name a book about the sea.", "What is a good book for children?",
         "Suggest a science fiction book.", "Tell me about a famous play."],
    ),
    (
        _schema({"title": S, "year": {"type": "integer"}}, "Movie"),
        ["Name a famous movie about space.", "Recommend an animated film.", "What is a classic horror movie?",
         "Name a movie about dinosaurs.", "Suggest a film about a detective."],
    ),
    (
        _schema({"name": S, "age": {"type": "integer"}}, "Person"),
        ["Invent a character for a story.", "Describe a young scientist.", "Create a person who loves hiking.",
         "Make up a grandmother character.", "Describe a famous inventor."],
    ),
    (
        _schema({"sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]}, "reason": S}, "Sentiment"),
        ["Classify: 'I loved this movie, it was wonderful.'", "Classify: 'The food was cold and the waiter was rude.'",
         "Classify: 'The meeting is at 3pm.'", "Classify: 'What a fantastic day at the beach!'",
         "Classify: 'My phone broke again and support did not help.'"],
    ),
    (
        _schema({"title": S, "summary": {**S, "description": "A one-sentence summary"}}, "Summary"),
        ["Summarize the story of Cinderella.", "Summarize what photosynthesis is.", "Summarize the history of the internet.",
         "Summarize the plot of Romeo and Juliet.", "Summarize why exercise is healthy."],
    ),
    (
        _schema({"name": S, "description": S}, "Product"),
        ["Describe a new smartphone.", "Invent a kitchen gadget.", "Describe a comfortable chair.",
         "Describe a product for gardeners.", "Describe an electric bicycle."],
    ),
    (
        _schema({"dish": S, "ingredients": {"type": "array", "items": S}}, "Recipe"),
        ["Give me a recipe for pancakes.", "How do I make a salad?", "A simple pasta recipe, please.",
         "What do I need for a chocolate cake?", "Give me a recipe for soup."],
    ),
    (
        _schema({"answer": S, "explanation": S, "confidence": {"type": "number"}}, "Answer"),
        ["Why is the sky blue?", "What is the capital of France?", "How many legs does a spider have?",
         "What is the boiling point of water?", "Who wrote Hamlet?"],
    ),
]
# Free text with a known answer: (question, a word the right answer contains).
FREE_SET = [
    ("What is the capital of France?", "paris"),
    ("What is the largest planet in the solar system?", "jupiter"),
    ("How many days are in a week?", "seven|7"),
    ("What color is the sky on a clear day?", "blue"),
    ("What is the opposite of hot?", "cold"),
    ("Which animal says 'moo'?", "cow"),
    ("What is 2 + 3?", "5|five"),
    ("Who wrote Romeo and Juliet?", "shakespeare"),
    ("What do bees make?", "honey"),
    ("What is frozen water called?", "ice"),
    ("Write a short poem about the sea.", ""),
    ("Explain what a computer is in two sentences.", ""),
]
CLOSE_BUDGET = 512
FREE_BUDGET = 256


def _chat(url: str, key: str, body: dict) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.post(url + "/compat/v1/chat/completions", json={"model": "bench", "temperature": 0, **body}, headers=headers, timeout=900)
    response.raise_for_status()
    return response.json()["choices"][0]


def _closes(choice: dict) -> bool:
    if choice["finish_reason"] != "stop":
        return False
    try:
        json.loads(choice["message"]["content"])
    except (TypeError, ValueError):
        return False
    return True


def _distinct3(text: str) -> tuple[int, int]:
    words = text.lower().split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(set(grams)), len(grams)


def close_bench(threads: int, parallel: int, only: str | None) -> None:
    import re

    configs = {
        "before": "sampling = { dry_multiplier = 0.0, json_string_max_length = 0, json_number_decimals = 0 }\n",  # the model's sampling defaults off
        "after": "",  # the default configuration
    }
    pairs = [(fmt, prompt) for fmt, prompts in CLOSE_SET for prompt in prompts]
    results: dict[str, dict[str, float]] = {}
    for name, extra in configs.items():
        if only and name != only:
            continue
        config = f'[[models]]\nid = "bench"\nthreads = {threads}\nparallel = {parallel}\ncontext_window = 2048\n{extra}'
        with tempfile.TemporaryDirectory() as tmp:
            proc, url, key = start_llamahost(Path(tmp), threads, config)
            try:
                with ThreadPoolExecutor(parallel) as pool:
                    started = time.perf_counter()
                    closed = list(pool.map(
                        lambda pair: _closes(_chat(url, key, {
                            "messages": [{"role": "user", "content": pair[1]}], "response_format": pair[0], "max_tokens": CLOSE_BUDGET,
                        })),
                        pairs,
                    ))
                    free = list(pool.map(
                        lambda q: _chat(url, key, {"messages": [{"role": "user", "content": q[0]}], "max_tokens": FREE_BUDGET}),
                        FREE_SET,
                    ))
                    elapsed = time.perf_counter() - started
            finally:
                proc.terminate()
                proc.wait()
        right = [bool(re.search(answer, c["message"]["content"].lower())) for (_, answer), c in zip(FREE_SET, free, strict=True) if answer]
        ended = [c["finish_reason"] == "stop" for c in free]
        distinct = [_distinct3(c["message"]["content"]) for c in free]
        results[name] = {
            "closed": sum(closed) / len(closed),
            "right": sum(right) / len(right),
            "ended": sum(ended) / len(ended),
            "distinct3": sum(d for d, _ in distinct) / max(1, sum(n for _, n in distinct)),
        }
        failed = [p for (_, p), ok in zip(pairs, closed, strict=True) if not ok]
        print(f"{name}: {sum(closed)}/{len(closed)} JSON replies closed within {CLOSE_BUDGET} tokens ({elapsed:.0f} s)")
        if failed:
            print("  not closed: " + "; ".join(failed))
    print(f"{'':8s} {'JSON closed':>12s} {'free: right':>12s} {'free: ended':>12s} {'free: distinct 3-grams':>24s}")
    for name, r in results.items():
        print(f"{name:8s} {r['closed']:12.2f} {r['right']:12.2f} {r['ended']:12.2f} {r['distinct3']:24.2f}")
    print("target: JSON closed >= 0.95 after; free text no worse")


if __name__ == "__main__":
    main()
