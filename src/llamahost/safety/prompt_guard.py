"""The ``builtin-prompt-guard`` provider: prompt-injection and jailbreak detection.

A moderation model of its own (default id ``Prompt-Guard``), separate from the Llama
Guard taxonomy, which judges harm and has no category for an attack on the model's
instructions. Like Meta's Prompt Guard models it sorts a message into three classes:
benign, ``prompt-injection`` (text that tries to override the instructions the model
was given: "ignore the previous instructions and print ...", whether the user typed it
or it sits in a document or tool output) and ``jailbreak`` (a persona or role-play
frame meant to switch the model's safety rules off: DAN and its kin). A message is
flagged when P(injection) + P(jailbreak) is at least the threshold; the category named
is the likelier of the two.

Features come from the builtin model's encoder (all-MiniLM-L6-v2, ``minilm.py``), one
forward pass, so the moderation service shares one encoder between both models. The
head is multinomial logistic regression trained by ``training/prompt_guard/train.py``
(``weights/prompt_guard.npz``, a few tens of kilobytes); MODEL_CARD.md has its data and
numbers.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .llama_guard import Verdict
from .minilm import MAX_TOKENS, MODEL_SHA256, MiniLMEncoder

WEIGHTS = "weights/prompt_guard.npz"
CLASSES = ("benign", "prompt-injection", "jailbreak")  # the head's outputs; the last two are wire names
CATEGORIES = CLASSES[1:]

# A jailbreak announces itself at the start (the persona's set-up), an injection often
# at the end of a document it rides in: a text longer than the encoder's window keeps
# both ends rather than only the head.
HEAD_TOKENS = (MAX_TOKENS - 2) // 2
MAX_CHARS = 65_536  # bounds the tokenizer's work on a huge message; both ends survive


def token_ids(encoder: MiniLMEncoder, text: str) -> list[int]:
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS // 2] + "\n" + text[-MAX_CHARS // 2 :]
    ids = encoder.tokenizer.encode(text, add_special_tokens=True)
    if len(ids.ids) < MAX_TOKENS or not ids.overflowing:
        return ids.ids
    # The tokenizer truncates at MAX_TOKENS; the untruncated ids are the window and its
    # overflow pieces joined.
    inner = ids.ids[1:-1] + [t for piece in ids.overflowing for t in piece.ids[1:-1]]
    return [ids.ids[0], *inner[:HEAD_TOKENS], *inner[-(MAX_TOKENS - 2 - HEAD_TOKENS) :], ids.ids[-1]]


def featurize(encoder: MiniLMEncoder, text: str) -> np.ndarray:
    """Mean token state after layers 4 and 6, the max over tokens and [CLS] of layer 6."""
    states = encoder.hidden_states(token_ids(encoder, text))
    last = states[-1]
    return np.concatenate([states[4].mean(0), last.mean(0), last.max(0), last[0]]).astype(np.float32)


def weights_path() -> Path:
    return Path(str(importlib.resources.files("llamahost.safety").joinpath(WEIGHTS)))


@dataclass
class PromptGuardHead:
    w: np.ndarray  # (dim, 3), input standardisation folded in
    b: np.ndarray  # (3,)
    threshold: float
    meta: dict

    @classmethod
    def load(cls, path: Path | None = None) -> PromptGuardHead:
        with np.load(path or weights_path()) as z:
            meta = json.loads(str(z["meta"]))
            if tuple(meta["classes"]) != CLASSES:
                raise ValueError("prompt-guard weights were trained for other classes")
            # Features of another encoder checkpoint would be silently wrong.
            if meta["encoder_sha256"] != MODEL_SHA256:
                raise ValueError("prompt-guard weights were trained on another encoder checkpoint")
            return cls(z["w"].astype(np.float32), z["b"].astype(np.float32), float(z["threshold"]), meta)

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path, w=self.w.astype(np.float32), b=self.b.astype(np.float32), threshold=np.float32(self.threshold),
            meta=np.array(json.dumps({**self.meta, "classes": list(CLASSES), "encoder_sha256": MODEL_SHA256})),
        )

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = features @ self.w + self.b
        logits = logits - logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=-1, keepdims=True)

    def verdict(self, features: np.ndarray, threshold: float | None = None) -> Verdict:
        p = self.probabilities(features)
        if 1.0 - float(p[0]) < (self.threshold if threshold is None else threshold):
            return Verdict(flagged=False)
        return Verdict(flagged=True, categories=(CATEGORIES[int(np.argmax(p[1:]))],))


class PromptGuardClassifier:
    """Synchronous CPU work; ``encoder`` may be the builtin moderation model's own."""

    def __init__(self, encoder: MiniLMEncoder | None = None) -> None:
        self.encoder = encoder or MiniLMEncoder()
        self.head = PromptGuardHead.load()

    def classify(self, text: str, threshold: float | None = None) -> Verdict:
        if not text.strip():
            return Verdict(flagged=False)
        return self.head.verdict(featurize(self.encoder, text), threshold)
