"""The durable queue: the ``jobs`` table and every transition of a job's status.

Why no job-queue library: the maintained ones each fit one of our two databases only
(procrastinate and PgQueuer are PostgreSQL-only, huey's SQL storage is SQLite-only,
rq/arq/dramatiq/saq need Redis or a broker, Celery's SQLAlchemy broker is unmaintained),
while llamahost runs on SQLite on a laptop and on PostgreSQL with many hosts, through its
own Alembic migrations and team scopes. The table and the few statements below are the
whole queue:

- **claim**: one ``UPDATE ... WHERE id = (SELECT id ... LIMIT 1 FOR UPDATE SKIP LOCKED)
  AND status = 'queued' RETURNING``. On PostgreSQL, concurrent workers skip each other's
  locked rows, so each job goes to exactly one worker without waiting (the ``id = (scalar
  subquery)`` form is planned as an InitPlan run once per statement: one row per claim,
  where ``id IN (SELECT ... LIMIT n)`` may be re-run per row); SQLite has one
  writer at a time (no FOR UPDATE), and the ``status = 'queued'`` condition in the same
  statement makes the claim atomic there too.
- **lease**: a claimed job is ``running`` with ``leased_until``; its loop renews the
  lease while the handler runs. A loop that dies (kill -9, a lost host) stops renewing,
  and ``reap`` (run by every loop) puts the job back to ``queued`` once the lease has
  expired, or fails it when its attempts are used up. Leases compare wall clocks of the
  hosts: keep them NTP-synchronised (a lease is tens of seconds, skew milliseconds).
- every write of a running job is conditional on ``worker_id``, so a loop that lost its
  lease (paused past it) cannot overwrite the job that another loop now runs.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON as SAJSON
from sqlalchemy import and_, delete, exists, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import InvalidRequest, NotFound
from ..store.db import Database, affected_rows, aware_utc
from ..store.models import Job
from ..tenancy.scope import Scope
from ..tenancy.teams import TeamStore
from .kinds import KIND_NAME, JobKinds

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
MAX_ERROR_CHARS = 2000


JOB_ID = re.compile(r"job_[0-9a-f]{24}")


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


def _update():
    # Plain SQL updates: no ORM objects of jobs live in the sessions to keep in sync.
    return update(Job).execution_options(synchronize_session=False)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobInfo:
    """A job as listings show it (``payload`` stays in the database: the kind's own
    routes decide what of it a caller may see)."""

    id: str
    kind: str
    status: str
    team_id: int | None
    attempts: int
    max_attempts: int
    error: str | None
    result: dict[str, Any] | None
    cancel_requested: bool
    worker_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    leased_until: datetime | None

    @classmethod
    def of(cls, row: Job) -> JobInfo:
        return cls(
            id=row.id, kind=row.kind, status=row.status, team_id=row.team_id, attempts=row.attempts,
            max_attempts=row.max_attempts, error=row.error, result=row.result, cancel_requested=row.cancel_requested,
            worker_id=row.worker_id, created_at=aware_utc(row.created_at), started_at=aware_utc(row.started_at),
            finished_at=aware_utc(row.finished_at), updated_at=aware_utc(row.updated_at),
            leased_until=aware_utc(row.leased_until),
        )


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    kind: str
    payload: dict[str, Any]
    team_id: int | None
    attempts: int


class JobQueue:
    def __init__(self, db: Database, teams: TeamStore, kinds: JobKinds) -> None:
        self.db = db
        self.teams = teams
        self.kinds = kinds

    def _insert(self):
        return (postgresql.insert if self.db.engine.dialect.name == "postgresql" else sqlite.insert)(Job)

    # --- producing ----------------------------------------------------------------------

    def enqueue(
        self,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        team_id: int | None = None,
        dedupe_key: str | None = None,
        run_after: datetime | None = None,
    ) -> str | None:
        """Queue a job of a registered kind; returns its id, or None when a job with this
        ``dedupe_key`` exists already (a key names one piece of work, once)."""
        spec = self.kinds[kind]
        now = _now()
        values = dict(
            id=new_job_id(), kind=kind, status=QUEUED, team_id=team_id, payload=payload or {}, attempts=0,
            max_attempts=spec.max_attempts, dedupe_key=dedupe_key, cancel_requested=False,
            run_after=run_after or now, created_at=now, updated_at=now,
        )
        statement = self._insert().values(**values).on_conflict_do_nothing(index_elements=["dedupe_key"])
        with self.db.session() as s:
            return s.scalar(statement.returning(Job.id))

    def schedule_periodic(self, kind: str, now: datetime | None = None) -> str | None:
        """Queue the periodic ``kind``'s job of the current interval, unless one exists
        for it (its dedupe key names the interval: loops on many hosts insert it once) or
        an earlier one is still queued or running (no two runs of a kind overlap)."""
        spec = self.kinds[kind]
        assert spec.every is not None
        now = now or _now()
        slot = int(now.timestamp() // spec.every)
        slot_start = datetime.fromtimestamp(slot * spec.every, UTC)
        columns = {
            "id": literal(new_job_id()), "kind": literal(kind), "status": literal(QUEUED),
            "payload": literal({}, SAJSON), "attempts": literal(0), "max_attempts": literal(spec.max_attempts),
            "dedupe_key": literal(f"{kind}@{slot}"), "cancel_requested": literal(False),
            "run_after": literal(slot_start, Job.run_after.type), "created_at": literal(now, Job.created_at.type),
            "updated_at": literal(now, Job.updated_at.type),
        }
        source = select(*columns.values()).where(
            ~exists().where(Job.kind == kind, Job.status.in_(ACTIVE))
        )
        statement = self._insert().from_select(list(columns), source).on_conflict_do_nothing(index_elements=["dedupe_key"])
        with self.db.session() as s:
            # (RETURNING: the driver's rowcount of an INSERT ... SELECT is not the rows inserted.)
            return s.scalar(statement.returning(Job.id))

    # --- the loop's side ----------------------------------------------------------------

    def claim(self, worker_id: str, kinds: list[str], lease_seconds: float) -> ClaimedJob | None:
        if not kinds:
            return None
        now = _now()
        candidate = (
            select(Job.id)
            .where(Job.status == QUEUED, Job.run_after <= now, Job.kind.in_(kinds))
            .order_by(Job.run_after, Job.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        statement = (
            _update()
            .where(Job.id == candidate, Job.status == QUEUED)
            .values(
                status=RUNNING, attempts=Job.attempts + 1, worker_id=worker_id,
                leased_until=now + timedelta(seconds=lease_seconds), started_at=now, updated_at=now,
            )
            .returning(Job.id, Job.kind, Job.payload, Job.team_id, Job.attempts)
        )
        with self.db.session() as s:
            row = s.execute(statement).first()
        return ClaimedJob(row.id, row.kind, row.payload or {}, row.team_id, row.attempts) if row else None

    def renew(self, job_id: str, worker_id: str, lease_seconds: float) -> bool | None:
        """Extend the lease; returns whether cancellation was requested, or None when this
        worker no longer holds the job (its lease expired and the job moved on)."""
        now = _now()
        statement = (
            _update()
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == RUNNING)
            .values(leased_until=now + timedelta(seconds=lease_seconds), updated_at=now)
            .returning(Job.cancel_requested)
        )
        with self.db.session() as s:
            row = s.execute(statement).first()
        return None if row is None else bool(row.cancel_requested)

    def _write(self, *statements: Any) -> int:
        """Run the statements in one transaction; the rows they changed."""
        with self.db.session() as s:
            return sum(affected_rows(s.execute(statement)) for statement in statements)

    def _held(self, job_id: str, worker_id: str) -> Any:
        """An update of a job this worker runs: no effect once another loop has taken it."""
        return _update().where(Job.id == job_id, Job.worker_id == worker_id, Job.status == RUNNING)

    def succeed(self, job_id: str, worker_id: str, result: dict[str, Any] | None) -> bool:
        now = _now()
        return bool(self._write(self._held(job_id, worker_id).values(
            status=SUCCEEDED, result=result, error=None, leased_until=None, finished_at=now, updated_at=now
        )))

    def cancelled(self, job_id: str, worker_id: str) -> bool:
        now = _now()
        return bool(self._write(self._held(job_id, worker_id).values(
            status=CANCELLED, error="cancelled while running", leased_until=None, finished_at=now, updated_at=now
        )))

    def fail(self, job_id: str, worker_id: str, error: str, retry_delay: float) -> bool:
        """A failed attempt: back to the queue after ``retry_delay`` while attempts remain
        (and nobody asked to cancel it), else failed for good with this error."""
        error = error[:MAX_ERROR_CHARS]
        now = _now()
        retry = and_(Job.attempts < Job.max_attempts, Job.cancel_requested.is_(False))
        held = self._held(job_id, worker_id)
        return bool(self._write(
            held.where(~retry).values(status=FAILED, error=error, leased_until=None, finished_at=now, updated_at=now),
            # (a no-op when the first statement failed the job: it is no longer running)
            held.where(retry).values(status=QUEUED, error=error, worker_id=None, leased_until=None,
                                     run_after=now + timedelta(seconds=retry_delay), updated_at=now),
        ))

    def release(self, job_id: str, worker_id: str) -> bool:
        """A loop stopping gracefully hands its running job back; the attempt does not count."""
        return bool(self._write(self._held(job_id, worker_id).values(
            status=QUEUED, attempts=Job.attempts - 1, worker_id=None, leased_until=None, updated_at=_now()
        )))

    def reap(self) -> int:
        """Jobs whose loop stopped renewing the lease: cancelled if that was asked, failed
        when their attempts are used up, else queued again. Every loop runs it; the
        statements are idempotent, so loops racing here do no harm."""
        now = _now()
        expired = _update().where(Job.status == RUNNING, Job.leased_until < now)
        message = "the worker running it stopped renewing its lease (killed or lost)"
        ended = dict(error=message, leased_until=None, finished_at=now, updated_at=now)
        return self._write(
            expired.where(Job.cancel_requested.is_(True)).values(status=CANCELLED, **ended),
            expired.where(Job.attempts >= Job.max_attempts).values(status=FAILED, **ended),
            expired.values(status=QUEUED, error=message, worker_id=None, leased_until=None, run_after=now, updated_at=now),
        )

    def prune(self, older_than: timedelta) -> int:
        """Forget finished jobs older than ``older_than`` (the table holds recent history only)."""
        finished = delete(Job).where(Job.status.in_(FINISHED), Job.finished_at < _now() - older_than)
        return self._write(finished.execution_options(synchronize_session=False))

    # --- operators and team admins ------------------------------------------------------

    def _scoped(self, scope: Scope, job_id: str) -> list:
        if not JOB_ID.fullmatch(job_id):
            # Not one of ours: answered before the database sees it (PostgreSQL refuses NUL
            # characters with an error, not an empty result).
            raise NotFound(f"no job {job_id[:64]!r}", param="id")
        conditions = [Job.id == job_id]
        if not scope.is_operator:
            conditions.append(Job.team_id == scope.team_id)
        return conditions

    def get(self, scope: Scope, job_id: str) -> JobInfo:
        """The job, if the scope may see it; another team's job (or the server's own, to a
        team admin) is "not found" like an unknown id."""
        with self.db.session() as s:
            row = s.scalar(select(Job).where(*self._scoped(scope, job_id)))
        if row is None:
            raise NotFound(f"no job {job_id!r}", param="id")
        return JobInfo.of(row)

    def list(
        self,
        scope: Scope,
        *,
        team: str | None = None,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[JobInfo]:
        """The newest ``limit`` jobs the scope may see, newest first."""
        conditions = []
        team_id = scope.team_filter(self.teams, team)
        if team_id is not None:
            conditions.append(Job.team_id == team_id)
        if status is not None:
            if status not in STATUSES:
                raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", param="status")
            conditions.append(Job.status == status)
        if kind is not None:
            if not KIND_NAME.fullmatch(kind):
                raise InvalidRequest("kind: not a job kind name (lower-case letters, digits, '.', '_', '-')", param="kind")
            conditions.append(Job.kind == kind)
        with self.db.session() as s:
            rows = s.scalars(
                select(Job).where(*conditions).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
            ).all()
        return [JobInfo.of(row) for row in rows]

    def cancel(self, scope: Scope, job_id: str) -> JobInfo:
        """A queued job is cancelled at once; a running one gets a cancel request that its
        loop passes to the handler at its next lease renewal."""
        now = _now()
        job = _update().where(*self._scoped(scope, job_id))
        self._write(
            job.where(Job.status == QUEUED).values(
                status=CANCELLED, cancel_requested=True, error="cancelled before it ran", finished_at=now, updated_at=now
            ),
            job.where(Job.status == RUNNING, Job.cancel_requested.is_(False)).values(cancel_requested=True, updated_at=now),
        )
        info = self.get(scope, job_id)
        if info.status in (SUCCEEDED, FAILED):
            raise InvalidRequest(
                f"job {job_id} has already {info.status}; only queued or running jobs can be cancelled", param="id"
            )
        return info
