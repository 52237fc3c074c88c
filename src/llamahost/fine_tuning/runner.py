"""A fine-tuning job as job work (kind ``fine_tune``): prepare a private working directory,
run the trainer through the configured backend, and carry what it writes into the
database as it happens.

One attempt:

1. The job goes ``running``. A private (0700) directory under ``[fine_tuning] work_dir``
   gets the training (and validation) file, decrypted, and the job spec.
2. If an earlier attempt uploaded checkpoints (its worker was killed, its host lost), the
   newest is downloaded into the new output directory: the trainer resumes from it, and
   the metrics of the steps it replays are dropped so the curve has one point per step.
3. The backend runs the trainer. Every second the job appends the new lines of
   ``events.jsonl`` to the job's events (metrics ones too: the learning curve), uploads
   each checkpoint the moment it is renamed into place (its GGUF adapter and a tar of the
   PEFT folder and optimizer state, sealed chunks in the files backend), and looks at the
   job's status: cancelled through the API (or the job deleted with its team) stops the
   trainer within seconds.
4. Succeeded: the tuned model ``ft:<base>:<team>:<suffix>:<job>`` and each checkpoint's
   ``...:ckpt-step-<n>`` become callable in the same transaction that marks the job
   succeeded; the trained tokens are a usage record (kind ``fine_tune``). Failed (the
   trainer's own verdict: a bad line, a tokenizer mismatch): the job fails with its
   reason. A crash is a failed attempt, retried up to ``[fine_tuning] max_attempts``.
5. The working directory is removed, whatever happened.

A worker killed mid-run stops renewing its queue lease; another loop (or the same, once
restarted) claims the job again after the lease expires and resumes from the last
uploaded checkpoint. The job is never left ``running`` for good: when the queue gives
up on it, reading the job fails it (``FineTuningService._reconcile``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import APIError, NotFound
from ..finetune.backends import TrainingRun
from ..finetune.deps import TrainingUnavailable
from ..finetune.journal import EVENTS, RESULT
from ..finetune.spec import EXIT_CANCELLED, TrainingSpec
from ..jobs.kinds import JobContext, JobKinds
from ..tenancy.usage import usage_row
from .service import KIND, FineTuningService, checkpoint_model_id, tuned_model_id
from .store import ACTIVE, FAILED, QUEUED, RUNNING, VALIDATING, Blob, JobRecord, NewEvent

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
CHECKPOINTS = "checkpoints"  # the trainer's layout (finetune/train.py)
CHECKPOINT_INFO = "checkpoint.json"
ADAPTER_GGUF = "adapter.gguf"
# What a checkpoint archive holds: everything the trainer needs to resume from it.
ARCHIVE_EXCLUDE = (ADAPTER_GGUF,)  # stored as its own blob (what serving loads)
BLOB_CHUNK = 1024 * 1024
# Trainer errors name the spec's field; the API's is `model`.
PARAMS = {"base_model": "model"}
ERROR_CODES = {"training_file": "invalid_training_file", "validation_file": "invalid_validation_file"}


def register(kinds: JobKinds, config: Config) -> None:
    ft = config.fine_tuning
    kinds.register_kind(KIND, run_job, timeout=ft.timeout_hours * 3600, max_attempts=ft.max_attempts, retry_delay=2.0)


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, stat.S_IRWXU)
    return path


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while piece := f.read(BLOB_CHUNK):
            yield piece


class Attempt:
    """One attempt's state: what has been carried into the database so far."""

    def __init__(self, service: FineTuningService, job: JobRecord, run: TrainingRun, final_model: str,
                 total_steps: int) -> None:
        self.service = service
        self.store = service.store
        self.files = service.files
        self.job = job
        self.run = run
        self.final_model = final_model
        self.total_steps = total_steps
        self.events_offset = 0
        self.uploaded = {c.epoch for c in self.store.checkpoints(job.id)}
        self.started = time.monotonic()
        self.first_step: int | None = None

    # --- events ----------------------------------------------------------------------------

    def tail_events(self) -> None:
        path = self.run.output_dir / EVENTS
        try:
            with path.open("rb") as f:
                f.seek(self.events_offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return  # no complete line yet
        self.events_offset += end + 1
        events, last_step = [], None
        for line in data[: end + 1].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            kind = record.get("type") if record.get("type") in ("message", "metrics") else "message"
            level = record.get("level") if record.get("level") in ("info", "warn", "error") else "info"
            created = record.get("created_at")
            events.append(NewEvent(
                message=str(record.get("message", "")), level=level, type=kind,
                data=record.get("data") if isinstance(record.get("data"), dict) else {},
                created_at=datetime.fromtimestamp(created, UTC) if isinstance(created, int | float) else None,
            ))
            if kind == "metrics" and isinstance((record.get("data") or {}).get("step"), int):
                last_step = record["data"]["step"]
        self.store.add_events(self.job.id, self.job.team_id, events)
        if last_step is not None:
            self._estimate(last_step)

    def _estimate(self, step: int) -> None:
        """The expected end, from this attempt's pace so far."""
        if self.first_step is None:
            self.first_step, self.started = step, time.monotonic()
            return
        done = step - self.first_step
        if done <= 0 or self.total_steps <= step:
            return
        per_step = (time.monotonic() - self.started) / done
        finish = datetime.now(UTC) + timedelta(seconds=per_step * (self.total_steps - step))
        self.store.update_running(self.job.id, estimated_finish=finish)

    # --- checkpoints ---------------------------------------------------------------------------

    def upload_checkpoints(self) -> None:
        for info_path in sorted((self.run.output_dir / CHECKPOINTS).glob(f"epoch-*/{CHECKPOINT_INFO}")):
            info = json.loads(info_path.read_text())
            if info["epoch"] in self.uploaded:
                continue
            self._upload(info_path.parent, info)
            self.uploaded.add(info["epoch"])

    def _upload(self, directory: Path, info: dict[str, Any]) -> None:
        team_id = self.job.team_id
        gguf_id, archive_id = f"ftblob-{os.urandom(12).hex()}", f"ftblob-{os.urandom(12).hex()}"
        gguf: Blob | None = None
        if (directory / ADAPTER_GGUF).exists():  # an upstream model's (Hugging Face) base has no llama.cpp adapter
            size, chunks = self.files.put_blob(team_id, gguf_id, _file_chunks(directory / ADAPTER_GGUF))
            gguf = Blob(gguf_id, chunks, size)
        try:
            with tempfile.TemporaryFile(dir=self.run.work_dir) as tar_file:
                with tarfile.open(fileobj=tar_file, mode="w:") as tar:
                    for path in sorted(directory.iterdir()):
                        if path.name not in ARCHIVE_EXCLUDE:
                            tar.add(path, arcname=path.name)
                tar_file.seek(0)

                def read() -> Iterator[bytes]:
                    while piece := tar_file.read(BLOB_CHUNK):
                        yield piece

                size, chunks = self.files.put_blob(team_id, archive_id, read())
            archive = Blob(archive_id, chunks, size)
            metrics = {"train_loss": info.get("train_loss"), "valid_loss": info.get("valid_loss"),
                       "epoch": info["epoch"], "step": info["step"]}
            recorded = self.store.add_checkpoint(
                self.job, epoch=info["epoch"], step=info["step"], trained_tokens=info["trained_tokens"],
                model_id=checkpoint_model_id(self.final_model, info["step"]), metrics=metrics, gguf=gguf,
                archive=archive,
            )
        except BaseException:
            self.files.delete_blob(team_id, gguf_id)
            self.files.delete_blob(team_id, archive_id)
            raise
        if not recorded:  # an earlier attempt uploaded this epoch already
            self.files.delete_blob(team_id, gguf_id)
            self.files.delete_blob(team_id, archive_id)
            return
        self.store.add_events(self.job.id, team_id, [
            NewEvent(f"Checkpoint created at step {info['step']}", data={"step": info["step"], "epoch": info["epoch"]})
        ])

    def poll(self) -> str | None:
        """Carry the run's output into the database; the job's status now (None: deleted)."""
        self.tail_events()
        self.upload_checkpoints()
        return self.store.status(self.job.id)


def _restore_checkpoint(service: FineTuningService, job: JobRecord, output_dir: Path) -> int | None:
    """The newest uploaded checkpoint into ``output_dir``; its step, or None if there is none."""
    latest = next(iter(service.store.checkpoints(job.id, limit=1)), None)
    if latest is None or latest.archive is None:
        return None
    target = output_dir / CHECKPOINTS / f"epoch-{latest.epoch:04d}"
    tmp = output_dir / CHECKPOINTS / f".restore-{latest.epoch:04d}"
    tmp.mkdir(parents=True)
    with tempfile.TemporaryFile(dir=output_dir) as tar_file:
        for chunk in service.files.read_blob(job.team_id, latest.archive.id, latest.archive.chunks):
            tar_file.write(chunk)
        tar_file.seek(0)
        with tarfile.open(fileobj=tar_file, mode="r:") as tar:
            tar.extractall(tmp, filter="data")
    if latest.gguf is not None:
        with (tmp / ADAPTER_GGUF).open("wb") as f:
            for chunk in service.files.read_blob(job.team_id, latest.gguf.id, latest.gguf.chunks):
                f.write(chunk)
    tmp.rename(target)
    return latest.step


def _write_dataset(service: FineTuningService, team_id: int, file_id: str, path: Path) -> int:
    """The file decrypted into ``path`` (0600); its example count."""
    _, chunks = service.files.content(team_id, file_id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    examples = 0
    with os.fdopen(fd, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
    with path.open("rb") as f:
        examples = sum(1 for line in f if line.strip())
    return examples


def _usage(services: Any, job: JobRecord, trained_tokens: int, seconds: float) -> None:
    """The trained tokens as one usage record, once per job (its record id is the job's)."""
    record_id = hashlib.sha256(f"fine_tune:{job.id}".encode()).hexdigest()[:32]
    services.usage.write_rows([usage_row(
        job.team_id, job.key_id, job.model, None, trained_tokens, 0, seconds * 1000, "ok", None,
        record_id=record_id, kind=KIND,
    )])


async def run_job(ctx: JobContext) -> dict[str, Any]:
    services = ctx.services
    service: FineTuningService = services.fine_tuning
    store = service.store
    config: Config = services.config
    job = await asyncio.to_thread(store.find_job, ctx.payload["fine_tuning_job_id"])
    if job is None:
        return {"deleted": True}
    if job.status not in ACTIVE:
        return {"status": job.status}
    moved = await asyncio.to_thread(
        lambda: store.transition(job.id, RUNNING, only_from=(VALIDATING, QUEUED, RUNNING),
                                 started_at=job.started_at or datetime.now(UTC))
    )
    if not moved:
        return {"status": await asyncio.to_thread(store.status, job.id)}
    root = config.fine_tuning_dir
    job_dir = root / job.id
    try:
        return await _attempt(ctx, service, config, job, job_dir)
    finally:
        await asyncio.to_thread(shutil.rmtree, job_dir, True)


async def _fail(service: FineTuningService, job: JobRecord, code: str, message: str, param: str | None) -> dict[str, Any]:
    error = {"code": code, "message": message, "param": param}
    await asyncio.to_thread(lambda: service.store.transition(job.id, FAILED, only_from=ACTIVE, error=error))
    await asyncio.to_thread(service.store.add_events, job.id, job.team_id,
                            [NewEvent(f"Fine-tuning job failed: {message}", level="error")])
    return {"status": FAILED, "code": code}


async def _attempt(ctx: JobContext, service: FineTuningService, config: Config, job: JobRecord,
                   job_dir: Path) -> dict[str, Any]:
    store = service.store
    model = next((m for m in config.models if m.id == job.model), None)
    if model is None:
        return await _fail(service, job, "model_not_available", f"model {job.model!r} is no longer configured", "model")
    try:
        base_model = service.backend.base_model(model)
    except APIError as exc:
        return await _fail(service, job, "model_not_available", exc.message, "model")
    try:
        service.backend.check_available()
    except TrainingUnavailable as exc:  # this worker lacks the extra: it says how to install it
        return await _fail(service, job, "training_unavailable", exc.message, "model")
    # A fresh directory per attempt: a trainer of an earlier attempt on this host (killed
    # with its loop) may still be writing for a moment into the old one.
    await asyncio.to_thread(shutil.rmtree, job_dir, True)
    _private_dir(config.fine_tuning_dir)
    work_dir = _private_dir(job_dir / f"attempt-{ctx.attempt}")
    output_dir = _private_dir(work_dir / "output")
    training = work_dir / "training.jsonl"
    validation = work_dir / "validation.jsonl" if job.validation_file is not None else None
    try:
        examples = await asyncio.to_thread(_write_dataset, service, job.team_id, job.training_file, training)
        if validation is not None:
            assert job.validation_file is not None
            await asyncio.to_thread(_write_dataset, service, job.team_id, job.validation_file, validation)
    except NotFound:
        return await _fail(service, job, "invalid_training_file",
                           "the training or validation file was deleted before the job ran", "training_file")
    resumed = await asyncio.to_thread(_restore_checkpoint, service, job, output_dir)
    if resumed is not None:
        await asyncio.to_thread(store.forget_metrics_after, job.id, resumed)
        await asyncio.to_thread(store.add_events, job.id, job.team_id, [
            NewEvent(f"Attempt {ctx.attempt}: resuming from the checkpoint at step {resumed}")
        ])
    elif ctx.attempt > 1:
        await asyncio.to_thread(store.add_events, job.id, job.team_id, [
            NewEvent(f"Attempt {ctx.attempt}: the previous attempt left no checkpoint; starting over")
        ])
    hp = job.hyperparameters
    spec = TrainingSpec(
        base_model=base_model, training_file=training, validation_file=validation, output_dir=output_dir,
        n_epochs=hp["n_epochs"], batch_size=hp["batch_size"], learning_rate_multiplier=hp["learning_rate_multiplier"],
        seed=job.seed, threads=config.fine_tuning.resolved_threads(),
    )
    spec_path = work_dir / "job.json"
    spec_path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    run = TrainingRun(job_id=job.id, team_id=job.team_id, attempt=ctx.attempt, spec=spec, spec_path=spec_path,
                      work_dir=work_dir, log_path=work_dir / "trainer.log")
    final_model = tuned_model_id(job.model, service.organization(job.team_id), job.suffix, job.id)
    attempt = await asyncio.to_thread(Attempt, service, job, run, final_model,
                                      math.ceil(examples / spec.batch_size) * spec.n_epochs)

    training_task = asyncio.create_task(service.backend.run(run), name=f"trainer of {job.id}")
    try:
        while not training_task.done():
            await asyncio.wait({training_task}, timeout=POLL_SECONDS)
            status = await asyncio.to_thread(attempt.poll)
            if status != RUNNING and not run.cancel.is_set():
                log.info("fine-tuning job %s is %s: stopping its trainer", job.id, status or "deleted")
                run.cancel.set()
        exit_status = training_task.result()
    except BaseException:
        if not training_task.done():
            training_task.cancel()
            await asyncio.wait({training_task})
        raise
    status = await asyncio.to_thread(attempt.poll)
    result = _read_result(output_dir)
    if status != RUNNING:  # cancelled (or deleted) meanwhile: whatever the trainer did stays unregistered
        return {"status": status or "deleted"}
    if exit_status == 0 and result.get("status") == "succeeded":
        return await _succeed(ctx, service, job, final_model, result)
    if exit_status == 1 and result.get("status") == "failed":
        error = result.get("error") or {}
        param = error.get("param")
        param = PARAMS.get(param, param) if isinstance(param, str) else None
        return await _fail(service, job, ERROR_CODES.get(param or "", "training_failed"),
                           str(error.get("message") or "training failed"), param)
    # Cancelled without being asked (a signal from outside), killed, or a crash before any
    # verdict: a failed attempt, which the queue retries while attempts remain.
    reason = "was stopped by a signal" if exit_status == EXIT_CANCELLED else f"exited with status {exit_status}"
    tail = run.log_tail()[-500:]
    await asyncio.to_thread(store.add_events, job.id, job.team_id, [
        NewEvent(f"Attempt {ctx.attempt}: the trainer {reason}", level="warn")
    ])
    if ctx.attempt >= config.fine_tuning.max_attempts:
        await _fail(service, job, "training_crashed", f"the trainer {reason} on each of {ctx.attempt} attempts", None)
    raise RuntimeError(f"the trainer {reason}: {tail}")


def _read_result(output_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((output_dir / RESULT).read_text())
    except (OSError, ValueError):
        return {}


async def _succeed(ctx: JobContext, service: FineTuningService, job: JobRecord, final_model: str,
                   result: dict[str, Any]) -> dict[str, Any]:
    store = service.store
    checkpoints = await asyncio.to_thread(store.checkpoints, job.id)
    if not checkpoints:
        raise RuntimeError("the trainer succeeded but no checkpoint was uploaded")
    final = checkpoints[0]  # newest first
    trained_tokens = int(result.get("trained_tokens") or final.trained_tokens)
    models = [(final_model, final.id)] + [(c.model_id, c.id) for c in checkpoints]
    await asyncio.to_thread(store.add_events, job.id, job.team_id, [
        NewEvent(f"New fine-tuned model created: {final_model}")
    ])
    if not await asyncio.to_thread(store.succeed, job, final_model, trained_tokens, models):
        return {"status": await asyncio.to_thread(store.status, job.id)}
    started = job.started_at or job.created_at
    seconds = max(0.0, (datetime.now(UTC) - started).total_seconds())
    await asyncio.to_thread(_usage, ctx.services, job, trained_tokens, seconds)
    return {"status": "succeeded", "fine_tuned_model": final_model, "trained_tokens": trained_tokens}
