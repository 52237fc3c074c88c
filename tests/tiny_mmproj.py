"""The smallest real vision projector llama.cpp loads: a randomly initialised
SigLIP-style encoder with a Gemma 3 projector head, written with the ``gguf`` package.

No vision model ships in a package the tests can install, so the embedded multimodal
path is tested with this projector on the bundled SmolLM2-135M (``text_embd`` = its
embedding size, 576, which llama.cpp checks). The weights are random, so what the model
"sees" is noise; what is real is everything llamahost does: loading the projector with
llama.cpp's mtmd, preprocessing and encoding images, feeding their embeddings into the
KV cache, counting their tokens, and generating after them. A 64x64 input in 16-pixel
patches, pooled 2x2, makes each image 4 tokens between <start_of_image> and
<end_of_image>.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_TOKENS = 4


def write_tiny_mmproj(path: Path, text_embd: int = 576, seed: int = 0) -> Path:
    import gguf

    n_embd, n_ff, image_size, patch, merge = 32, 64, 64, 16, 2
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_string("clip.projector_type", "gemma3")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    v = "clip.vision."
    writer.add_uint32(v + "embedding_length", n_embd)
    writer.add_uint32(v + "feed_forward_length", n_ff)
    writer.add_uint32(v + "block_count", 1)
    writer.add_uint32(v + "projection_dim", text_embd)
    writer.add_uint32(v + "attention.head_count", 2)
    writer.add_float32(v + "attention.layer_norm_epsilon", 1e-6)
    writer.add_uint32(v + "image_size", image_size)
    writer.add_uint32(v + "patch_size", patch)
    writer.add_array(v + "image_mean", [0.5, 0.5, 0.5])
    writer.add_array(v + "image_std", [0.5, 0.5, 0.5])
    writer.add_uint32(v + "projector.scale_factor", merge)

    def random(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    def ones(name: str, size: int) -> None:
        writer.add_tensor(name, np.ones(size, np.float32))

    # numpy shapes are ggml's dimensions reversed.
    random("v.patch_embd.weight", n_embd, 3, patch, patch)
    random("v.patch_embd.bias", n_embd)
    random("v.position_embd.weight", (image_size // patch) ** 2, n_embd)
    for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
        random(f"v.blk.0.{name}.weight", n_embd, n_embd)
        random(f"v.blk.0.{name}.bias", n_embd)
    for name in ("ln1", "ln2"):
        ones(f"v.blk.0.{name}.weight", n_embd)
        random(f"v.blk.0.{name}.bias", n_embd)
    random("v.blk.0.ffn_up.weight", n_ff, n_embd)
    random("v.blk.0.ffn_up.bias", n_ff)
    random("v.blk.0.ffn_down.weight", n_embd, n_ff)
    random("v.blk.0.ffn_down.bias", n_embd)
    ones("v.post_ln.weight", n_embd)
    random("v.post_ln.bias", n_embd)
    ones("mm.soft_emb_norm.weight", n_embd)
    random("mm.input_projection.weight", n_embd, text_embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
