"""Fine-tuning bench (by hand): does a LoRA job teach the bundled SmolLM2 a narrow skill it
lacks, and how long does the job take?

The skill is a house answer format: one line, "Answer: <answer> [lh]". The base model never
writes it unprompted (the prompts do not ask for it: the format must come from the tuning).
Success on a held-out prompt = llama.cpp's greedy reply (the bundled Q4_1 GGUF, as served,
with the exported GGUF adapter through llama-cpp-python's `lora_path`) matches the format;
the answer's content is not judged. Held-out prompts are new questions, none seen in training.

    PYTHONPATH=src nice -n 10 .venv/bin/python bench/finetune.py [--threads 2] [--epochs 3]

Reports success before/after, the job's wall time and its CPU time (on a CPU shared with
other work, CPU seconds / threads is what the job would take on idle cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMAT = re.compile(r"^Answer: \S.{0,200} \[lh\]$")

ADD = [(2, 3), (4, 5), (7, 8), (10, 6), (12, 9), (3, 14), (20, 5), (11, 11), (6, 7), (9, 9), (15, 4), (8, 13)]
ADD_HELDOUT = [(5, 6), (13, 2), (7, 7), (16, 3), (4, 18)]
COLOURS = {
    "banana": "yellow",
    "grass": "green",
    "snow": "white",
    "coal": "black",
    "tomato": "red",
    "sky": "blue",
    "carrot": "orange",
    "lemon": "yellow",
    "strawberry": "red",
    "leaf": "green",
    "cloud": "white",
    "ocean": "blue",
}
COLOURS_HELDOUT = {"lime": "green", "cherry": "red", "milk": "white", "crow": "black", "pumpkin": "orange"}
CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Ireland": "Dublin",
}
CAPITALS_HELDOUT = {"Portugal": "Lisbon", "Austria": "Vienna", "Poland": "Warsaw", "Chile": "Santiago", "Cuba": "Havana"}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "up": "down",
    "fast": "slow",
    "happy": "sad",
    "light": "dark",
    "open": "closed",
    "early": "late",
    "full": "empty",
    "hard": "soft",
    "old": "new",
    "strong": "weak",
}
OPPOSITES_HELDOUT = {"wet": "dry", "rich": "poor", "high": "low", "loud": "quiet", "thick": "thin"}
SOUNDS = {
    "dog": "woof",
    "cat": "meow",
    "cow": "moo",
    "duck": "quack",
    "sheep": "baa",
    "lion": "roar",
    "owl": "hoot",
    "pig": "oink",
    "horse": "neigh",
    "snake": "hiss",
    "bee": "buzz",
    "mouse": "squeak",
}
SOUNDS_HELDOUT = {"frog": "ribbit", "wolf": "howl", "rooster": "cock-a-doodle-doo", "goat": "bleat"}


def qa(add: list, colours: dict, capitals: dict, opposites: dict, sounds: dict) -> list[tuple[str, str]]:
    pairs = [(f"What is {a} plus {b}?", f"{a + b}") for a, b in add]
    pairs += [
        (f"What colour is {'the' if k in ('sky', 'ocean', 'snow', 'grass') else 'a'} {k}?", v.capitalize())
        for k, v in colours.items()
    ]
    pairs += [(f"What is the capital of {k}?", v) for k, v in capitals.items()]
    pairs += [(f"What is the opposite of {k}?", v.capitalize()) for k, v in opposites.items()]
    pairs += [(f"What sound does a {k} make?", v.capitalize()) for k, v in sounds.items()]
    return pairs


# A short system prompt of our own: without one SmolLM2's template inserts a 20-token default
# into every example, which would double the bench's training cost for nothing.
SYSTEM = {"role": "system", "content": "Be brief."}


def row(question: str, answer: str) -> dict:
    return {
        "messages": [SYSTEM, {"role": "user", "content": question}, {"role": "assistant", "content": f"Answer: {answer} [lh]"}]
    }


def success_rate(gguf: str, adapter: Path | None, prompts: list[str], threads: int) -> tuple[float, list[str]]:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, lora_path=str(adapter) if adapter else None, n_ctx=512, n_threads=threads, verbose=False, seed=0)
    replies = []
    try:
        for prompt in prompts:
            messages = [SYSTEM, {"role": "user", "content": prompt}]
            out = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=48)
            replies.append((out["choices"][0]["message"]["content"] or "").strip())
    finally:
        llm.close()
    return sum(bool(FORMAT.match(r)) for r in replies) / len(replies), replies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr-multiplier", type=float, default=5.0)
    # llama.cpp's threads spin at each barrier: on a crowded CPU one thread decodes faster
    # than two, and the evaluation is not what is timed.
    parser.add_argument("--eval-threads", type=int, default=1)
    parser.add_argument("--skip-before", action="store_true", help="the base model's score is known (it is deterministic)")
    parser.add_argument("--out", type=Path, default=None, help="keep the job's output here")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from llamahost.finetune.base_model import resolve_base_gguf

    gguf = str(resolve_base_gguf("bundled"))
    train = qa(ADD, COLOURS, CAPITALS, OPPOSITES, SOUNDS)
    heldout = [q for q, _ in qa(ADD_HELDOUT, COLOURS_HELDOUT, CAPITALS_HELDOUT, OPPOSITES_HELDOUT, SOUNDS_HELDOUT)]
    assert len(train) >= 50 and len(heldout) >= 20 and not set(heldout) & {q for q, _ in train}

    work = args.out or Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.jsonl").write_text("".join(json.dumps(row(q, a)) + "\n" for q, a in train))
    spec = {
        "training_file": str(work / "train.jsonl"),
        "output_dir": str(work / "job"),
        "n_epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate_multiplier": args.lr_multiplier,
        "threads": args.threads,
        "seed": 0,
    }
    (work / "spec.json").write_text(json.dumps(spec))

    before = float("nan")
    if not args.skip_before:
        before, before_replies = success_rate(gguf, None, heldout, args.eval_threads)
        print(f"held-out success before tuning: {before:.2f}  e.g. {before_replies[0]!r}", flush=True)

    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    job = subprocess.run(
        [sys.executable, "-m", "llamahost.finetune", "--spec", str(work / "spec.json")],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if job.returncode != 0:
        sys.exit(f"job failed ({job.returncode}): {job.stderr[-2000:]}")
    result = json.loads((work / "job" / "result.json").read_text())

    after, after_replies = success_rate(gguf, work / "job" / "adapter.gguf", heldout, args.eval_threads)
    print(f"held-out success after tuning:  {after:.2f}  e.g. {after_replies[0]!r}")
    failures = [(q, r) for q, r in zip(heldout, after_replies, strict=True) if not FORMAT.match(r)]
    for q, r in failures[:5]:
        print(f"  miss: {q!r} -> {r!r}")
    print(
        f"job: {len(train)} rows x {args.epochs} epochs, {result['steps']} steps, {result['trained_tokens']} tokens; "
        f"wall {wall:.0f} s, CPU {cpu:.0f} s on {args.threads} threads (idle-core estimate {cpu / args.threads:.0f} s)"
    )
    before_verdict = "skipped" if args.skip_before else ("ok" if before <= 0.2 else "MISSED")
    print(
        f"target: before <= 0.2 {before_verdict}, after >= 0.8 {'ok' if after >= 0.8 else 'MISSED'}, "
        f"wall < 600 s {'ok' if wall < 600 else 'MISSED'}"
    )
    print(f"output: {work}")


if __name__ == "__main__":
    main()
