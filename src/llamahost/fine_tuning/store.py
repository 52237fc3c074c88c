"""The fine-tuning tables: jobs, their events and checkpoints, and the tuned models.

What a customer wrote or the run revealed about their data (metadata, event messages and
data, checkpoint metrics, error messages, which may quote a dataset line) is sealed under
the team's data key, bound to its row and column; what stays in clear is what the queue,
the listings and the model lookup need (status, ids, file ids, hyperparameters, step
numbers, token counts, model names). Adapters are blobs in the files backend (sealed
chunks), referenced from their checkpoint.

Only one writer runs a job at a time (the holder of its queue lease); every status write
is conditional on the status it expects, so the API's cancel and a worker finishing at
the same moment leave one outcome.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import NotFound
from ..store.db import Database, affected_rows, aware_utc, new_id, utc_now
from ..store.keyring import Keyring, Sealed
from ..store.models import FineTuningCheckpoint, FineTuningEvent, FineTuningJob, TunedModel

VALIDATING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "validating_files", "queued", "running", "succeeded", "failed", "cancelled"
)
STATUSES = (VALIDATING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (VALIDATING, QUEUED, RUNNING)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


@dataclass(frozen=True)
class JobRecord:
    id: str
    team_id: int
    key_id: str | None
    queue_job_id: str | None
    status: str
    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    seed: int
    suffix: str | None
    fine_tuned_model: str | None
    trained_tokens: int | None
    error: dict[str, Any] | None
    metadata: dict[str, str] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    estimated_finish: datetime | None


@dataclass(frozen=True)
class EventRecord:
    id: str
    job_id: str
    seq: int
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any]


@dataclass(frozen=True)
class NewEvent:
    message: str
    level: str = "info"
    type: str = "message"
    data: dict[str, Any] | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Blob:
    id: str
    chunks: int
    bytes: int


@dataclass(frozen=True)
class CheckpointRecord:
    id: str
    job_id: str
    team_id: int
    epoch: int
    step: int
    trained_tokens: int
    model_id: str
    created_at: datetime
    metrics: dict[str, Any]
    gguf: Blob | None
    archive: Blob | None


@dataclass(frozen=True)
class TunedRow:
    id: str
    team_id: int
    job_id: str
    checkpoint_id: str
    base_model: str
    created_at: datetime


class FineTuningStore:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self.db = db
        self.keyring = keyring

    def _seal(self, team_id: int, value: Any, table: str, record: str, column: str) -> bytes:
        return self.keyring.seal(team_id, json.dumps(value), Sealed(table, record, column))

    def _open(self, team_id: int, blob: bytes | None, table: str, record: str, column: str) -> Any:
        if blob is None:
            return None
        return json.loads(self.keyring.open(team_id, blob, Sealed(table, record, column)))

    # --- jobs --------------------------------------------------------------------------------

    def create_job(
        self,
        team_id: int,
        key_id: str | None,
        *,
        model: str,
        training_file: str,
        validation_file: str | None,
        hyperparameters: dict[str, Any],
        seed: int,
        suffix: str | None,
        metadata: dict[str, str] | None,
        status: str = QUEUED,
    ) -> str:
        job_id, now = new_id("ftjob"), utc_now()
        with self.db.session() as s:
            s.add(FineTuningJob(
                id=job_id, team_id=team_id, key_id=key_id, status=status, model=model, training_file=training_file,
                validation_file=validation_file, hyperparameters=hyperparameters, seed=seed, suffix=suffix,
                metadata_sealed=(
                    self._seal(team_id, metadata, "fine_tuning_jobs", job_id, "metadata") if metadata is not None else None
                ),
                created_at=now, updated_at=now,
            ))
        return job_id

    def delete_team_job(self, job_id: str) -> None:
        """Undo a job just created (refused by the team's limit)."""
        with self.db.session() as s:
            s.execute(delete(FineTuningEvent).where(FineTuningEvent.job_id == job_id)
                      .execution_options(synchronize_session=False))
            s.execute(delete(FineTuningJob).where(FineTuningJob.id == job_id).execution_options(synchronize_session=False))

    def set_queue_job(self, job_id: str, queue_job_id: str | None) -> None:
        with self.db.session() as s:
            s.execute(update(FineTuningJob).where(FineTuningJob.id == job_id)
                      .values(queue_job_id=queue_job_id).execution_options(synchronize_session=False))

    def _job(self, row: FineTuningJob) -> JobRecord:
        return JobRecord(
            id=row.id, team_id=row.team_id, key_id=row.key_id, queue_job_id=row.queue_job_id, status=row.status,
            model=row.model, training_file=row.training_file, validation_file=row.validation_file,
            hyperparameters=dict(row.hyperparameters), seed=row.seed, suffix=row.suffix,
            fine_tuned_model=row.fine_tuned_model, trained_tokens=row.trained_tokens,
            error=self._open(row.team_id, row.error_sealed, "fine_tuning_jobs", row.id, "error"),
            metadata=self._open(row.team_id, row.metadata_sealed, "fine_tuning_jobs", row.id, "metadata"),
            created_at=aware_utc(row.created_at), updated_at=aware_utc(row.updated_at),
            started_at=aware_utc(row.started_at), finished_at=aware_utc(row.finished_at),
            estimated_finish=aware_utc(row.estimated_finish),
        )

    def get_job(self, team_id: int | None, job_id: str) -> JobRecord:
        conditions = [FineTuningJob.id == job_id]
        if team_id is not None:
            conditions.append(FineTuningJob.team_id == team_id)
        with self.db.session() as s:
            row = s.scalar(select(FineTuningJob).where(*conditions))
        if row is None:
            raise NotFound(f"no fine-tuning job {job_id[:64]!r}", param="fine_tuning_job_id")
        return self._job(row)

    def find_job(self, job_id: str) -> JobRecord | None:
        try:
            return self.get_job(None, job_id)
        except NotFound:
            return None

    def list_jobs(self, team_id: int, *, after: str | None, limit: int, metadata: dict[str, str] | None = None
                  ) -> list[JobRecord]:
        """Newest first; ``after`` is the last job id of the previous page."""
        conditions = [FineTuningJob.team_id == team_id]
        if after is not None:
            with self.db.session() as s:
                cursor = s.execute(select(FineTuningJob.created_at, FineTuningJob.id)
                                   .where(FineTuningJob.id == after, FineTuningJob.team_id == team_id)).first()
            if cursor is None:
                raise NotFound(f"after: no fine-tuning job {after[:64]!r}", param="after")
            conditions.append(or_(FineTuningJob.created_at < cursor[0],
                                  and_(FineTuningJob.created_at == cursor[0], FineTuningJob.id < cursor[1])))
        query = select(FineTuningJob).where(*conditions).order_by(FineTuningJob.created_at.desc(), FineTuningJob.id.desc())
        jobs: list[JobRecord] = []
        with self.db.session() as s:
            rows = s.scalars(query).yield_per(100) if metadata else s.scalars(query.limit(limit)).all()
            for row in rows:
                job = self._job(row)
                # Metadata is sealed: filtered after opening (a team's jobs are few).
                if metadata and not all((job.metadata or {}).get(k) == v for k, v in metadata.items()):
                    continue
                jobs.append(job)
                if len(jobs) >= limit:
                    break
        return jobs

    def active_jobs(self, team_id: int) -> list[JobRecord]:
        with self.db.session() as s:
            rows = s.scalars(select(FineTuningJob).where(FineTuningJob.team_id == team_id,
                                                         FineTuningJob.status.in_(ACTIVE))).all()
        return [self._job(row) for row in rows]

    def count_active(self, team_id: int) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(FineTuningJob).where(
                FineTuningJob.team_id == team_id, FineTuningJob.status.in_(ACTIVE))) or 0)

    def transition(self, job_id: str, status: str, *, only_from: Sequence[str], error: dict[str, Any] | None = None,
                   **values: Any) -> bool:
        """Move the job to ``status`` if it is in one of ``only_from``; whether it moved."""
        now = utc_now()
        values = dict(values, status=status, updated_at=now)
        if status in FINISHED:
            values.setdefault("finished_at", now)
            values.setdefault("estimated_finish", None)
        if error is not None:
            team_id = self.get_job(None, job_id).team_id
            values["error_sealed"] = self._seal(team_id, error, "fine_tuning_jobs", job_id, "error")
        with self.db.session() as s:
            return bool(affected_rows(s.execute(
                update(FineTuningJob).where(FineTuningJob.id == job_id, FineTuningJob.status.in_(only_from))
                .values(**values).execution_options(synchronize_session=False)
            )))

    def update_running(self, job_id: str, **values: Any) -> None:
        with self.db.session() as s:
            s.execute(update(FineTuningJob).where(FineTuningJob.id == job_id, FineTuningJob.status == RUNNING)
                      .values(updated_at=utc_now(), **values).execution_options(synchronize_session=False))

    def status(self, job_id: str) -> str | None:
        with self.db.session() as s:
            return s.scalar(select(FineTuningJob.status).where(FineTuningJob.id == job_id))

    def succeed(self, job: JobRecord, fine_tuned_model: str, trained_tokens: int,
                models: Sequence[tuple[str, str]]) -> bool:
        """Succeeded, with its tuned models ((model id, checkpoint id) pairs) made callable in
        the same transaction; False (and nothing registered) if the job was no longer running."""
        now = utc_now()
        with self.db.session() as s:
            moved = affected_rows(s.execute(
                update(FineTuningJob).where(FineTuningJob.id == job.id, FineTuningJob.status == RUNNING)
                .values(status=SUCCEEDED, fine_tuned_model=fine_tuned_model, trained_tokens=trained_tokens,
                        finished_at=now, updated_at=now, estimated_finish=None)
                .execution_options(synchronize_session=False)
            ))
            if not moved:
                return False
            for model_id, checkpoint_id in models:
                s.add(TunedModel(id=model_id, team_id=job.team_id, job_id=job.id, checkpoint_id=checkpoint_id,
                                 base_model=job.model, created_at=now))
        return True

    # --- events --------------------------------------------------------------------------------

    def add_events(self, job_id: str, team_id: int, events: Sequence[NewEvent]) -> None:
        if not events:
            return
        for attempt in range(5):
            try:
                with self.db.session() as s:
                    # A no-op write of the job's row first: it holds the row (PostgreSQL) or
                    # the database (SQLite) until commit, so concurrent writers of one job's
                    # events take their numbers one after the other.
                    s.execute(update(FineTuningJob).where(FineTuningJob.id == job_id).values(id=FineTuningJob.id)
                              .execution_options(synchronize_session=False))
                    last = s.scalar(select(func.max(FineTuningEvent.seq)).where(FineTuningEvent.job_id == job_id))
                    seq = (last or 0) + 1
                    for offset, event in enumerate(events):
                        event_id = new_id("ftevent")
                        data = event.data or {}
                        step = data.get("step") if event.type == "metrics" and isinstance(data.get("step"), int) else None
                        s.add(FineTuningEvent(
                            id=event_id, job_id=job_id, team_id=team_id, seq=seq + offset,
                            created_at=event.created_at or utc_now(), level=event.level, type=event.type, step=step,
                            body_sealed=self._seal(team_id, {"message": event.message, "data": data},
                                                   "fine_tuning_events", event_id, "body"),
                        ))
                return
            except IntegrityError:  # not expected after the lock above; take the next numbers
                if attempt == 4:
                    raise

    def forget_metrics_after(self, job_id: str, step: int) -> None:
        """A resumed run replays the steps after its checkpoint: their first metrics go, so
        the learning curve has one point per step."""
        with self.db.session() as s:
            s.execute(delete(FineTuningEvent).where(
                FineTuningEvent.job_id == job_id, FineTuningEvent.type == "metrics", FineTuningEvent.step > step
            ).execution_options(synchronize_session=False))

    def list_events(self, team_id: int, job_id: str, *, after: str | None, limit: int) -> list[EventRecord]:
        """Newest first (OpenAI's order); ``after`` is the last event id of the previous page."""
        self.get_job(team_id, job_id)
        conditions = [FineTuningEvent.job_id == job_id, FineTuningEvent.team_id == team_id]
        if after is not None:
            with self.db.session() as s:
                cursor = s.scalar(select(FineTuningEvent.seq).where(FineTuningEvent.id == after,
                                                                    FineTuningEvent.job_id == job_id))
            if cursor is None:
                raise NotFound(f"after: no event {after[:64]!r} of job {job_id}", param="after")
            conditions.append(FineTuningEvent.seq < cursor)
        with self.db.session() as s:
            rows = s.scalars(select(FineTuningEvent).where(*conditions)
                             .order_by(FineTuningEvent.seq.desc()).limit(limit)).all()
        out = []
        for row in rows:
            body = self._open(team_id, row.body_sealed, "fine_tuning_events", row.id, "body")
            out.append(EventRecord(row.id, row.job_id, row.seq, aware_utc(row.created_at), row.level, row.type,
                                   body["message"], body["data"]))
        return out

    # --- checkpoints -----------------------------------------------------------------------------

    def add_checkpoint(self, job: JobRecord, *, epoch: int, step: int, trained_tokens: int, model_id: str,
                       metrics: dict[str, Any], gguf: Blob | None, archive: Blob) -> bool:
        """Record an uploaded checkpoint; False if the job has one for that epoch already
        (the caller then deletes the blobs it uploaded)."""
        checkpoint_id = new_id("ftckpt")
        try:
            with self.db.session() as s:
                s.add(FineTuningCheckpoint(
                    id=checkpoint_id, job_id=job.id, team_id=job.team_id, epoch=epoch, step=step,
                    trained_tokens=trained_tokens, model_id=model_id, created_at=utc_now(),
                    metrics_sealed=self._seal(job.team_id, metrics, "fine_tuning_checkpoints", checkpoint_id, "metrics"),
                    gguf_blob=gguf.id if gguf else None, gguf_chunks=gguf.chunks if gguf else 0,
                    gguf_bytes=gguf.bytes if gguf else 0,
                    archive_blob=archive.id, archive_chunks=archive.chunks, archive_bytes=archive.bytes,
                ))
        except IntegrityError:
            return False
        return True

    def _checkpoint(self, row: FineTuningCheckpoint) -> CheckpointRecord:
        return CheckpointRecord(
            id=row.id, job_id=row.job_id, team_id=row.team_id, epoch=row.epoch, step=row.step,
            trained_tokens=row.trained_tokens, model_id=row.model_id, created_at=aware_utc(row.created_at),
            metrics=self._open(row.team_id, row.metrics_sealed, "fine_tuning_checkpoints", row.id, "metrics"),
            gguf=Blob(row.gguf_blob, row.gguf_chunks, row.gguf_bytes) if row.gguf_blob else None,
            archive=Blob(row.archive_blob, row.archive_chunks, row.archive_bytes) if row.archive_blob else None,
        )

    def checkpoints(self, job_id: str, *, team_id: int | None = None, after: str | None = None,
                    limit: int | None = None) -> list[CheckpointRecord]:
        """Newest first (OpenAI's order)."""
        conditions = [FineTuningCheckpoint.job_id == job_id]
        if team_id is not None:
            conditions.append(FineTuningCheckpoint.team_id == team_id)
        if after is not None:
            with self.db.session() as s:
                cursor = s.scalar(select(FineTuningCheckpoint.epoch).where(
                    FineTuningCheckpoint.id == after, FineTuningCheckpoint.job_id == job_id))
            if cursor is None:
                raise NotFound(f"after: no checkpoint {after[:64]!r} of job {job_id}", param="after")
            conditions.append(FineTuningCheckpoint.epoch < cursor)
        query = select(FineTuningCheckpoint).where(*conditions).order_by(FineTuningCheckpoint.epoch.desc())
        if limit is not None:
            query = query.limit(limit)
        with self.db.session() as s:
            rows = s.scalars(query).all()
        return [self._checkpoint(row) for row in rows]

    def checkpoint(self, checkpoint_id: str) -> CheckpointRecord | None:
        with self.db.session() as s:
            row = s.get(FineTuningCheckpoint, checkpoint_id)
        return self._checkpoint(row) if row is not None else None

    # --- tuned models ------------------------------------------------------------------------------

    def _tuned(self, row: TunedModel) -> TunedRow:
        return TunedRow(row.id, row.team_id, row.job_id, row.checkpoint_id, row.base_model, aware_utc(row.created_at))

    def tuned(self, team_id: int, model_id: str) -> TunedRow | None:
        with self.db.session() as s:
            row = s.scalar(select(TunedModel).where(TunedModel.id == model_id, TunedModel.team_id == team_id))
        return self._tuned(row) if row is not None else None

    def tuned_of_team(self, team_id: int) -> list[TunedRow]:
        with self.db.session() as s:
            rows = s.scalars(select(TunedModel).where(TunedModel.team_id == team_id)
                             .order_by(TunedModel.created_at, TunedModel.id)).all()
        return [self._tuned(row) for row in rows]

    def tuned_of_base(self, base_model: str) -> list[TunedRow]:
        with self.db.session() as s:
            rows = s.scalars(select(TunedModel).where(TunedModel.base_model == base_model)
                             .order_by(TunedModel.created_at, TunedModel.id)).all()
        return [self._tuned(row) for row in rows]

    def delete_tuned(self, team_id: int, model_id: str) -> list[Blob] | None:
        """Remove the tuned model; the blobs of its checkpoint when no other tuned model
        uses them any more (the caller deletes those), or None if the team has no such model."""
        with self.db.session() as s:
            row = s.scalar(select(TunedModel).where(TunedModel.id == model_id, TunedModel.team_id == team_id))
            if row is None:
                return None
            checkpoint_id = row.checkpoint_id
            s.delete(row)
            s.flush()
            if s.scalar(select(func.count()).select_from(TunedModel).where(TunedModel.checkpoint_id == checkpoint_id)):
                return []
            checkpoint = s.get(FineTuningCheckpoint, checkpoint_id)
            if checkpoint is None:
                return []
            blobs = [Blob(b, n, size) for b, n, size in (
                (checkpoint.gguf_blob, checkpoint.gguf_chunks, checkpoint.gguf_bytes),
                (checkpoint.archive_blob, checkpoint.archive_chunks, checkpoint.archive_bytes),
            ) if b]
            checkpoint.gguf_blob = checkpoint.archive_blob = None
        return blobs

    # --- team deletion ------------------------------------------------------------------------------

    def delete_team(self, team_id: int) -> dict[str, int]:
        """A ``TeamStore.on_delete`` hook: the team's jobs, events, checkpoints and tuned
        models (their blobs are chunks under the team, freed by the files' own hook)."""
        with self.db.session() as s:
            for model in (TunedModel, FineTuningEvent, FineTuningCheckpoint):
                s.execute(delete(model).where(model.team_id == team_id).execution_options(synchronize_session=False))
            return {"fine_tuning_jobs": affected_rows(s.execute(
                delete(FineTuningJob).where(FineTuningJob.team_id == team_id).execution_options(synchronize_session=False)
            ))}
