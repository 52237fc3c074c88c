"""The evals tables: evals, runs, and each run's items with their one result.

Everything a customer wrote or a model answered (definitions, run specs, rows, samples,
grader output) is sealed under the team's data key, bound to its row and column; what
stays in clear is what the queue needs (status, leases, counts, per-criterion
pass/fail booleans, token counts).

Items are the unit of work: a job loop claims a batch of pending items (or items whose
holder's lease expired) with one conditional UPDATE, and records each result with an
UPDATE conditional on still holding it. A loop that dies leaves its claims to expire;
another loop claims and generates them again, and whichever result lands first is the
item's one result (a late one from a lost claim changes nothing).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update

from ..errors import NotFound
from ..store.db import Database, affected_rows, aware_utc, new_id, utc_now
from ..store.keyring import Keyring, Sealed
from ..store.models import Eval, EvalItem, EvalRun

PENDING, CLAIMED, PASSED, FAILED, ERRORED = "pending", "claimed", "passed", "failed", "errored"
DONE = (PASSED, FAILED, ERRORED)
QUEUED, IN_PROGRESS, COMPLETED, CANCELED, RUN_FAILED = "queued", "in_progress", "completed", "canceled", "failed"
RUN_STATUSES = (QUEUED, IN_PROGRESS, COMPLETED, CANCELED, RUN_FAILED)
RUN_ACTIVE = (QUEUED, IN_PROGRESS)


@dataclass(frozen=True)
class EvalRecord:
    id: str
    team_id: int
    created_at: datetime
    updated_at: datetime
    definition: dict[str, Any]


@dataclass(frozen=True)
class RunRecord:
    id: str
    eval_id: str
    team_id: int
    key_id: str | None
    status: str
    total: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    spec: dict[str, Any]


@dataclass(frozen=True)
class RunCounts:
    passed: int
    failed: int
    errored: int
    total: int
    per_criterion: list[tuple[int, int]]  # (passed, failed) per testing criterion
    prompt_tokens: int
    completion_tokens: int
    generations: int

    @property
    def done(self) -> int:
        return self.passed + self.failed + self.errored


@dataclass(frozen=True)
class ItemRecord:
    run_id: str
    idx: int
    status: str
    row: dict[str, Any]
    result: dict[str, Any] | None
    generations: int
    updated_at: datetime


@dataclass(frozen=True)
class ItemResult:
    status: str  # passed | failed | errored
    passes: list[bool | None]
    result: dict[str, Any]  # sealed: sample, results, error
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EvalStore:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self.db = db
        self.keyring = keyring

    def _seal(self, team_id: int, value: Any, table: str, record: object, column: str) -> bytes:
        return self.keyring.seal(team_id, json.dumps(value), Sealed(table, record, column))

    def _open(self, team_id: int, blob: bytes, table: str, record: object, column: str) -> Any:
        return json.loads(self.keyring.open(team_id, blob, Sealed(table, record, column)))

    # --- evals ---------------------------------------------------------------------------

    def create_eval(self, team_id: int, definition: dict[str, Any]) -> EvalRecord:
        eval_id, now = new_id("eval", "_"), utc_now()
        row = Eval(id=eval_id, team_id=team_id, created_at=now, updated_at=now,
                   definition_sealed=self._seal(team_id, definition, "evals", eval_id, "definition"))
        with self.db.session() as s:
            s.add(row)
        return EvalRecord(eval_id, team_id, now, now, definition)

    def _eval(self, row: Eval) -> EvalRecord:
        definition = self._open(row.team_id, row.definition_sealed, "evals", row.id, "definition")
        return EvalRecord(row.id, row.team_id, aware_utc(row.created_at), aware_utc(row.updated_at), definition)

    def get_eval(self, team_id: int, eval_id: str) -> EvalRecord:
        with self.db.session() as s:
            row = s.scalar(select(Eval).where(Eval.id == eval_id, Eval.team_id == team_id))
        if row is None:
            raise NotFound(f"no eval {eval_id!r}", param="eval_id")
        return self._eval(row)

    def list_evals(self, team_id: int, *, after: str | None, limit: int, order: str, order_by: str) -> list[EvalRecord]:
        column = Eval.updated_at if order_by == "updated_at" else Eval.created_at
        conditions = [Eval.team_id == team_id]
        if after is not None:
            conditions.append(_after(Eval, column, self._cursor(Eval, column, team_id, after, "eval"), order))
        ordering = (column.desc(), Eval.id.desc()) if order == "desc" else (column.asc(), Eval.id.asc())
        with self.db.session() as s:
            rows = s.scalars(select(Eval).where(*conditions).order_by(*ordering).limit(limit)).all()
        return [self._eval(row) for row in rows]

    def _cursor(self, model, column, team_id: int, after: str, what: str):
        with self.db.session() as s:
            row = s.execute(select(column, model.id).where(model.id == after, model.team_id == team_id)).first()
        if row is None:
            raise NotFound(f"after: no {what} {after!r}", param="after")
        return row

    def update_eval(self, team_id: int, eval_id: str, changes: dict[str, Any]) -> EvalRecord:
        current = self.get_eval(team_id, eval_id)
        definition = {**current.definition, **changes}
        now = utc_now()
        with self.db.session() as s:
            s.execute(update(Eval).where(Eval.id == eval_id, Eval.team_id == team_id).values(
                updated_at=now, definition_sealed=self._seal(team_id, definition, "evals", eval_id, "definition")
            ).execution_options(synchronize_session=False))
        return EvalRecord(eval_id, team_id, current.created_at, now, definition)

    def delete_eval(self, team_id: int, eval_id: str) -> None:
        self.get_eval(team_id, eval_id)
        with self.db.session() as s:
            runs = select(EvalRun.id).where(EvalRun.eval_id == eval_id)
            s.execute(delete(EvalItem).where(EvalItem.run_id.in_(runs)).execution_options(synchronize_session=False))
            s.execute(delete(EvalRun).where(EvalRun.eval_id == eval_id).execution_options(synchronize_session=False))
            s.execute(delete(Eval).where(Eval.id == eval_id).execution_options(synchronize_session=False))

    def purge(self, retention_days, now: datetime | None = None) -> int:
        """Delete finished runs (with their output items) older than their team's
        retention (``retention_days(team_id)``); returns the runs deleted."""
        now = now or utc_now()
        with self.db.session() as s:
            teams = list(s.scalars(select(EvalRun.team_id).distinct()))
        deleted = 0
        for team_id in teams:
            cutoff = now - timedelta(days=retention_days(team_id))
            with self.db.session() as s:
                old = select(EvalRun.id).where(
                    EvalRun.team_id == team_id, EvalRun.created_at < cutoff, EvalRun.status.not_in(RUN_ACTIVE)
                )
                s.execute(delete(EvalItem).where(EvalItem.run_id.in_(old)).execution_options(synchronize_session=False))
                deleted += affected_rows(s.execute(
                    delete(EvalRun).where(EvalRun.id.in_(old.scalar_subquery())).execution_options(synchronize_session=False)
                ))
        return deleted

    def delete_team(self, team_id: int) -> dict[str, int]:
        """A ``TeamStore.on_delete`` hook: the team's evals, runs and output items."""
        with self.db.session() as s:
            s.execute(delete(EvalItem).where(EvalItem.team_id == team_id).execution_options(synchronize_session=False))
            s.execute(delete(EvalRun).where(EvalRun.team_id == team_id).execution_options(synchronize_session=False))
            return {"evals": affected_rows(s.execute(
                delete(Eval).where(Eval.team_id == team_id).execution_options(synchronize_session=False)
            ))}

    # --- runs ------------------------------------------------------------------------------

    def create_run(
        self, team_id: int, eval_id: str, key_id: str | None, spec: dict[str, Any], rows: Sequence[dict[str, Any]]
    ) -> RunRecord:
        run_id, now = new_id("evalrun", "_"), utc_now()
        with self.db.session() as s:
            s.add(EvalRun(id=run_id, eval_id=eval_id, team_id=team_id, key_id=key_id, status=QUEUED, total=len(rows),
                          created_at=now, updated_at=now,
                          spec_sealed=self._seal(team_id, spec, "eval_runs", run_id, "spec")))
            s.flush()
            s.execute(insert(EvalItem), [
                dict(run_id=run_id, idx=i, team_id=team_id, status=PENDING, generations=0, prompt_tokens=0,
                     completion_tokens=0, updated_at=now,
                     row_sealed=self._seal(team_id, row, "eval_items", f"{run_id}/{i}", "row"))
                for i, row in enumerate(rows)
            ])
        return RunRecord(run_id, eval_id, team_id, key_id, QUEUED, len(rows), None, now, now, spec)

    def _run(self, row: EvalRun) -> RunRecord:
        spec = self._open(row.team_id, row.spec_sealed, "eval_runs", row.id, "spec")
        return RunRecord(row.id, row.eval_id, row.team_id, row.key_id, row.status, row.total, row.error,
                         aware_utc(row.created_at), aware_utc(row.updated_at), spec)

    def get_run(self, team_id: int | None, eval_id: str | None, run_id: str) -> RunRecord:
        conditions = [EvalRun.id == run_id]
        if team_id is not None:
            conditions.append(EvalRun.team_id == team_id)
        if eval_id is not None:
            conditions.append(EvalRun.eval_id == eval_id)
        with self.db.session() as s:
            row = s.scalar(select(EvalRun).where(*conditions))
        if row is None:
            raise NotFound(f"no run {run_id!r}" + (f" of eval {eval_id!r}" if eval_id else ""), param="run_id")
        return self._run(row)

    def list_runs(
        self, team_id: int, eval_id: str, *, after: str | None, limit: int, order: str, status: str | None
    ) -> list[RunRecord]:
        conditions = [EvalRun.team_id == team_id, EvalRun.eval_id == eval_id]
        if status is not None:
            conditions.append(EvalRun.status == status)
        if after is not None:
            cursor = self._cursor(EvalRun, EvalRun.created_at, team_id, after, "run")
            conditions.append(_after(EvalRun, EvalRun.created_at, cursor, order))
        ordering = (
            (EvalRun.created_at.desc(), EvalRun.id.desc()) if order == "desc" else (EvalRun.created_at.asc(), EvalRun.id.asc())
        )
        with self.db.session() as s:
            rows = s.scalars(select(EvalRun).where(*conditions).order_by(*ordering).limit(limit)).all()
        return [self._run(row) for row in rows]

    def set_run_status(self, run_id: str, status: str, *, only_from: Sequence[str], error: str | None = None) -> bool:
        with self.db.session() as s:
            return bool(affected_rows(s.execute(
                update(EvalRun).where(EvalRun.id == run_id, EvalRun.status.in_(only_from))
                .values(status=status, error=error, updated_at=utc_now()).execution_options(synchronize_session=False)
            )))

    def delete_run(self, team_id: int, eval_id: str, run_id: str) -> None:
        self.get_run(team_id, eval_id, run_id)
        with self.db.session() as s:
            s.execute(delete(EvalItem).where(EvalItem.run_id == run_id).execution_options(synchronize_session=False))
            s.execute(delete(EvalRun).where(EvalRun.id == run_id).execution_options(synchronize_session=False))

    def counts(self, run_id: str, criteria: int) -> RunCounts:
        with self.db.session() as s:
            by_status = dict(s.execute(
                select(EvalItem.status, func.count()).where(EvalItem.run_id == run_id).group_by(EvalItem.status)
            ).all())
            tokens = s.execute(select(
                func.coalesce(func.sum(EvalItem.prompt_tokens), 0), func.coalesce(func.sum(EvalItem.completion_tokens), 0),
                func.coalesce(func.sum(EvalItem.generations), 0),
            ).where(EvalItem.run_id == run_id)).one()
            passes = s.scalars(
                select(EvalItem.passes).where(EvalItem.run_id == run_id, EvalItem.status.in_(DONE))
            ).all()
        per = [[0, 0] for _ in range(criteria)]
        for row in passes:
            for i, passed in enumerate((row or [])[:criteria]):
                if passed is True:
                    per[i][0] += 1
                elif passed is False:
                    per[i][1] += 1
        return RunCounts(
            passed=by_status.get(PASSED, 0), failed=by_status.get(FAILED, 0), errored=by_status.get(ERRORED, 0),
            total=sum(by_status.values()), per_criterion=[(p, f) for p, f in per],
            prompt_tokens=int(tokens[0]), completion_tokens=int(tokens[1]), generations=int(tokens[2]),
        )

    # --- items: the work queue ---------------------------------------------------------------

    def claim(self, run_id: str, worker: str, limit: int, lease_seconds: float) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` items of the run that are pending or whose claim expired, now
        held by ``worker``; each counts one more generation."""
        if limit <= 0:
            return []
        now = utc_now()
        claimable = or_(EvalItem.status == PENDING, and_(EvalItem.status == CLAIMED, EvalItem.claimed_until < now))
        # Two statements in one transaction, not UPDATE ... WHERE idx IN (SELECT ... LIMIT n
        # FOR UPDATE SKIP LOCKED): PostgreSQL may run such a subquery once per outer row,
        # each run skipping the rows the previous ones locked, so one claim took a whole
        # run. The UPDATE re-checks claimability, which keeps SQLite (no row locks) exact.
        chosen = (
            select(EvalItem.idx).where(EvalItem.run_id == run_id, claimable)
            .order_by(EvalItem.idx).limit(limit).with_for_update(skip_locked=True)
        )
        with self.db.session() as s:
            indices = list(s.scalars(chosen))
            if not indices:
                return []
            rows = s.execute(
                update(EvalItem)
                .where(EvalItem.run_id == run_id, EvalItem.idx.in_(indices), claimable)
                .values(status=CLAIMED, claimed_by=worker, claimed_until=now + timedelta(seconds=lease_seconds),
                        generations=EvalItem.generations + 1, updated_at=now)
                .returning(EvalItem.idx, EvalItem.team_id, EvalItem.row_sealed)
                .execution_options(synchronize_session=False)
            ).all()
        return sorted(
            (idx, self._open(team_id, blob, "eval_items", f"{run_id}/{idx}", "row")) for idx, team_id, blob in rows
        )

    def renew(self, run_id: str, worker: str, indices: Sequence[int], lease_seconds: float) -> None:
        if not indices:
            return
        with self.db.session() as s:
            s.execute(update(EvalItem).where(
                EvalItem.run_id == run_id, EvalItem.idx.in_(list(indices)), EvalItem.status == CLAIMED,
                EvalItem.claimed_by == worker,
            ).values(claimed_until=utc_now() + timedelta(seconds=lease_seconds)).execution_options(synchronize_session=False))

    def finish(self, run_id: str, team_id: int, idx: int, worker: str, outcome: ItemResult) -> bool:
        """Record the item's one result, if this worker still holds it; else nothing changes."""
        sealed = self._seal(team_id, outcome.result, "eval_items", f"{run_id}/{idx}", "result")
        with self.db.session() as s:
            return bool(affected_rows(s.execute(
                update(EvalItem).where(
                    EvalItem.run_id == run_id, EvalItem.idx == idx, EvalItem.status == CLAIMED, EvalItem.claimed_by == worker
                ).values(
                    status=outcome.status, passes=outcome.passes, result_sealed=sealed, claimed_by=None, claimed_until=None,
                    prompt_tokens=EvalItem.prompt_tokens + outcome.prompt_tokens,
                    completion_tokens=EvalItem.completion_tokens + outcome.completion_tokens, updated_at=utc_now(),
                ).execution_options(synchronize_session=False)
            )))

    def add_tokens(self, run_id: str, idx: int, prompt_tokens: int, completion_tokens: int) -> None:
        """A generation whose result was not recorded (lost claim) still used tokens."""
        with self.db.session() as s:
            s.execute(update(EvalItem).where(EvalItem.run_id == run_id, EvalItem.idx == idx).values(
                prompt_tokens=EvalItem.prompt_tokens + prompt_tokens,
                completion_tokens=EvalItem.completion_tokens + completion_tokens,
            ).execution_options(synchronize_session=False))

    def unfinished(self, run_id: str) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).where(EvalItem.run_id == run_id, EvalItem.status.not_in(DONE))) or 0)

    def items(
        self, team_id: int, run_id: str, *, after: int | None, limit: int, order: str, status: str | None
    ) -> list[ItemRecord]:
        conditions = [EvalItem.run_id == run_id, EvalItem.team_id == team_id]
        if status == "pass":
            conditions.append(EvalItem.status == PASSED)
        elif status == "fail":
            conditions.append(EvalItem.status.in_((FAILED, ERRORED)))
        else:
            conditions.append(EvalItem.status.in_(DONE))
        if after is not None:
            conditions.append(EvalItem.idx < after if order == "desc" else EvalItem.idx > after)
        ordering = EvalItem.idx.desc() if order == "desc" else EvalItem.idx.asc()
        with self.db.session() as s:
            rows = s.scalars(select(EvalItem).where(*conditions).order_by(ordering).limit(limit)).all()
        return [self._item(row) for row in rows]

    def item(self, team_id: int, run_id: str, idx: int) -> ItemRecord:
        with self.db.session() as s:
            row = s.scalar(select(EvalItem).where(
                EvalItem.run_id == run_id, EvalItem.idx == idx, EvalItem.team_id == team_id, EvalItem.status.in_(DONE)
            ))
        if row is None:
            raise NotFound(f"no output item {idx} in run {run_id!r}", param="output_item_id")
        return self._item(row)

    def _item(self, row: EvalItem) -> ItemRecord:
        where = f"{row.run_id}/{row.idx}"
        data = self._open(row.team_id, row.row_sealed, "eval_items", where, "row")
        result = self._open(row.team_id, row.result_sealed, "eval_items", where, "result") if row.result_sealed else None
        return ItemRecord(row.run_id, row.idx, row.status, data, result, row.generations, aware_utc(row.updated_at))


def _after(model, column, cursor, order: str):
    value, ident = cursor
    if order == "desc":
        return or_(column < value, and_(column == value, model.id < ident))
    return or_(column > value, and_(column == value, model.id > ident))
