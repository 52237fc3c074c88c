"""SQLAlchemy ORM tables. Schema changes go through Alembic migrations
(``store/migrations/versions``), never ``create_all``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


# Encrypted columns (``*_sealed``) hold ``crypto.DataKey.seal`` output under the team's
# data key, bound to (table, record, field); ``*_index`` columns hold a keyed hash of the
# same value for equality lookups (see ``store/keyring.py``).


class Team(Base):
    """A team. Its name is PII: stored encrypted, found by its blind index. A deleted
    team keeps its row (usage records point at it) without a name or keys."""

    __tablename__ = "teams"
    __table_args__ = (Index("uq_teams_name_index", "name_index", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name_index: Mapped[str | None] = mapped_column(String(64))
    name_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    keys: Mapped[list[ApiKey]] = relationship(back_populates="team")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The visible part of the key ("llh_<key_id>_..."), safe to show and log.
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)  # the key's label
    # SHA-256 of the whole key; the key itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16), default="member")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    team: Mapped[Team] = relationship(back_populates="keys")


class RateLimit(Base):
    """A team's limits for one model (by its configured id), or its default for every
    model when ``model`` is NULL. A NULL ``rpm``/``tpm`` falls through to the team
    default, then to the server's ``[limits]``."""

    __tablename__ = "rate_limits"
    __table_args__ = (
        UniqueConstraint("team_id", "model", name="uq_rate_limits_team_model"),
        # NULLs never collide in a unique constraint, so the team default needs its own index.
        Index(
            "uq_rate_limits_team_default",
            "team_id",
            unique=True,
            sqlite_where=text("model IS NULL"),
            postgresql_where=text("model IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    model: Mapped[str | None] = mapped_column(String(128))
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UsageRecord(Base):
    """One chat request that reached the service, however it ended."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_team_created", "team_id", "created_at"),
        Index("ix_usage_records_user_created", "user_index", "created_at"),
        Index("ix_usage_records_created", "created_at"),
        Index("uq_usage_records_record_id", "record_id", unique=True),
    )

    # SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL needs 64 bits for a long-lived log.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    key_id: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    # The record's id in encryption contexts, shared with its stored request if any.
    record_id: Mapped[str] = mapped_column(String(32))
    # The request's ``user`` field (PII): encrypted, and a per-team blind index to filter by.
    user_index: Mapped[str | None] = mapped_column(String(32))
    user_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    stop_reason: Mapped[str | None] = mapped_column(String(16))
    # "chat", "moderation" (a /v1/moderations call), "guardrail_input" / "guardrail_output"
    # (an automatic check of a chat's input or reply), "eval" (an eval run's generation),
    # "fine_tune" (a succeeded fine-tuning job: its trained tokens as prompt tokens).
    kind: Mapped[str] = mapped_column(String(24), server_default="chat", default="chat")


class EncryptionKey(Base):
    """A key wrapped by the master key: a team's data key (``purpose`` "content", one row
    per version, the highest one sealing new records) or the server's blind-index key
    (``team_id`` NULL, ``purpose`` "index")."""

    __tablename__ = "encryption_keys"
    __table_args__ = (UniqueConstraint("team_id", "purpose", "version", name="uq_encryption_keys_team_purpose_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    # Which master key wrapped it (a fingerprint): tells "wrong master key" from tampering.
    master_key_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TeamSetting(Base):
    """One per-team setting the team has set (JSON value); unset ones take the server's
    default. Name/value rows, so a new setting needs no migration (``tenancy/settings.py``)."""

    __tablename__ = "team_settings"

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StoredRequest(Base):
    """The content of one chat or moderation call, kept for abuse review while the team's
    ``store_content`` is on, until its ``retention_days`` pass. Content and ``user`` are
    encrypted; the rest is metadata in the clear."""

    __tablename__ = "stored_requests"
    __table_args__ = (
        Index("ix_stored_requests_team_created", "team_id", "created_at"),
        Index("ix_stored_requests_team_user_created", "team_id", "user_index", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # random: known before the insert
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(16))  # chat | moderation
    surface: Mapped[str] = mapped_column(String(16))  # native | compat
    model: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    flagged: Mapped[bool] = mapped_column(Boolean)
    user_index: Mapped[str | None] = mapped_column(String(32))
    user_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    request_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    response_sealed: Mapped[bytes] = mapped_column(LargeBinary)


class Job(Base):
    """One unit of background work, of any kind (``jobs/``): the one vocabulary every
    job kind shares. ``status`` moves queued → running → succeeded | failed | cancelled;
    a failed attempt or an expired lease goes back to queued while ``attempts <
    max_attempts``. ``worker_id``/``leased_until`` say which loop holds a running job
    and until when; a loop that stops renewing its lease (killed) loses the job to another."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_run_after", "status", "run_after"),
        Index("ix_jobs_team_created", "team_id", "created_at"),
        Index("ix_jobs_created", "created_at"),
        # At most one job per key, ever: a periodic kind's key names its interval slot,
        # so loops on many hosts scheduling the same slot insert it once.
        Index("uq_jobs_dedupe_key", "dedupe_key", unique=True),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # random: not guessable, no count leaked
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed | cancelled
    # The team the job works for; NULL for the server's own work (retention), seen by operators only.
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    payload: Mapped[dict] = mapped_column(JSON)
    result: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)  # the last attempt's
    attempts: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    dedupe_key: Mapped[str | None] = mapped_column(String(160))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    run_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # not claimed before (retry delay, schedule)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # of the latest attempt
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UploadSession(Base):
    """A resumable upload (``POST /v1/uploads``): what the file will be, and how many of
    its bytes (``received``) and chunks are stored. Durable, so an upload resumes after a
    restart and on another replica. The filename is sealed (bound to ``file_id``)."""

    __tablename__ = "upload_sessions"
    __table_args__ = (Index("ix_upload_sessions_team", "team_id"), Index("ix_upload_sessions_updated", "updated_at"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(40), unique=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    key_id: Mapped[str | None] = mapped_column(String(32))
    filename_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)  # in bytes
    mime_type: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(32))
    received: Mapped[int] = mapped_column(BigInteger)  # the offset the next part starts at
    chunks: Mapped[int] = mapped_column(Integer)  # chunks stored so far (the next chunk's index)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StoredFile(Base):
    """A completed file of a team. Its bytes are chunks in the configured chunk store
    (``backend``), listed in order by its ``file_parts``; filename and sha256 are sealed."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_team_created", "team_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    key_id: Mapped[str | None] = mapped_column(String(32))
    filename_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)  # in bytes
    mime_type: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(32))
    surface: Mapped[str] = mapped_column(String(16))  # native | compat: which message format a dataset uses
    backend: Mapped[str] = mapped_column(String(16))  # database | s3
    sha256_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))  # processing | processed | error
    status_details: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FilePart(Base):
    """A committed part of a file: bytes [start, start+length) are chunks
    ``first_chunk ..`` written by ``attempt``."""

    __tablename__ = "file_parts"

    file_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    length: Mapped[int] = mapped_column(BigInteger)
    attempt: Mapped[str] = mapped_column(String(32))
    first_chunk: Mapped[int] = mapped_column(Integer)
    chunks: Mapped[int] = mapped_column(Integer)


class FileChunk(Base):
    """One sealed chunk, when files are stored in the database (``[files] backend``)."""

    __tablename__ = "file_chunks"
    __table_args__ = (Index("ix_file_chunks_team", "team_id"),)

    file_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    attempt: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)

class Eval(Base):
    """An eval (``evals/``): its definition (name, data source config, testing criteria,
    metadata) is the team's content, sealed under its data key."""

    __tablename__ = "evals"
    __table_args__ = (Index("ix_evals_team_created", "team_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    definition_sealed: Mapped[bytes] = mapped_column(LargeBinary)


class EvalRun(Base):
    """One run of an eval over a data source. ``status``: queued | in_progress |
    completed | canceled | failed. The run's spec (data source, model, name, metadata)
    is sealed; counts come from its items."""

    __tablename__ = "eval_runs"
    __table_args__ = (Index("ix_eval_runs_eval_created", "eval_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    key_id: Mapped[str | None] = mapped_column(String(32))  # the key that started it: generations run as it
    status: Mapped[str] = mapped_column(String(16))
    total: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    spec_sealed: Mapped[bytes] = mapped_column(LargeBinary)


class EvalItem(Base):
    """One row of a run's data source and, once graded, its one result. ``status``:
    pending | claimed | passed | failed | errored; a claimed item is held by one loop
    (``claimed_by``) until ``claimed_until``, and only that holder may record its result."""

    __tablename__ = "eval_items"
    __table_args__ = (Index("ix_eval_items_run_status", "run_id", "status"),)

    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    generations: Mapped[int] = mapped_column(Integer, server_default="0", default=0)  # every attempt, repeats included
    passes: Mapped[list | None] = mapped_column(JSON)  # per testing criterion: true / false / null (errored)
    prompt_tokens: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    row_sealed: Mapped[bytes] = mapped_column(LargeBinary)  # {"item", "sample"?}
    result_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)  # sample, results, error
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FineTuningJob(Base):
    """A fine-tuning job (``fine_tuning/``): what to tune and how, its status, and the tuned
    model it made. Run by one ``fine_tune`` job of the queue (``queue_job_id``). The
    metadata and the error (which may quote a dataset line) are sealed."""

    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        Index("ix_fine_tuning_jobs_team_created", "team_id", "created_at"),
        Index("ix_fine_tuning_jobs_team_status", "team_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    key_id: Mapped[str | None] = mapped_column(String(32))
    queue_job_id: Mapped[str | None] = mapped_column(String(32))
    # validating_files | queued | running | succeeded | failed | cancelled (OpenAI's)
    status: Mapped[str] = mapped_column(String(24))
    model: Mapped[str] = mapped_column(String(128))  # the configured base model's id
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40))
    hyperparameters: Mapped[dict] = mapped_column(JSON)  # resolved: n_epochs, batch_size, learning_rate_multiplier
    seed: Mapped[int] = mapped_column(BigInteger)
    suffix: Mapped[str | None] = mapped_column(String(64))
    fine_tuned_model: Mapped[str | None] = mapped_column(String(320))
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    error_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)  # {code, message, param}
    metadata_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    estimated_finish: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FineTuningEvent(Base):
    """One event of a job's log, in order (``seq``); message and data sealed. Metrics
    events keep their ``step`` in clear so a resumed run can replace the steps it replays."""

    __tablename__ = "fine_tuning_events"
    __table_args__ = (Index("uq_fine_tuning_events_job_seq", "job_id", "seq", unique=True),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    level: Mapped[str] = mapped_column(String(8))  # info | warn | error
    type: Mapped[str] = mapped_column(String(8))  # message | metrics
    step: Mapped[int | None] = mapped_column(Integer)
    body_sealed: Mapped[bytes] = mapped_column(LargeBinary)  # {message, data}


class FineTuningCheckpoint(Base):
    """A job's checkpoint at an epoch's end, uploaded as it was written: its adapter as a
    llama.cpp GGUF (``gguf_blob``) and everything a resumed run needs, PEFT folder and
    optimizer state (``archive_blob``, a tar); both sealed chunks in the files backend."""

    __tablename__ = "fine_tuning_checkpoints"
    __table_args__ = (Index("uq_fine_tuning_checkpoints_job_epoch", "job_id", "epoch", unique=True),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    trained_tokens: Mapped[int] = mapped_column(BigInteger)
    model_id: Mapped[str] = mapped_column(String(320))  # its callable name (fine_tuned_model_checkpoint)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    metrics_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    gguf_blob: Mapped[str | None] = mapped_column(String(40))  # None once deleted
    gguf_chunks: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    gguf_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)
    archive_blob: Mapped[str | None] = mapped_column(String(40))
    archive_chunks: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    archive_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0", default=0)


class TunedModel(Base):
    """A callable tuned model: a job's final model or one of its checkpoints, served as its
    base model with the checkpoint's adapter, to its team only."""

    __tablename__ = "tuned_models"
    __table_args__ = (
        Index("ix_tuned_models_team", "team_id", "created_at"),
        Index("ix_tuned_models_base", "base_model"),
    )

    id: Mapped[str] = mapped_column(String(320), primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_checkpoints.id", ondelete="CASCADE"))
    base_model: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
