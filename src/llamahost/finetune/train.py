"""The training loop: LoRA on the dequantized GGUF base, checkpoint per epoch, resumable.

A plain torch loop rather than transformers' Trainer: the run must stop within seconds on a
cancel, resume from its own checkpoint format after a kill, and report to JSONL files;
Trainer's callbacks and checkpoint layout would be bent to each of these.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import APIError, InvalidRequest
from .deps import require_training_deps

# torch's OpenMP workers spin at each barrier by default; on a CPU shared with serving (or
# other jobs) that spinning is what made 2-thread runs crawl in bench/finetune.py. Set
# before torch loads its OpenMP runtime; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Importing the trainer without the `finetune` extra says how to install it, before any
# ImportError from deep inside transformers could.
require_training_deps()

from . import parity  # noqa: E402
from .base_model import BaseWeights, load_model, load_tokenizer, resolve_base  # noqa: E402
from .cancel import Cancelled, CancelWatch  # noqa: E402
from .dataset import read_examples  # noqa: E402
from .gguf_export import export_lora_gguf  # noqa: E402
from .journal import Journal  # noqa: E402
from .render import IGNORE, Rendered, render  # noqa: E402
from .spec import EXIT_CANCELLED, TrainingSpec  # noqa: E402

CHECKPOINTS = "checkpoints"
ADAPTER_DIR = "adapter"  # the PEFT folder
ADAPTER_GGUF = "adapter.gguf"  # the same adapter for llama.cpp
STATE = "state.pt"
CHECKPOINT_INFO = "checkpoint.json"
# Rendered examples whose token ids are compared with llama.cpp's before training starts.
PARITY_SAMPLE = 16


@dataclass
class Checkpoint:
    path: Path
    epoch: int
    step: int
    trained_tokens: int


def latest_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint: directories are renamed into place only when whole."""
    found = []
    for info in (out_dir / CHECKPOINTS).glob(f"epoch-*/{CHECKPOINT_INFO}"):
        data = json.loads(info.read_text())
        found.append(Checkpoint(info.parent, data["epoch"], data["step"], data["trained_tokens"]))
    return max(found, key=lambda c: c.epoch, default=None)


def run(spec: TrainingSpec) -> int:
    """Runs the job; returns the process exit status (0, 1, or EXIT_CANCELLED)."""
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(spec.output_dir)
    assert spec.cancel_file is not None
    started = time.time()

    def record_cancel() -> None:
        journal.event("Fine-tuning job cancelled")
        journal.result({"status": "cancelled", "seconds": round(time.time() - started, 1)})

    watch = CancelWatch(spec.cancel_file, record_cancel, EXIT_CANCELLED)
    try:
        with watch:
            summary = _train(spec, journal, watch)
    except Cancelled:
        watch.finish()
        return EXIT_CANCELLED
    except APIError as exc:
        journal.event(exc.message, level="error")
        journal.result({"status": "failed", "error": {"message": exc.message, "param": exc.param}})
        return 1
    except Exception as exc:  # a trainer bug or an OOM: the job fails with its cause recorded
        journal.event(f"training failed: {exc!r}", level="error", data={"traceback": traceback.format_exc()})
        journal.result({"status": "failed", "error": {"message": f"training failed: {exc}", "param": None}})
        return 1
    summary["seconds"] = round(time.time() - started, 1)
    journal.result({"status": "succeeded", **summary})
    journal.event("The job has successfully completed")
    return 0


def _render_all(spec: TrainingSpec, tokenizer: Any, path: Path, param: str) -> list[Rendered]:
    rendered = []
    for example in read_examples(path, param):
        try:
            rendered.append(render(tokenizer, example, spec.max_seq_len))
        except InvalidRequest as exc:
            raise InvalidRequest(exc.message, param=param) from None
    return rendered


def _check_tokenizer(tokenizer: Any, gguf: Path, rendered: list[Rendered]) -> None:
    mismatches = parity.compare(tokenizer, gguf, [r.text for r in rendered[:PARITY_SAMPLE]])
    if mismatches:
        first = mismatches[0]
        raise InvalidRequest(
            f"the tokenizer transformers builds from {gguf.name} disagrees with llama.cpp's "
            f"({len(mismatches)} of {min(len(rendered), PARITY_SAMPLE)} examples); an adapter trained on it "
            f"would not fit the served model. First difference in: {first.text[:80]!r}",
            param="base_model",
        )


def _batches(torch: Any, rendered: list[Rendered], order: list[int], batch_size: int, pad_id: int) -> list[dict[str, Any]]:
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [rendered[i] for i in order[start : start + batch_size]]
        width = max(len(r.input_ids) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, r in enumerate(chunk):
            n = len(r.input_ids)
            ids[row, :n] = torch.tensor(r.input_ids)
            labels[row, :n] = torch.tensor(r.labels)
            mask[row, :n] = 1
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels, "tokens": int(mask.sum())})
    return batches


def _predicted(labels: Any) -> int:
    # The model predicts token t+1 from position t: the first label never counts.
    return int((labels[:, 1:] != IGNORE).sum())


def _validation_loss(torch: Any, model: Any, batches: list[dict[str, Any]]) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            n = _predicted(batch["labels"])
            total += float(out.loss) * n
            count += n
    model.train()
    return total / max(count, 1)


def _train(spec: TrainingSpec, journal: Journal, watch: CancelWatch) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    base = resolve_base(spec.base_model)
    gguf = base.gguf
    journal.event(f"Validating training file: {spec.training_file.name}")
    tokenizer = load_tokenizer(base)
    train_set = _render_all(spec, tokenizer, spec.training_file, "training_file")
    valid_set = _render_all(spec, tokenizer, spec.validation_file, "validation_file") if spec.validation_file else []
    if gguf is not None:  # served by llama.cpp: its tokenizer must agree; an upstream serves the folder's own
        _check_tokenizer(tokenizer, gguf, train_set + valid_set)
    journal.event(
        f"{len(train_set)} training examples ({sum(len(r.input_ids) for r in train_set)} tokens, "
        f"{sum(r.trained_tokens for r in train_set)} in assistant turns)"
        + ("; tokenizer matches llama.cpp" if gguf is not None else "")
    )

    model = load_model(base)
    model = get_peft_model(
        model,
        LoraConfig(
            r=spec.lora_rank,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=spec.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate, weight_decay=0.0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    steps_per_epoch = math.ceil(len(train_set) / spec.batch_size)
    total_steps = steps_per_epoch * spec.n_epochs
    last_step = min(total_steps, spec.max_steps or total_steps)
    step, start_epoch, trained_tokens = 0, 0, 0

    checkpoint = latest_checkpoint(spec.output_dir)
    if checkpoint is not None:
        set_peft_model_state_dict(model, load_file(str(checkpoint.path / ADAPTER_DIR / "adapter_model.safetensors")))
        state = torch.load(checkpoint.path / STATE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        step, start_epoch, trained_tokens = checkpoint.step, checkpoint.epoch, checkpoint.trained_tokens
        journal.forget_metrics_after(step)
        journal.event(f"Resumed from the checkpoint of epoch {checkpoint.epoch} (step {step})")
    else:
        journal.event(f"Fine-tuning job started: {spec.n_epochs} epochs of {steps_per_epoch} steps")
    valid_batches = _batches(torch, valid_set, list(range(len(valid_set))), spec.batch_size, pad_id)

    for epoch in range(start_epoch, spec.n_epochs):
        if step >= last_step:
            break
        # The order depends on (seed, epoch) only, so a resumed epoch sees what the lost one did.
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(spec.seed * 1009 + epoch)).tolist()
        losses: list[float] = []
        batches = _batches(torch, train_set, order, spec.batch_size, pad_id)
        for i, batch in enumerate(batches):
            watch.check()
            # Linear decay to zero over the whole run, a function of the step alone so a
            # resumed run continues the same schedule without saved scheduler state.
            for group in optimizer.param_groups:
                group["lr"] = spec.learning_rate * (1 - step / total_steps)
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            trained_tokens += batch["tokens"]
            losses.append(float(out.loss.detach()))
            epoch_done = i == len(batches) - 1
            valid_loss = _validation_loss(torch, model, valid_batches) if (epoch_done and valid_batches) else None
            row = {"step": step, "epoch": epoch + 1, "train_loss": round(losses[-1], 6), "valid_loss": valid_loss}
            with watch.critical():
                journal.metrics(row)
            if step >= last_step:
                break
        if step % steps_per_epoch == 0 or step >= last_step:
            with watch.critical():
                _save_checkpoint(spec, base, model, optimizer, epoch + 1, step, trained_tokens, losses, valid_loss)
            journal.event(f"Checkpoint saved: epoch {epoch + 1}, step {step}")

    final = latest_checkpoint(spec.output_dir)
    if final is None:  # a resumed run that had nothing left to do still has its checkpoint
        raise InvalidRequest("no checkpoint was written")
    with watch.critical():
        for name in (ADAPTER_DIR, ADAPTER_GGUF) if gguf is not None else (ADAPTER_DIR,):
            target = spec.output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            (shutil.copytree if (final.path / name).is_dir() else shutil.copy2)(final.path / name, target)
    return {
        "trained_tokens": final.trained_tokens,
        "steps": final.step,
        "epochs": final.epoch,
        "adapter": ADAPTER_DIR,
        # Only a GGUF base gets a llama.cpp adapter; an upstream (vLLM) loads the PEFT folder.
        "adapter_gguf": ADAPTER_GGUF if gguf is not None else None,
        "base_model": str(base.path),
    }


def _save_checkpoint(
    spec: TrainingSpec,
    base: BaseWeights,
    model: Any,
    optimizer: Any,
    epoch: int,
    step: int,
    trained_tokens: int,
    losses: list[float],
    valid_loss: float | None,
) -> None:
    import torch

    root = spec.output_dir / CHECKPOINTS
    final = root / f"epoch-{epoch:04d}"
    tmp = root / f".tmp-epoch-{epoch:04d}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a run killed while saving
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp / ADAPTER_DIR))
    if base.gguf is not None:
        export_lora_gguf(tmp / ADAPTER_DIR, base.gguf, tmp / ADAPTER_GGUF)
    torch.save({"optimizer": optimizer.state_dict()}, tmp / STATE)
    info = {
        "epoch": epoch,
        "step": step,
        "trained_tokens": trained_tokens,
        "train_loss": sum(losses) / max(len(losses), 1),
        "valid_loss": valid_loss,
    }
    (tmp / CHECKPOINT_INFO).write_text(json.dumps(info, indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
