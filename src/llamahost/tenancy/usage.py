"""Usage records: one row per chat request that reached the service, however it ended
(``ok``, ``cancelled`` when the client went away, or the error type that ended it).

The request's ``user`` is PII: stored encrypted under the team's data key with a
per-team blind index to filter by; the rest (times, model, tokens, status) is metadata
in the clear. Stored content (``tenancy/content.py``) rides the same batched writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidRequest
from ..store.crypto import CryptoError
from ..store.db import Database, aware_utc
from ..store.keyring import Keyring, Sealed
from ..store.models import StoredRequest, UsageRecord
from .scope import Scope, user_filter
from .teams import TeamStore
from .usage_summary import UsageSummary, summarize_usage

if TYPE_CHECKING:
    from .content import ContentStore, PendingContent

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
    try:
        if relative:
            amount, unit = relative.groups()
            return datetime.now(UTC) - timedelta(**{_UNITS[unit]: float(amount)})
        moment = datetime.fromisoformat(value.strip())
        # As UTC: SQLite compares the stored UTC text, so another offset would shift the range.
        return aware_utc(moment).astimezone(UTC)
    except OverflowError:
        # An age before year 1, or a time whose UTC falls outside years 1-9999.
        raise InvalidRequest(f"{param}: {value!r} is out of the range of dates (years 1 to 9999)", param=param) from None
    except ValueError:
        raise InvalidRequest(
            f"{param}: expected an ISO 8601 time (2025-01-31, 2025-01-31T12:00:00Z) or an age (30m, 24h, 7d), "
            f"got {value!r}",
            param=param,
        ) from None


def new_record_id() -> str:
    """128 random bits as 32 hex digits (a third of the cost of uuid4().hex, on every request)."""
    return os.urandom(16).hex()


@dataclass(frozen=True)
class UsageEntry:
    id: str  # the record id; a stored request of the same call has the same id
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
    kind: str = "chat"

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
    def __init__(self, db: Database, keyring: Keyring, teams: TeamStore) -> None:
        self.db = db
        self.keyring = keyring
        self.teams = teams

    def _sealed(self, row: dict[str, Any]) -> dict[str, Any]:
        row = dict(row)  # the queued row stays as it was, for a retry
        user = row.pop("user")
        row["user_index"] = row["user_sealed"] = None
        if user is not None:
            team_id = row["team_id"]
            try:
                row["user_index"] = self.keyring.user_index(team_id, user)
                row["user_sealed"] = self.keyring.seal(team_id, user, Sealed.usage_user(row["record_id"]))
            except CryptoError as exc:  # the team was deleted meanwhile: its users are shredded
                log.warning("usage record of team %d stored without its user: %s", team_id, exc)
        return row

    def write_rows(self, rows: list[dict[str, Any]], content_rows: Sequence[dict[str, Any]] = ()) -> None:
        """Insert usage rows (``user`` encrypted here) and already encrypted stored-content
        rows, in one transaction."""
        sealed = [self._sealed(row) for row in rows]
        with self.db.session() as s:
            if sealed:
                s.execute(insert(UsageRecord), sealed)
            if content_rows:
                s.execute(insert(StoredRequest), content_rows)

    def summary(self, scope: Scope, **filters: Any) -> UsageSummary:
        """Aggregates over a time range; see ``summarize_usage``."""
        return summarize_usage(self, scope, **filters)

    def query(
        self,
        scope: Scope,
        *,
        team: str | None = None,
        user: str | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> tuple[list[UsageEntry], UsageTotals]:
        """The newest ``limit`` matching records the scope may see (oldest first) and totals over all matches."""
        team_id = scope.team_filter(self.teams, team)
        conditions = [UsageRecord.team_id == team_id] if team_id is not None else []
        if user is not None:
            team_ids = [team_id] if team_id is not None else [t.id for t in self.teams.list()]
            conditions.append(user_filter(self.keyring, team_ids, user, UsageRecord.team_id, UsageRecord.user_index))
        if model is not None:
            conditions.append(UsageRecord.model == model)
        if since is not None:
            conditions.append(UsageRecord.created_at >= since)
        if until is not None:
            conditions.append(UsageRecord.created_at < until)
        with self.db.session() as s:
            rows = s.scalars(
                select(UsageRecord)
                .where(*conditions)
                .order_by(UsageRecord.created_at.desc(), UsageRecord.id.desc())
                .limit(limit)
            ).all()
            count, prompt, completion = s.execute(
                select(
                    func.count(UsageRecord.id),
                    func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
                    func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
                ).where(*conditions)
            ).one()
        entries = [
            UsageEntry(
                id=r.record_id,
                created_at=aware_utc(r.created_at),
                team=self.teams.name(r.team_id),
                key_id=r.key_id,
                model=r.model,
                user=self._user(r),
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                latency_ms=r.latency_ms,
                status=r.status,
                stop_reason=r.stop_reason,
                kind=r.kind,
            )
            for r in reversed(rows)
        ]
        return entries, UsageTotals(int(count), int(prompt), int(completion))

    def _user(self, row: UsageRecord) -> str | None:
        if row.user_sealed is None or self.teams.is_deleted(row.team_id):
            return None  # none sent, or shredded with the team
        return self.keyring.open(row.team_id, row.user_sealed, Sealed.usage_user(row.record_id))


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
    record_id: str | None = None,
    kind: str = "chat",
) -> dict:
    return {
        "record_id": record_id or new_record_id(),
        "created_at": datetime.now(UTC),
        "team_id": team_id,
        "key_id": key_id,
        "model": model,
        "user": user,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_ms": round(latency_ms),
        "status": status,
        "stop_reason": stop_reason,
        "kind": kind,
    }


class UsageWriter:
    """Queues usage records and stored content in the event loop and writes them in
    batches from a thread (where the encryption happens too)."""

    def __init__(self, store: UsageStore, content: ContentStore | None = None) -> None:
        self.store = store
        self.content = content
        self._pending: list[dict] = []
        self._pending_content: list[PendingContent] = []
        self._flusher: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def record(self, *, content: PendingContent | None = None, **fields) -> None:
        """Queue one usage record (fields as ``usage_row``) and, if given, the
        call's content under the same record id; never blocks."""
        if content is not None:
            fields["record_id"] = content.record_id
            self._queue_content(content)
        self._pending.append(usage_row(**fields))
        self._bound(self._pending, "usage records")
        self._schedule()

    def _queue_content(self, content: PendingContent) -> None:
        if self.content is not None:
            self._pending_content.append(content)
            self._bound(self._pending_content, "stored requests")

    @staticmethod
    def _bound(pending: list, what: str) -> None:
        if len(pending) > MAX_PENDING:
            dropped = len(pending) - MAX_PENDING
            del pending[:dropped]
            log.error("%s: the database has refused writes for a while; dropped %d", what, dropped)

    def _schedule(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), FLUSH_SECONDS)
        except TimeoutError:
            pass
        self._wake.clear()
        await self._write_pending()

    def _write(self, rows: list[dict], contents: list[PendingContent]) -> None:
        content_rows = self.content.rows(contents) if self.content is not None and contents else []
        self.store.write_rows(rows, content_rows)

    async def _write_pending(self) -> None:
        while self._pending or self._pending_content:
            rows, self._pending = self._pending, []
            contents, self._pending_content = self._pending_content, []
            try:
                await run_in_threadpool(self._write, rows, contents)
            except Exception:
                log.exception(
                    "could not write %d usage records and %d stored requests; they are kept for the next attempt",
                    len(rows), len(contents),
                )
                self._pending[:0] = rows
                self._pending_content[:0] = contents
                return

    async def flush(self) -> None:
        """Write everything queued so far (read-your-writes for queries; shutdown)."""
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            self._wake.set()
            await asyncio.shield(flusher)
        await self._write_pending()
