"""Sentence embeddings of training rows, cached on disk by text so that repeated
training and benchmark runs don't re-encode (the machine's CPU is shared)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from llamahost.safety.builtin import featurize
from llamahost.safety.minilm import MODEL_SHA256, MiniLMEncoder

DEFAULT_CACHE = Path(os.environ.get("LLAMAHOST_MODERATION_CACHE", "/tmp/llamahost-moderation-cache"))


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def embed(texts: list[str], cache_dir: Path = DEFAULT_CACHE, encoder: MiniLMEncoder | None = None) -> np.ndarray:
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Named after the encoder file: features of another checkpoint must not be reused.
    cache_file = cache_dir / f"minilm-{MODEL_SHA256[:12]}.npz"
    cache: dict[str, np.ndarray] = dict(np.load(cache_file)) if cache_file.exists() else {}
    missing = [t for t in dict.fromkeys(texts) if _key(t) not in cache]
    if missing:
        encoder = encoder or MiniLMEncoder()
        for i, text in enumerate(missing):
            cache[_key(text)] = featurize(encoder, text)
            if i % 200 == 199:
                print(f"  embedded {i + 1}/{len(missing)}", flush=True)
        np.savez(cache_file, **cache)
    return np.stack([cache[_key(t)] for t in texts])
