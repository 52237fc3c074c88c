"""Features of training rows, cached on disk by text so that repeated training and
benchmark runs don't re-encode (the machine's CPU is shared)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from llamahost.safety.builtin import CONTEXT_TOKENS, HEAD_TOKENS, TAIL_TOKENS, featurize
from llamahost.safety.minilm import MODEL_SHA256, MiniLMEncoder

DEFAULT_CACHE = Path(os.environ.get("LLAMAHOST_MODERATION_CACHE", "/tmp/llamahost-moderation-cache"))

# A judged text, or (judged text, context) for an assistant reply judged with its question.
Item = str | tuple[str, str | None]


def _split(item: Item) -> tuple[str, str | None]:
    return (item, None) if isinstance(item, str) else item


def _key(item: Item) -> str:
    text, context = _split(item)
    raw = text if context is None else f"{context}\x00{CONTEXT_TOKENS}\x00{text}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:24]


def embed(items: list[Item], cache_dir: Path = DEFAULT_CACHE, encoder: MiniLMEncoder | None = None) -> np.ndarray:
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Named after the encoder file and the cut of long texts: features of another
    # checkpoint, or of texts cut another way, must not be reused.
    cache_file = cache_dir / f"minilm-{MODEL_SHA256[:12]}-ht{HEAD_TOKENS}-{TAIL_TOKENS}.npz"
    cache: dict[str, np.ndarray] = dict(np.load(cache_file)) if cache_file.exists() else {}
    missing = list({_key(i): i for i in items if _key(i) not in cache}.values())
    if missing:
        encoder = encoder or MiniLMEncoder()
        for n, item in enumerate(missing):
            cache[_key(item)] = featurize(encoder, *_split(item))
            if n % 200 == 199:
                print(f"  embedded {n + 1}/{len(missing)}", flush=True)
        np.savez(cache_file, **cache)
    if not items:
        return np.zeros((0, 0), np.float32)
    return np.stack([cache[_key(i)] for i in items])
