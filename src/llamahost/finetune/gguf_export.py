"""PEFT LoRA → a llama.cpp LoRA GGUF, and a base GGUF → its F32 twin.

Written with the `gguf` package, the same library llama.cpp's convert_lora_to_gguf.py uses;
by hand only the little that script does for an adapter: tensor names, the q/k permutation
and the adapter metadata (the script itself is not shipped in any installable package).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import InvalidRequest
from .base_model import gguf_reader

# Architectures whose q/k projections llama.cpp stores permuted (convert_hf_to_gguf.py's
# LlamaModel.permute) and transformers un-permutes when it loads the GGUF (its
# LlamaTensorProcessor): an adapter trained on the un-permuted weights needs lora_b of
# q_proj/k_proj permuted the same way, since the rows of B·A are the rows of B.
PERMUTED_QK = {"llama"}


@dataclass
class BaseShape:
    arch: str
    n_blocks: int
    n_head: int
    n_kv_head: int


def base_shape(base_gguf: Path) -> BaseShape:
    reader = gguf_reader(base_gguf)  # parsed once per process: the trainer exports at every checkpoint

    def field(key: str) -> Any:
        f = reader.get_field(key)
        if f is None:
            raise InvalidRequest(f"{base_gguf.name} lacks {key}", param="base_model")
        return f.contents()

    arch = str(field(gguf.Keys.General.ARCHITECTURE))
    n_head = int(field(gguf.Keys.Attention.HEAD_COUNT.format(arch=arch)))
    kv = reader.get_field(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch))
    return BaseShape(arch, int(field(gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch))), n_head, int(kv.contents()) if kv else n_head)


def permute_rows(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's LlamaModel.permute, on the output rows: each head's rotary halves interleaved."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def export_lora_gguf(peft_dir: Path, base_gguf: Path, out_path: Path) -> Path:
    from safetensors.numpy import load_file

    config = json.loads((peft_dir / "adapter_config.json").read_text())
    if config.get("use_rslora") or config.get("use_dora") or config.get("fan_in_fan_out"):
        # llama.cpp scales every adapter by alpha/rank over plain B·A; anything else would
        # serve a different model than the one trained.
        raise InvalidRequest("only plain LoRA adapters (no rsLoRA, DoRA, fan_in_fan_out) can be exported for llama.cpp")
    shape = base_shape(base_gguf)
    arch = next((a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == shape.arch), None)
    if arch is None:
        raise InvalidRequest(f"the gguf package does not know architecture {shape.arch!r}", param="base_model")
    names = gguf.get_tensor_name_map(arch, shape.n_blocks)
    tensors = load_file(str(peft_dir / "adapter_model.safetensors"))

    writer = gguf.GGUFWriter(str(out_path), arch=shape.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for key in sorted(tensors):
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                raise InvalidRequest(f"adapter tensor {key} is not a LoRA A/B matrix; only LoRA layers can be exported")
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        gguf_name = names.get_name(module)
        if gguf_name is None:
            raise InvalidRequest(f"no llama.cpp tensor for adapter layer {module}")
        lora_a = tensors[key].astype(np.float32)
        lora_b = tensors[key.replace(".lora_A.", ".lora_B.")].astype(np.float32)
        if shape.arch in PERMUTED_QK and module.endswith(".q_proj"):
            lora_b = permute_rows(lora_b, shape.n_head, shape.n_head)
        elif shape.arch in PERMUTED_QK and module.endswith(".k_proj"):
            lora_b = permute_rows(lora_b, shape.n_head, shape.n_kv_head)
        # Torch's (rank, in) and (out, rank) are what llama.cpp expects: GGUF reverses the
        # dims, so A is ne=[in, rank] against the base's ne=[in, out].
        writer.add_tensor(f"{gguf_name}.weight.lora_a", np.ascontiguousarray(lora_a))
        writer.add_tensor(f"{gguf_name}.weight.lora_b", np.ascontiguousarray(lora_b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def write_f32_base(base_gguf: Path, out_path: Path) -> Path:
    """The base GGUF with every tensor dequantized to F32, metadata unchanged: the weights
    transformers trains against, served by llama.cpp without quantization noise."""
    reader = gguf_reader(base_gguf)
    arch = str(reader.get_field(gguf.Keys.General.ARCHITECTURE).contents())  # type: ignore[union-attr]
    writer = gguf.GGUFWriter(str(out_path), arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
