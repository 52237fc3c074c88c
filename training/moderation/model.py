"""Fitting the builtin classifier's two heads (shared by train.py and bench/moderation.py).

Logistic regression on standardised features; the standardisation is folded into the
weights so the server needs only a dot product.
"""

from __future__ import annotations

import warnings

import numpy as np

from llamahost.safety.builtin import Heads
from llamahost.safety.taxonomy import NAMES

FLAG_C = 0.01  # chosen by 5-fold cross-validation on the dev set (bench/moderation.py --sweep)
CATEGORY_C = 0.05
THRESHOLD = 0.5


def _fit_lr(X: np.ndarray, y: np.ndarray, C: float):
    from sklearn.linear_model import LogisticRegression

    mu, sigma = X.mean(0), X.std(0) + 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = LogisticRegression(C=C, max_iter=5000).fit((X - mu) / sigma, y)
    w = (lr.coef_ / sigma).T  # (dim, classes or 1)
    b = lr.intercept_ - (lr.coef_ * (mu / sigma)).sum(1)
    return lr.classes_, w, b


def fit_heads(
    X: np.ndarray, unsafe: np.ndarray, Xcat: np.ndarray, categories: list[str],
    flag_c: float = FLAG_C, category_c: float = CATEGORY_C, threshold: float = THRESHOLD, meta: dict | None = None,
) -> Heads:
    _, w, b = _fit_lr(X, unsafe.astype(int), flag_c)
    classes, cw, cb = _fit_lr(Xcat, np.array([NAMES.index(c) for c in categories]), category_c)
    # Categories the training data never shows get a weight of zero and a very low bias.
    cat_w = np.zeros((X.shape[1], len(NAMES)), np.float32)
    cat_b = np.full(len(NAMES), -30.0, np.float32)
    if len(classes) == 2:  # sklearn's binary form: one column for the second class
        cw, cb = np.hstack([-cw / 2, cw / 2]), np.array([-cb[0] / 2, cb[0] / 2])
    cat_w[:, classes] = cw
    cat_b[classes] = cb
    return Heads(w[:, 0].astype(np.float32), float(b[0]), threshold, cat_w, cat_b, meta or {})
