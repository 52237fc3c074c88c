"""Usage records: one row per chat request that reached the service, however it ended
(``ok``, ``cancelled`` when the client went away, or the error type that ended it)."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select
from starlette.concurrency import run_in_threadpool

from ..protocol.errors import InvalidRequest
from ..store.db import Database, aware_utc
from ..store.models import Team, UsageRecord
from .usage_summary import UsageSummary, summarize_usage

log = logging.getLogger(__name__)

# Usage records are written in batches, off the request path: one INSERT of many rows
# costs about what one row costs, and a request does not wait for the database. A
# record reaches the database within FLUSH_SECONDS; shutdown writes what is pending.
FLUSH_SECONDS = 0.05
# Rows kept for a retry while the database refuses writes; beyond it the oldest go
# (and the loss is logged) rather than the process growing without bound.
MAX_PENDING = 100_000

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str, param: str = "since") -> datetime:
    """An ISO 8601 date/time (naive means UTC) or an age like ``30m``, ``24h``, ``7d``."""
    relative = _RELATIVE.match(value)
    if relative:
        amount, unit = relative.groups()
        return datetime.now(UTC) - timedelta(**{_UNITS[unit]: float(amount)})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRequest(
            f"{param}: expected an ISO 8601 time (2025-01-31, 2025-01-31T12:00:00Z) or an age (30m, 24h, 7d), "
            f"got {value!r}",
            param=param,
        ) from None
    # As UTC: SQLite compares the stored UTC text, so another offset would shift the range.
    return aware_utc(moment).astimezone(UTC)


@dataclass(frozen=True)
class UsageEntry:
    created_at: datetime
    team: str
    key_id: str | None
    model: str
    user: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    status: str
    stop_reason: str | None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def write_rows(self, rows: list[dict]) -> None:
        with self.db.session() as s:
            s.execute(insert(UsageRecord), rows)

    def summary(self, **filters) -> UsageSummary:
        """Aggregates over a time range; see ``summarize_usage``."""
        return summarize_usage(self.db, **filters)

    def query(
        self,
        *,
        team: str | None = None,
        user: str | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> tuple[list[UsageEntry], UsageTotals]:
        """The newest ``limit`` matching records (oldest first) and totals over all matches."""
        conditions = []
        if team is not None:
            conditions.append(Team.name == team)
        if user is not None:
            conditions.append(UsageRecord.end_user == user)
        if model is not None:
            conditions.append(UsageRecord.model == model)
        if since is not None:
            conditions.append(UsageRecord.created_at >= since)
        if until is not None:
            conditions.append(UsageRecord.created_at < until)
        with self.db.session() as s:
            rows = s.execute(
                select(UsageRecord, Team.name)
                .join(Team)
                .where(*conditions)
                .order_by(UsageRecord.created_at.desc(), UsageRecord.id.desc())
                .limit(limit)
            ).all()
            count, prompt, completion = s.execute(
                select(
                    func.count(UsageRecord.id),
                    func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
                    func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
                )
                .join(Team)
                .where(*conditions)
            ).one()
        entries = [
            UsageEntry(
                created_at=aware_utc(r.created_at),
                team=team_name,
                key_id=r.key_id,
                model=r.model,
                user=r.end_user,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                latency_ms=r.latency_ms,
                status=r.status,
                stop_reason=r.stop_reason,
            )
            for r, team_name in reversed(rows)
        ]
        return entries, UsageTotals(int(count), int(prompt), int(completion))


def usage_row(
    team_id: int,
    key_id: str | None,
    model: str,
    user: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    latency_ms: float,
    status: str,
    stop_reason: str | None,
) -> dict:
    return {
        "created_at": datetime.now(UTC),
        "team_id": team_id,
        "key_id": key_id,
        "model": model,
        "end_user": user,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_ms": round(latency_ms),
        "status": status,
        "stop_reason": stop_reason,
    }


class UsageWriter:
    """Queues usage records in the event loop and writes them in batches from a thread."""

    def __init__(self, store: UsageStore) -> None:
        self.store = store
        self._pending: list[dict] = []
        self._flusher: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def record(self, **fields) -> None:
        """Queue one record (same fields as ``UsageStore.record``); never blocks."""
        self._pending.append(usage_row(**fields))
        if len(self._pending) > MAX_PENDING:
            dropped = len(self._pending) - MAX_PENDING
            del self._pending[:dropped]
            log.error("usage records: the database has refused writes for a while; dropped %d records", dropped)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), FLUSH_SECONDS)
        except TimeoutError:
            pass
        self._wake.clear()
        await self._write_pending()

    async def _write_pending(self) -> None:
        while self._pending:
            rows, self._pending = self._pending, []
            try:
                await run_in_threadpool(self.store.write_rows, rows)
            except Exception:
                log.exception("could not write %d usage records; they are kept for the next attempt", len(rows))
                self._pending[:0] = rows
                return

    async def flush(self) -> None:
        """Write everything queued so far (read-your-writes for queries; shutdown)."""
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            self._wake.set()
            await asyncio.shield(flusher)
        await self._write_pending()
