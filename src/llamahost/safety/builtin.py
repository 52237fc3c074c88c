"""The ``builtin`` moderation provider: sentence-encoder features + trained heads.

Features come from one all-MiniLM-L6-v2 forward pass over the judged message
(``minilm.py``): the mean of the token states after layers 3, 4, 5 and 6, the max
over tokens of the last layer (with and without the [CLS]/[SEP] positions) and the
[CLS] state. Pooling several layers and the max kept more of what a single mean
embedding averages away (cross-validated F1 rose by about 0.04 on both the OpenAI
moderation and XSTest rows; see MODEL_CARD.md).
Two heads trained by ``training/moderation/train.py`` ship as package data
(``weights/builtin.npz``, about a megabyte):

- a *flag* head, one hidden ReLU layer (three small networks trained from different
  seeds, their logits averaged: one layer of their stacked units): P(unsafe) >=
  threshold flags the message. It beat logistic regression on the same features in
  every cross-validated source (MODEL_CARD.md). It is a mixture of two such
  networks: one trained on every row, one on the request rows alone (XSTest,
  HarmBench, SimpleSafetyTests and the templated rows, without the long OpenAI forum
  texts), weighted by a logistic *gate* that tells a request-like message from forum
  text: P = g * P_request + (1 - g) * P_all. The request expert raised cross-validated
  HarmBench recall by about 0.06 (MODEL_CARD.md);
- a softmax *category* head over the 14 Llama Guard 3 categories, consulted only for
  flagged messages; it names the most likely category, plus any other within
  ``CATEGORY_MARGIN`` of it.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .llama_guard import Verdict
from .minilm import MAX_TOKENS, MiniLMEncoder
from .taxonomy import NAMES

WEIGHTS = "weights/builtin.npz"
CATEGORY_MARGIN = 0.5  # a second category is named if its probability is >= half the top one's


# The encoder reads at most 256 tokens; cutting the text first bounds the tokenizer's
# work on a huge message (a token is rarely more than a few characters).
MAX_CHARS = 16_384
# A longer message is judged on its first HEAD_TOKENS and last TAIL_TOKENS word pieces
# (HEAD_TOKENS + TAIL_TOKENS + [CLS] + [SEP] = 256); of a message over MAX_CHARS characters,
# on its first and last MAX_CHARS / 2.
HEAD_TOKENS = 190
TAIL_TOKENS = 64


# An assistant reply is judged together with the user message it answers ("use cash to
# avoid a paper trail" abets a crime only as an answer to "how do I pay less tax?"). The
# question's last CONTEXT_TOKENS tokens come first, then [SEP], then the reply: the tail
# of a question is where its request usually sits, and the reply keeps the rest.
CONTEXT_TOKENS = 64


def judged_parts(messages: Sequence[Any]) -> tuple[str, str | None]:
    """(text judged, its context) for a conversation of objects with ``role`` and
    ``content``: the last message; for an assistant reply, the nearest earlier user
    message as context. A user message is judged alone, as Llama Guard's prompt
    classification does (an earlier refused request does not taint a harmless follow-up)."""
    last = messages[-1]
    if last.role != "assistant":
        return last.content, None
    for message in reversed(messages[:-1]):
        if message.role == "user" and message.content.strip():
            return last.content, message.content
    return last.content, None


def token_ids(encoder: MiniLMEncoder, text: str, context: str | None = None) -> list[int]:
    if context is None or not context.strip():
        # A message longer than the encoder's 256 tokens keeps its first HEAD_TOKENS and
        # its last TAIL_TOKENS word pieces: a pasted passage (code, an article, a profile)
        # often comes first and the request about it last.
        if len(text) > MAX_CHARS:
            text = text[: MAX_CHARS // 2] + "\n" + text[-MAX_CHARS // 2 :]
        ids = encoder.token_ids(text, truncate=False)
        if len(ids) <= MAX_TOKENS:
            return ids
        inner = ids[1:-1]
        return [ids[0], *inner[:HEAD_TOKENS], *inner[-TAIL_TOKENS:], ids[-1]]
    ids = encoder.token_ids(text[:MAX_CHARS])
    # The context's own [CLS] is kept and its [SEP] separates it from the reply, whose
    # [CLS] is dropped; the reply is cut so the whole stays within MAX_TOKENS.
    ctx = encoder.token_ids(context[-MAX_CHARS:])[1:-1][-CONTEXT_TOKENS:]
    reply = ids[1:-1][: MAX_TOKENS - 3 - len(ctx)]
    return [ids[0], *ctx, ids[-1], *reply, ids[-1]]


def featurize(encoder: MiniLMEncoder, text: str, context: str | None = None) -> np.ndarray:
    ids = token_ids(encoder, text, context)
    states = encoder.hidden_states(ids)
    last = states[-1]
    inner = last[1:-1] if len(ids) > 2 else last
    parts = [states[3].mean(0), states[4].mean(0), states[5].mean(0), last.mean(0), last.max(0), last[0], inner.max(0)]
    return np.concatenate(parts).astype(np.float32)


def weights_path() -> Path:
    return Path(str(importlib.resources.files("llamahost.safety").joinpath(WEIGHTS)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class FlagNetwork:
    """One hidden ReLU layer (input standardisation folded in) giving P(unsafe); stored
    under ``prefix`` in the weights file."""

    w1: np.ndarray  # (dim, hidden)
    b1: np.ndarray  # (hidden,)
    w2: np.ndarray  # (hidden,)
    b2: float

    def probability(self, features: np.ndarray) -> np.ndarray:
        return _sigmoid(np.maximum(features @ self.w1 + self.b1, 0.0) @ self.w2 + self.b2)

    @classmethod
    def from_arrays(cls, z: Any, prefix: str) -> FlagNetwork:
        return cls(z[f"{prefix}_w1"].astype(np.float32), z[f"{prefix}_b1"], z[f"{prefix}_w2"], float(z[f"{prefix}_b2"]))

    def arrays(self, prefix: str) -> dict[str, Any]:
        # float16 halves the file; the probabilities it gives differ by < 1e-3.
        return {
            f"{prefix}_w1": self.w1.astype(np.float16), f"{prefix}_b1": self.b1.astype(np.float32),
            f"{prefix}_w2": self.w2.astype(np.float32), f"{prefix}_b2": np.float32(self.b2),
        }


@dataclass
class RequestExpert:
    """The mixture's second network, trained on request rows alone, and the logistic gate
    (``gate_w`` (dim,), ``gate_b``) that gives it its weight for a message."""

    network: FlagNetwork
    gate_w: np.ndarray
    gate_b: float

    def mix(self, features: np.ndarray, p_all: np.ndarray) -> np.ndarray:
        g = _sigmoid(features @ self.gate_w + self.gate_b)
        return g * self.network.probability(features) + (1.0 - g) * p_all


@dataclass
class Heads:
    flag: FlagNetwork  # trained on every row
    threshold: float
    cat_w: np.ndarray  # (dim, 14)
    cat_b: np.ndarray  # (14,)
    meta: dict
    # Absent in weights trained before the mixture, which then run the flag network alone.
    request: RequestExpert | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> Heads:
        with np.load(path or weights_path()) as z:
            meta = json.loads(str(z["meta"]))
            if tuple(meta["categories"]) != NAMES:
                raise ValueError("moderation weights were trained for a different category list")
            request = None
            if "gate_w" in z:
                request = RequestExpert(FlagNetwork.from_arrays(z, "req"), z["gate_w"], float(z["gate_b"]))
            return cls(
                FlagNetwork.from_arrays(z, "flag"), float(z["threshold"]), z["cat_w"], z["cat_b"], meta, request
            )

    def save(self, path: Path) -> None:
        mixture: dict[str, Any] = {}
        if self.request is not None:
            mixture = {
                **self.request.network.arrays("req"),
                "gate_w": self.request.gate_w.astype(np.float32), "gate_b": np.float32(self.request.gate_b),
            }
        np.savez_compressed(
            path, **self.flag.arrays("flag"), **mixture,
            threshold=np.float32(self.threshold), cat_w=self.cat_w.astype(np.float32),
            cat_b=self.cat_b.astype(np.float32), meta=np.array(json.dumps({**self.meta, "categories": list(NAMES)})),
        )

    def unsafe_probability(self, features: np.ndarray) -> np.ndarray:
        p_all = self.flag.probability(features)
        return p_all if self.request is None else self.request.mix(features, p_all)

    def category_probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = features @ self.cat_w + self.cat_b
        logits = logits - logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=-1, keepdims=True)

    def verdict(self, features: np.ndarray, threshold: float | None = None) -> Verdict:
        p = float(self.unsafe_probability(features))
        if p < (self.threshold if threshold is None else threshold):
            return Verdict(flagged=False)
        probs = self.category_probabilities(features)
        order = np.argsort(-probs)
        top = probs[order[0]]
        names = tuple(NAMES[i] for i in order if probs[i] >= top * CATEGORY_MARGIN)
        return Verdict(flagged=True, categories=names)


class BuiltinClassifier:
    """Loads the encoder and heads once; ``classify`` is synchronous CPU work."""

    def __init__(self) -> None:
        self.encoder = MiniLMEncoder()
        self.heads = Heads.load()

    def classify(self, text: str, threshold: float | None = None, context: str | None = None) -> Verdict:
        return self.heads.verdict(featurize(self.encoder, text, context), threshold)

    def classify_messages(self, messages: Sequence[Any], threshold: float | None = None) -> Verdict:
        text, context = judged_parts(messages)
        return self.classify(text, threshold, context)
