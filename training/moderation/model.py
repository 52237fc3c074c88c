"""Fitting the builtin classifier's two heads (shared by train.py and bench/moderation.py).

The flag head: small one-hidden-layer networks (scikit-learn's MLPClassifier, strong
L2) from a few seeds, merged into one layer whose output averages their logits; the
category head: logistic regression. Both see standardised features, and the
standardisation is folded into the first layer's weights, so the server runs two
matrix products.
"""

from __future__ import annotations

import warnings

import numpy as np

from llamahost.safety.builtin import FlagNetwork, Heads, RequestExpert
from llamahost.safety.taxonomy import NAMES

# Chosen by 5-fold cross-validation on the dev set (MODEL_CARD.md lists what was tried).
FLAG_HIDDEN = 64
FLAG_ALPHA = 30.0  # L2 penalty: with 1,195 rows and 2,688 features anything weaker overfits
FLAG_SEEDS = 3
CATEGORY_C = 0.05
THRESHOLD = 0.5
# Dev rows of the sources that judge *requests* (XSTest's scary-sounding safe prompts and
# unsafe ones, HarmBench's and SimpleSafetyTests' harmful requests) appear this many times
# in the flag head's training set; the OpenAI rows and the templated rows once. The
# OpenAI rows (840 of 1,195, mostly long forum text) otherwise set the decision boundary
# for short requests too: counting the request rows twice raised XSTest F1 and harmful
# recall in 5-fold cross-validation without raising XSTest's false-positive rate
# (MODEL_CARD.md; 3 and 4 times cost OpenAI F1).
SOURCE_WEIGHTS = {"xstest": 2, "harmbench": 2, "simplesafetytests": 2}
# The flag head is a mixture of two networks: one trained on every row, one on the
# *request* rows alone (every source but the OpenAI moderation set's forum texts, plus
# the templated rows), weighted by a logistic gate (C below) trained to tell the two
# kinds of text apart. Cross-validated, the request expert raised HarmBench recall by
# about 0.06 without a significant loss elsewhere (MODEL_CARD.md, issue 20 fourth pass).
FORUM_SOURCES = {"openai_moderation"}
GATE_C = 0.01


def request_mask(sources: list[str] | np.ndarray) -> np.ndarray:
    """True for the rows the request expert trains on (and the gate calls request-like)."""
    return np.array([s not in FORUM_SOURCES for s in sources], bool)


def weighted_index(sources: list[str] | np.ndarray) -> np.ndarray:
    """Row indices with each row repeated ``SOURCE_WEIGHTS[source]`` times (else once)."""
    return np.repeat(np.arange(len(sources)), [SOURCE_WEIGHTS.get(s, 1) for s in sources])


def fit_lr(X: np.ndarray, y: np.ndarray, C: float):
    from sklearn.linear_model import LogisticRegression

    mu, sigma = X.mean(0), X.std(0) + 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = LogisticRegression(C=C, max_iter=5000).fit((X - mu) / sigma, y)
    w = (lr.coef_ / sigma).T  # (dim, classes or 1)
    b = lr.intercept_ - (lr.coef_ * (mu / sigma)).sum(1)
    return lr.classes_, w, b


def _fit_flag_mlp(X: np.ndarray, y: np.ndarray, hidden: int, alpha: float, seeds: int) -> FlagNetwork:
    from sklearn.neural_network import MLPClassifier

    mu, sigma = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sigma
    w1, b1, w2, b2 = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(seeds):
            net = MLPClassifier((hidden,), alpha=alpha, max_iter=300, random_state=seed).fit(Z, y)
            w1.append(net.coefs_[0] / sigma[:, None])
            b1.append(net.intercepts_[0] - (mu / sigma) @ net.coefs_[0])
            w2.append(net.coefs_[1][:, 0] / seeds)  # the merged output is the seeds' mean logit
            b2.append(float(net.intercepts_[1][0]))
    return FlagNetwork(
        np.hstack(w1).astype(np.float32), np.concatenate(b1).astype(np.float32), np.concatenate(w2).astype(np.float32),
        float(np.mean(b2)),
    )


def fit_heads(
    X: np.ndarray, unsafe: np.ndarray, Xcat: np.ndarray, categories: list[str],
    flag_hidden: int = FLAG_HIDDEN, flag_alpha: float = FLAG_ALPHA, flag_seeds: int = FLAG_SEEDS,
    category_c: float = CATEGORY_C, threshold: float = THRESHOLD, meta: dict | None = None,
    request: np.ndarray | None = None,
) -> Heads:
    """``request`` (one bool per row of ``X``, ``request_mask``): train the request expert
    and the gate too; without it the flag head is the all-rows network alone."""
    flag = _fit_flag_mlp(X, unsafe.astype(int), flag_hidden, flag_alpha, flag_seeds)
    expert = None
    if request is not None:
        network = _fit_flag_mlp(X[request], unsafe[request].astype(int), flag_hidden, flag_alpha, flag_seeds)
        # The gate sees each distinct row once (X repeats rows by SOURCE_WEIGHTS).
        _, first = np.unique(X, axis=0, return_index=True)
        _, gw, gb = fit_lr(X[first], request[first].astype(int), GATE_C)
        expert = RequestExpert(network, gw[:, 0].astype(np.float32), float(gb[0]))
    classes, cw, cb = fit_lr(Xcat, np.array([NAMES.index(c) for c in categories]), category_c)
    # Categories the training data never shows get a weight of zero and a very low bias.
    cat_w = np.zeros((X.shape[1], len(NAMES)), np.float32)
    cat_b = np.full(len(NAMES), -30.0, np.float32)
    if len(classes) == 2:  # sklearn's binary form: one column for the second class
        cw, cb = np.hstack([-cw / 2, cw / 2]), np.array([-cb[0] / 2, cb[0] / 2])
    cat_w[:, classes] = cw
    cat_b[classes] = cb
    return Heads(flag, threshold, cat_w, cat_b, meta or {}, expert)
