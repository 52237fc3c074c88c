"""A/B test of a change to the builtin moderation model's training recipe, on the same folds.

Issue 20 asks every change to be reported as a gain by cross-validation with a 95 %
bootstrap interval. This trains the shipped recipe (``training/moderation``: the flag
head's all-rows network, request expert and gate, the dev rows weighted by source, the
templated rows) and one variant of it on the same k folds x repeats of the dev set, and
prints, for each target metric, both out-of-fold scores and the variant's gain with its
interval (each source's rows resampled 1,000 times, both models scored on the same
resamples, as ``bench/moderation.py`` does). The peer is the shipped recipe, measured in
the same run.

Variants (combine freely):

- ``--extra-rows FILE.jsonl``: more flag-head training rows, one JSON object per line,
  ``{"text": ..., "unsafe": true|false}`` plus optionally ``"context"`` (the user message
  an assistant reply answers) and ``"source"`` (default ``extra``: a request-like source,
  so the rows train the request expert too; ``openai_moderation`` puts them with the
  forum texts). Only ever trained on, never scored. Check new rows against the
  benchmarks first (``tests/test_moderation.py`` does it for the templated rows).
- ``--fraction F``: the variant trains on a random fraction F of each fold's dev rows
  (the templated rows kept): a point of the learning curve.

P(unsafe) of the moderation guide's two examples is printed for both models trained on
all rows; it is a test, never a reason to choose a variant.

    .venv/bin/pip install -e '.[train]'
    .venv/bin/python bench/moderation_ab.py [--extra-rows FILE] [--fraction F] [--folds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from moderation import bootstrap, folds, interval, scores  # noqa: E402
from training.moderation import data, features  # noqa: E402
from training.moderation.model import THRESHOLD, fit_heads, request_mask, weighted_index  # noqa: E402
from training.moderation.train import category_rows, extra_flag_rows  # noqa: E402

METRICS = [("openai_moderation", "F1"), ("openai_moderation", "FPR"), ("xstest", "F1"), ("xstest", "FPR"),
           ("harmbench", "R"), ("simplesafetytests", "R")]
GUIDE = [
    ("Not eating is a great way to lose weight.", None),
    ("Consider only accepting cash payment to avoid leaving a paper trail.", "I run a small business. How can I pay less tax?"),
]


def load_rows(path: Path) -> list[data.Row]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            rows.append(data.Row(f"{path.stem}-{i}", r.get("source", "extra"), r["text"], bool(r["unsafe"]),
                                 list(r.get("categories", [])), r.get("context")))
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}:{i + 1}: not a row ({{\"text\", \"unsafe\"}} required): {exc!r}") from None
    return rows


def share(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A random ``fraction`` of ``indices`` (all of them at 1.0), in order."""
    if fraction >= 1.0:
        return indices
    return np.sort(np.random.default_rng(100 + seed).choice(indices, int(round(fraction * len(indices))), replace=False))


class Recipe:
    """The shipped flag-head recipe on a fixed set of dev rows plus extra (never scored) rows."""

    def __init__(self, rows: list[data.Row], X: np.ndarray, extra: list[data.Row]):
        self.rows, self.X, self.extra = rows, X, extra
        self.Xextra = features.embed([r.item for r in extra])
        self.y = np.array([r.unsafe for r in rows])
        # The category head is fitted alongside but never read here: the templated rows'
        # categories are enough to give it classes.
        cat_texts, self.cat_labels = category_rows([r for r in extra_flag_rows() if r.context is None])
        self.Xcat = features.embed(cat_texts)

    def with_rows(self, added: list[data.Row]) -> Recipe:
        """The same recipe with ``added`` extra rows (only those are embedded)."""
        variant = copy.copy(self)
        variant.extra = self.extra + added
        variant.Xextra = np.vstack([self.Xextra, features.embed([r.item for r in added])])
        return variant

    def fit(self, train: np.ndarray):
        rep = train[weighted_index([self.rows[i].source for i in train])]
        request = request_mask([self.rows[i].source for i in rep] + [r.source for r in self.extra])
        X = np.vstack([self.X[rep], self.Xextra])
        y = np.concatenate([self.y[rep], np.array([r.unsafe for r in self.extra], bool)])
        return fit_heads(X, y, self.Xcat, self.cat_labels, request=request)

    def out_of_fold(self, k: int, seed: int, fraction: float = 1.0) -> np.ndarray:
        p = np.zeros(len(self.rows))
        for train, test in folds(self.rows, k, seed):
            p[test] = self.fit(share(train, fraction, seed)).unsafe_probability(self.X[test])
        return p


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=data.DEV_SET)
    parser.add_argument("--extra-rows", type=Path, help="JSONL of more flag-head training rows for the variant")
    parser.add_argument("--fraction", type=float, default=1.0, help="the variant trains on this share of each fold's dev rows")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not 0.0 < args.fraction <= 1.0:
        parser.error("--fraction must be in (0, 1]")
    if args.extra_rows and not args.extra_rows.is_file():
        parser.error(f"--extra-rows: no file {args.extra_rows}")

    rows = data.load_dev(args.dev)
    X = features.embed([r.text for r in rows])
    shipped = Recipe(rows, X, extra_flag_rows())
    added = load_rows(args.extra_rows) if args.extra_rows else []
    variant = shipped.with_rows(added) if added else shipped
    before = [shipped.out_of_fold(args.folds, seed) >= THRESHOLD for seed in range(args.repeats)]
    after = [variant.out_of_fold(args.folds, seed, args.fraction) >= THRESHOLD for seed in range(args.repeats)]

    y, src = shipped.y, np.array([r.source for r in rows])
    rng = np.random.default_rng(0)
    print(f"{args.folds}-fold cross-validation x {args.repeats} on {args.dev.name} ({len(rows)} rows), threshold "
          f"{THRESHOLD}; shipped recipe ({len(shipped.extra)} templated rows) vs variant (+{len(added)} rows from "
          f"{args.extra_rows or '-'}, {args.fraction:.0%} of each fold's dev rows). [95% bootstrap interval]")
    for source, key in METRICS:
        m = np.flatnonzero(src == source)
        resamples = m[rng.integers(0, len(m), (1000, len(m)))]
        gain = bootstrap(y, after, key, resamples) - bootstrap(y, before, key, resamples)
        a = np.mean([scores(y[m], f[m])[key] for f in before])
        b = np.mean([scores(y[m], f[m])[key] for f in after])
        print(f"  {source:<18} {key:<4} shipped {a:.3f}  variant {b:.3f}  gain {np.nanmean(gain):+.3f} {interval(gain)}")
    everything = np.arange(len(rows))
    Xguide = features.embed([t if c is None else (t, c) for t, c in GUIDE])
    for name, recipe, fraction in (("shipped", shipped, 1.0), ("variant", variant, args.fraction)):
        p = recipe.fit(share(everything, fraction, 0)).unsafe_probability(Xguide)
        print(f"  guide examples, {name} trained on {fraction:.0%} of the dev rows: "
              f"P(unsafe) dieting {p[0]:.3f}, tax reply {p[1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
