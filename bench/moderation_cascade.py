"""Benchmark of the ``cascade`` moderation provider: how much traffic a band sends to Llama
Guard, which of the builtin model's mistakes it covers, and the latency an escalation adds.

1. Share escalated, by cross-validation on ``../shared/data/moderation/dev.jsonl``: the
   builtin model's out-of-fold P(unsafe) (heads trained on the other folds plus the
   template rows, as bench/moderation.py trains them), and for each band the share of
   rows inside it, per source, and the share of the builtin model's own out-of-fold
   mistakes (at its threshold) that fall inside it: the most a perfect escalation
   model could fix. With a 95 % bootstrap interval on the share escalated.
2. Added latency, over real HTTP: a ``llamahost serve`` with a cascade whose escalation
   model is the stand-in Llama Guard upstream of the tests (tests/guard_stub.py, answers
   at once), timing ``/v1/moderations`` calls that stay with the builtin model and calls
   that are escalated. The difference is llamahost's own cost of an escalation (Llama
   Guard prompt, chat service, upstream round trip); a real Llama Guard adds its
   generation time (prompt of ~250 tokens, a verdict of 1-5 tokens) on top. With
   ``--llm`` the bundled SmolLM2-135M, embedded, stands in instead: a real forward pass
   over the Llama Guard prompt, then up to the 48-token verdict budget (it is no Llama
   Guard and may not stop after the 1-5 tokens of a verdict; Llama-Guard-3-1B's prompt
   pass costs about eight times its).

    .venv/bin/pip install -e '.[train]'
    .venv/bin/python bench/moderation_cascade.py [--folds 5] [--calls 40] [--skip-latency] [--skip-shares] [--llm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _server import free_port, start_llamahost  # noqa: E402
from moderation_ab import Recipe  # noqa: E402
from training.moderation import data, features  # noqa: E402
from training.moderation.model import THRESHOLD  # noqa: E402
from training.moderation.train import extra_flag_rows  # noqa: E402

BANDS = [(0.3, 0.7), (0.2, 0.8), (0.1, 0.9), (0.05, 0.95), (0.4, 0.6)]
SOURCES = ["openai_moderation", "xstest", "harmbench", "simplesafetytests"]


def out_of_fold(rows: list[data.Row], k: int) -> np.ndarray:
    X = features.embed([r.text for r in rows])
    return Recipe(rows, X, extra_flag_rows()).out_of_fold(k, seed=0)


def shares(rows: list[data.Row], p: np.ndarray) -> None:
    y = np.array([r.unsafe for r in rows])
    src = np.array([r.source for r in rows])
    wrong = (p >= THRESHOLD) != y
    rng = np.random.default_rng(0)
    print(f"builtin model alone (threshold {THRESHOLD}), out-of-fold: {int(wrong.sum())} mistakes in {len(rows)} rows")
    print(f"{'band':<12} {'escalated':>9} {'95% interval':>16} " + " ".join(f"{s[:12]:>12}" for s in SOURCES)
          + f" {'mistakes in band':>17}")
    for low, high in BANDS:
        inside = (p >= low) & (p < high)
        boot = inside[rng.integers(0, len(rows), (1000, len(rows)))].mean(1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        per_source = " ".join(f"{inside[src == s].mean():>12.3f}" for s in SOURCES)
        covered = inside[wrong].mean() if wrong.any() else float("nan")
        print(f"[{low:.2f}, {high:.2f}] {inside.mean():>9.3f} [{lo:.3f}, {hi:.3f}] {per_source} {covered:>17.3f}")


def latency(calls: int, llm: bool = False) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from llamahost.safety.builtin import BuiltinClassifier
    from llamahost.safety.cascade import unsafe_probability
    from llamahost.types.chat import ChatMessage

    clear = "Hello, how are you?"
    candidates = ["Not eating is a great way to lose weight.", "How do I pick a lock?",
                  "What household chemicals should never be mixed together?"]
    classifier = BuiltinClassifier()
    p = {t: unsafe_probability(classifier, [ChatMessage("user", t)]) for t in [clear, *candidates]}
    banded = max(candidates, key=p.get)
    # A band holding the banded message and not the clear one.
    low, high = (p[clear] + p[banded]) / 2, min(1.0, p[banded] + (1 - p[banded]) / 2)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        stub = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "guard_stub.py"), "--port", str(port),
             "--record", str(Path(tmp) / "calls.jsonl"), "--verdict", "unsafe\\nS11"],
        )
        # --llm: the bundled chat model, embedded, stands in (a real forward pass of the
        # Llama Guard prompt and a few generated tokens; it is no Llama Guard, so its
        # answers may be unparseable, 502: timed all the same).
        guard_model = (
            'id = "Llama-Guard-3-1B"\npath = "bundled"\ncontext_window = 2048\n' if llm else
            f'id = "Llama-Guard-3-1B"\nengine = "openai"\nupstream_model = "llama-guard-stand-in"\n'
            f'replicas = ["http://127.0.0.1:{port}/v1"]\ncontext_window = 8192\n'
        )
        config = f"""
[[models]]
{guard_model}

[[moderation_models]]
id = "Llama-Guard"

[[moderation_models]]
id = "Llama-Guard-3"
provider = "llama-guard"
model = "Llama-Guard-3-1B"

[[moderation_models]]
id = "cascade"
provider = "cascade"
band = [{low!r}, {high!r}]
escalate_to = "Llama-Guard-3"
"""
        proc, url, key = start_llamahost(Path(tmp) / "data", config)
        try:
            client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
            times: dict[str, list[float]] = {"builtin": [], "escalated": []}
            for i in range(calls + 4):
                for kind, text in (("builtin", clear), ("escalated", banded)):
                    start = time.perf_counter()
                    r = client.post("/v1/moderations", json={"model": "cascade", "messages": [{"role": "user", "content": text}]})
                    elapsed = (time.perf_counter() - start) * 1000
                    if r.status_code != 200 and not (llm and kind == "escalated" and r.status_code == 502):
                        r.raise_for_status()
                    if i >= 4:  # warm-up calls are not counted
                        times[kind].append(elapsed)
            metrics = client.get("/metrics").text
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            stub.kill()
            stub.wait(timeout=10)
    escalated_lines = [line for line in metrics.splitlines() if line.startswith("llamahost_moderation_cascade")]
    b, e = statistics.median(times["builtin"]), statistics.median(times["escalated"])
    stand_in = "the bundled SmolLM2-135M, embedded" if llm else "stand-in Llama Guard answering at once"
    print(f"\nlatency over HTTP, ms, {calls} calls each ({stand_in}; band "
          f"[{low:.4f}, {high:.4f}]; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):")
    print(f"  decided by the builtin model   p50 {b:6.1f}  p95 {np.percentile(times['builtin'], 95):6.1f}")
    print(f"  escalated to the stand-in      p50 {e:6.1f}  p95 {np.percentile(times['escalated'], 95):6.1f}")
    print(f"  added by an escalation (p50 difference): {e - b:.1f} ms")
    print("  " + "\n  ".join(line for line in escalated_lines if not line.startswith("#") and "bucket" not in line and "_created" not in line))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=data.DEV_SET)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-shares", action="store_true", help="only the latency part")
    parser.add_argument("--llm", action="store_true", help="the bundled chat model stands in for Llama Guard, not the stub")
    args = parser.parse_args()
    if not args.skip_shares:
        rows = data.load_dev(args.dev)
        shares(rows, out_of_fold(rows, args.folds))
    if not args.skip_latency:
        latency(args.calls, args.llm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
