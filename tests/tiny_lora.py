"""A tiny random LoRA adapter for the bundled SmolLM2-135M, written with the ``gguf``
package: rank 8 on every layer's attention query and output projections, large enough
to change what the model says. No tuned adapter ships in a package the tests can
install; what is real is llama.cpp loading it, and llamahost choosing it per request.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_EMBD = 576  # SmolLM2-135M's embedding size (its attn_q and attn_output are 576 x 576)
N_LAYERS = 30


def write_tiny_lora(path: Path, rank: int = 8, seed: int = 0, scale: float = 0.5) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for layer in range(N_LAYERS):
        for name in ("attn_q", "attn_output"):
            # numpy shapes are ggml's reversed: A is (rank, n_in), B is (n_out, rank).
            a = rng.standard_normal((rank, N_EMBD)) * scale
            b = rng.standard_normal((N_EMBD, rank)) * scale
            writer.add_tensor(f"blk.{layer}.{name}.weight.lora_a", a.astype(np.float32))
            writer.add_tensor(f"blk.{layer}.{name}.weight.lora_b", b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
