"""An example trainer for `[fine_tuning] backend = "command"`: TRL's supervised fine-tuning
(SFTTrainer with a PEFT LoRA), on every GPU of the host through `accelerate launch`, writing
the output layout llamahost reads (README, "Fine-tuning on a cluster").

    [fine_tuning]
    backend = "command"
    command = ["accelerate", "launch", "--multi_gpu", "--mixed_precision", "bf16",
               "deploy/finetune/trl_sft.py", "--spec", "{spec}"]

Needs trl, accelerate, peft, datasets and a CUDA torch on the host; an example, not run by
CI (run by hand with trl 1.16.0 on a CPU, where it trains in fp32). The base must be a Hugging Face folder (an upstream model's `hf_weights`); no GGUF
adapter is written, so the tuned model is served by the upstream (vLLM), not llama.cpp.
Unlike llamahost's own trainer, the loss covers whole conversations unless the model's
chat template marks assistant turns with {% generation %} (then pass --assistant-only-loss).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

BASE_LEARNING_RATE = 3e-4  # llamahost's: the rate is this times learning_rate_multiplier


class LlamahostLayout(TrainerCallback):
    """events.jsonl, checkpoints/epoch-NNNN/ (renamed into place whole) and the cancel file."""

    def __init__(self, out: Path, cancel_file: Path) -> None:
        self.out = out
        self.cancel_file = cancel_file
        self.valid_loss: float | None = None
        self.losses: list[float] = []
        self.cancelled = False

    def event(self, message: str, kind: str = "message", data: dict | None = None, level: str = "info") -> None:
        record = {"created_at": int(time.time()), "level": level, "message": message, "type": kind, "data": data or {}}
        with (self.out / "events.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if self.cancel_file.exists():
            self.cancelled, control.should_training_stop = True, True
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.losses.append(logs["loss"])
        row = {"step": state.global_step, "epoch": math.ceil(state.epoch or 1), "train_loss": logs["loss"], "valid_loss": None}
        self.event(f"Step {state.global_step}: training loss={logs['loss']:.4f}", "metrics", row)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
        self.valid_loss = (metrics or {}).get("eval_loss")

    def on_save(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if not state.is_world_process_zero:
            return
        epoch = round(state.epoch or 1)
        root = self.out / "checkpoints"
        tmp, final = root / f".tmp-epoch-{epoch:04d}", root / f"epoch-{epoch:04d}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp / "adapter"))
        info = {"epoch": epoch, "step": state.global_step, "trained_tokens": int(state.num_input_tokens_seen or 0),
                "train_loss": sum(self.losses) / max(len(self.losses), 1), "valid_loss": self.valid_loss}
        (tmp / "checkpoint.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        self.losses = []
        self.event(f"Checkpoint saved: epoch {epoch}, step {state.global_step}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--assistant-only-loss", action="store_true")
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    layout = LlamahostLayout(out, Path(spec.get("cancel_file") or out / "cancel"))
    train = load_dataset("json", data_files=spec["training_file"], split="train")
    valid = load_dataset("json", data_files=spec["validation_file"], split="train") if spec.get("validation_file") else None
    config = SFTConfig(
        output_dir=str(out / "trl"), num_train_epochs=spec.get("n_epochs", 3),
        per_device_train_batch_size=spec.get("batch_size", 4),
        learning_rate=BASE_LEARNING_RATE * spec.get("learning_rate_multiplier", 1.0), lr_scheduler_type="linear",
        seed=spec.get("seed", 0), max_length=spec.get("max_seq_len", 2048), logging_steps=1,
        eval_strategy="epoch" if valid is not None else "no", save_strategy="epoch", save_only_model=True,
        include_num_input_tokens_seen=True, assistant_only_loss=args.assistant_only_loss, report_to=[],
        max_steps=spec.get("max_steps") or -1,
        # bf16 on GPUs that have it; a CPU (a smoke run) trains in fp32.
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), use_cpu=not torch.cuda.is_available(),
    )
    lora = LoraConfig(r=spec.get("lora_rank", 8), lora_alpha=spec.get("lora_alpha", 16),
                      lora_dropout=spec.get("lora_dropout", 0.0), target_modules=spec.get("target_modules"),
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=spec["base_model"], args=config, train_dataset=train, eval_dataset=valid,
                         peft_config=lora, callbacks=[layout])
    started = time.time()
    try:
        trainer.train()
    except Exception as exc:  # the job fails with the cause, as llamahost's trainer reports it
        if trainer.is_world_process_zero():
            layout.event(f"training failed: {exc!r}", level="error")
            (out / "result.json").write_text(json.dumps({"status": "failed", "error": {"message": str(exc), "param": None}}))
        return 1
    if not trainer.is_world_process_zero():
        return 3 if layout.cancelled else 0
    if layout.cancelled:
        layout.event("Fine-tuning job cancelled")
        (out / "result.json").write_text(json.dumps({"status": "cancelled"}))
        return 3
    final = max((out / "checkpoints").glob("epoch-*"))
    shutil.copytree(final / "adapter", out / "adapter", dirs_exist_ok=True)
    info = json.loads((final / "checkpoint.json").read_text())
    result = {"status": "succeeded", "trained_tokens": info["trained_tokens"], "steps": info["step"],
              "epochs": info["epoch"], "adapter": "adapter", "adapter_gguf": None, "seconds": round(time.time() - started, 1)}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    layout.event("The job has successfully completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
