"""Training an upstream model: base weights in Hugging Face format from a local folder
(``hf_weights``), offline, giving a PEFT adapter (what vLLM loads) and no GGUF.

The folder is conftest's ``hf_folder`` (one per session): a tiny llama (two layers, random weights) with SmolLM2's tokenizer
and chat template, saved by transformers as any Hugging Face checkpoint is. Nothing is
downloaded (the trainer runs with HF_HUB_OFFLINE=1); a step takes well under a second.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llamahost.errors import InvalidRequest
from llamahost.finetune import missing_training_modules
from llamahost.finetune.journal import read_jsonl
from test_finetune_trainer import ROWS, _env, _write_jsonl

MISSING = missing_training_modules()
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"fine-tuning extra not installed (missing {', '.join(MISSING)}): pip install torch==2.13.0 && pip install -e '.[finetune]'",
)


def test_resolve_base_tells_a_folder_from_a_gguf(hf_folder: Path, tmp_path: Path) -> None:
    from llamahost.finetune.base_model import resolve_base

    assert resolve_base(str(hf_folder)).format == "hf" and resolve_base(str(hf_folder)).gguf is None
    assert resolve_base("bundled").format == "gguf"
    with pytest.raises(InvalidRequest) as info:
        resolve_base(str(tmp_path))  # a folder, but not a checkpoint
    assert info.value.param == "base_model" and "config.json" in info.value.message


def test_an_hf_folder_trains_offline_into_a_peft_adapter(hf_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = {
        "base_model": str(hf_folder),
        "training_file": str(_write_jsonl(tmp_path / "train.jsonl", ROWS)),
        "validation_file": str(_write_jsonl(tmp_path / "valid.jsonl", ROWS[:1])),
        "output_dir": str(out),
        "n_epochs": 2,
        "batch_size": 2,
        "lora_rank": 4,
        "lora_alpha": 8,
        "threads": 1,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = _env()
    env["HF_HUB_OFFLINE"] = "1"  # the trainer sets it too; a download attempt would fail loudly here
    run = subprocess.run(
        [sys.executable, "-m", "llamahost.finetune", "--spec", str(tmp_path / "spec.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "succeeded" and result["adapter_gguf"] is None and result["base_model"] == str(hf_folder)
    assert result["steps"] == 2 and result["trained_tokens"] > 0
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["peft_type"] == "LORA"
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not (out / "adapter.gguf").exists()
    assert [row["step"] for row in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    events = [e["message"] for e in read_jsonl(out / "events.jsonl")]
    assert not any("llama.cpp" in message for message in events)  # no GGUF tokenizer check for an HF base

    # The adapter is a PEFT folder that loads onto the base for inference (what vLLM does with it).
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(hf_folder)), str(out / "adapter"))
    assert model.peft_config["default"].r == 4
