"""Wire shapes of the fine-tuning API: OpenAI's (what the ``openai`` SDK's
``client.fine_tuning.jobs`` and ``.checkpoints`` send and parse), on ``/v1`` and
``/compat/v1`` alike.

The request body is checked at its top level here (unknown fields are a 400);
``hyperparameters`` and ``method`` are checked field by field in ``service.py``, which
names the offending path and the allowed range.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .store import CheckpointRecord, EventRecord, JobRecord

MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(default=None, min_length=1, max_length=64)
    # OpenAI's deprecated top-level form; `method.supervised.hyperparameters` is the current one.
    hyperparameters: dict[str, Any] | None = None
    suffix: str | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)  # the trainer's seed range
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None
    integrations: list[Any] | None = None


# --- responses, as documented (the views below build them as dicts) ----------------------


class Hyperparameters(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class JobError(BaseModel):
    code: str
    message: str
    param: str | None


class Method(BaseModel):
    type: Literal["supervised"]
    supervised: dict[str, Hyperparameters]


class JobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"]
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: Hyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Any]
    metadata: dict[str, str] | None
    method: Method


class JobList(BaseModel):
    object: Literal["list"]
    data: list[JobObject]
    has_more: bool


class EventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"]
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any]


class EventList(BaseModel):
    object: Literal["list"]
    data: list[EventObject]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float
    train_loss: float | None
    valid_loss: float | None
    full_valid_loss: float | None
    train_mean_token_accuracy: float | None
    valid_mean_token_accuracy: float | None
    full_valid_mean_token_accuracy: float | None


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"]
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"]
    data: list[CheckpointObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


def _ts(value) -> int | None:
    return int(value.timestamp()) if value is not None else None


def job_view(job: JobRecord, organization_id: str) -> dict[str, Any]:
    hyperparameters = dict(job.hyperparameters)
    error = job.error
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": _ts(job.created_at),
        "error": (
            {"code": error.get("code") or "error", "message": error.get("message") or "", "param": error.get("param")}
            if error else None
        ),
        "fine_tuned_model": job.fine_tuned_model,
        "finished_at": _ts(job.finished_at),
        "hyperparameters": hyperparameters,
        "model": job.model,
        "organization_id": organization_id,
        "result_files": [],
        "seed": job.seed,
        "status": job.status,
        "trained_tokens": job.trained_tokens,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "estimated_finish": _ts(job.estimated_finish),
        "integrations": [],
        "metadata": job.metadata,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    }


def event_view(event: EventRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        "object": "fine_tuning.job.event",
        "created_at": _ts(event.created_at),
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data,
    }


def checkpoint_view(checkpoint: CheckpointRecord) -> dict[str, Any]:
    metrics = checkpoint.metrics
    return {
        "id": checkpoint.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": _ts(checkpoint.created_at),
        "fine_tuned_model_checkpoint": checkpoint.model_id,
        "fine_tuning_job_id": checkpoint.job_id,
        "metrics": {
            "step": float(checkpoint.step),
            "train_loss": metrics.get("train_loss"),
            "valid_loss": metrics.get("valid_loss"),
            "full_valid_loss": metrics.get("valid_loss"),
            # Not measured by the trainer (its loss is what the curve shows).
            "train_mean_token_accuracy": None,
            "valid_mean_token_accuracy": None,
            "full_valid_mean_token_accuracy": None,
        },
        "step_number": checkpoint.step,
    }


def page(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """A list page from ``limit + 1`` fetched rows."""
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}
