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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import DataError, IntegrityError
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidRequest
from ..store.crypto import CryptoError
from ..store.db import Database, aware_utc
from ..store.keyring import Keyring, Sealed
from ..store.models import StoredRequest, UsageRecord
from .journal import UsageJournal
from .scope import Scope, user_filter
from .teams import TeamStore
from .usage_summary import UsageSummary, summarize_usage

if TYPE_CHECKING:
    from .content import ContentStore, PendingContent

log = logging.getLogger(__name__)

# Usage records are written in batches, off the request path: one INSERT of many rows
# costs about what one row costs, and a request does not wait for the database. A
# record reaches the database within FLUSH_SECONDS; shutdown writes what is pending;
# the journal (tenancy/journal.py) keeps it across a crash meanwhile.
FLUSH_SECONDS = 0.05
# How often refused batches and dead processes' journals are replayed.
RETRY_SECONDS = 2.0
# Stored content (and usage rows the journal could not take) kept in memory for a
# retry while the database refuses writes; beyond it the oldest go (and the loss is
# logged) rather than the process growing without bound. Journalled usage rows wait
# on disk instead.
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
        """Insert usage rows (``user`` encrypted here; a record id already stored is
        skipped, so a replayed journal counts nothing twice) and already encrypted
        stored-content rows, in one transaction."""
        sealed = [self._sealed(row) for row in rows]
        try:
            self._insert(sealed, content_rows)
        except (DataError, IntegrityError) as exc:
            if len(sealed) + len(content_rows) == 1:
                raise
            # A row the database will never take (a constraint it breaks) must not hold
            # back the rest of its batch, nor be retried forever: each on its own.
            log.warning("a batch of usage was refused (%s); writing its rows one by one", exc.orig)
            for row in sealed:
                self._insert_alone([row], (), f"usage record {row['record_id']}")
            for content_row in content_rows:
                self._insert_alone([], [content_row], f"stored request {content_row.get('id')}")

    def _insert(self, sealed: Sequence[dict[str, Any]], content_rows: Sequence[dict[str, Any]]) -> None:
        with self.db.session() as s:
            if sealed:
                s.execute(self.db.insert_if_absent(UsageRecord, "record_id"), sealed)
            if content_rows:
                s.execute(insert(StoredRequest), content_rows)

    def _insert_alone(self, sealed: Sequence[dict[str, Any]], content_rows: Sequence[dict[str, Any]], what: str) -> None:
        try:
            self._insert(sealed, content_rows)
        except (DataError, IntegrityError) as exc:
            log.error("%s refused by the database, dropped: %s", what, exc.orig)

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
    batches from a thread (where the encryption happens too).

    With a journal (``tenancy/journal.py``; every server has one), a record is
    journalled the moment it is queued, which is before its response's last byte: a
    ``kill -9`` cannot lose it. A batch the database refuses leaves memory and waits in
    its journal segment, replayed every ``RETRY_SECONDS`` until the database takes it."""

    def __init__(self, store: UsageStore, content: ContentStore | None = None, journal: UsageJournal | None = None) -> None:
        self.store = store
        self.content = content
        self.journal = journal
        self._pending: list[dict] = []  # the records of the journal's open segment
        self._unjournalled: list[dict] = []  # no journal, or it failed (a full disk): memory only
        self._pending_content: list[PendingContent] = []
        self._backlog: list[Path] = []  # this process's segments the database refused
        self._flusher: asyncio.Task | None = None
        self._maintainer: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def record(self, *, content: PendingContent | None = None, **fields) -> None:
        """Queue one usage record (fields as ``usage_row``) and, if given, the
        call's content under the same record id; never blocks (one ``write()`` to the
        page cache)."""
        if content is not None:
            fields["record_id"] = content.record_id
            self._queue_content(content)
        row = usage_row(**fields)
        if self.journal is None:
            self._unjournalled.append(row)
        else:
            try:
                self.journal.append(row)
                self._pending.append(row)
            except OSError as exc:
                log.error("usage journal: %s; the record is kept in memory only until it is written", exc)
                self._unjournalled.append(row)
        self._bound(self._unjournalled, "usage records")
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

    def _write(self, rows: list[dict], contents: list[PendingContent], segment: Path | None) -> None:
        content_rows = self.content.rows(contents) if self.content is not None and contents else []
        self.store.write_rows(rows, content_rows)
        if segment is not None:
            segment.unlink(missing_ok=True)  # committed: its journal copy has served

    async def _write_pending(self) -> None:
        while self._pending or self._unjournalled or self._pending_content:
            # Cut on the loop, with the swap: the segment holds exactly these rows.
            segment = self.journal.cut() if self.journal is not None else None
            journalled, self._pending = self._pending, []
            unjournalled, self._unjournalled = self._unjournalled, []
            contents, self._pending_content = self._pending_content, []
            try:
                await run_in_threadpool(self._write, journalled + unjournalled, contents, segment)
            except Exception:
                log.exception(
                    "could not write %d usage records and %d stored requests; %d wait in the journal for the "
                    "next attempt, %d in memory",
                    len(journalled) + len(unjournalled), len(contents), len(journalled), len(unjournalled),
                )
                if segment is not None:
                    self._backlog.append(segment)
                else:
                    self._unjournalled[:0] = journalled
                self._unjournalled[:0] = unjournalled
                self._pending_content[:0] = contents
                return

    async def _replay_backlog(self) -> None:
        if self.journal is None or not self._backlog:
            return
        try:
            replayed = await run_in_threadpool(self.journal.replay, list(self._backlog), self.store.write_rows)
            log.info("usage journal: %d records the database had refused are written now", replayed)
        except Exception as exc:
            log.warning("usage journal: %d segments still wait for the database: %s", len(self._backlog), exc)
        finally:
            self._backlog = [path for path in self._backlog if path.exists()]

    async def recover(self) -> int:
        """Replay the journals of processes that died before writing their records
        (at start, then every ``RETRY_SECONDS``); returns how many were replayed."""
        if self.journal is None:
            return 0
        try:
            return await run_in_threadpool(self.journal.recover, self.store.write_rows)
        except Exception as exc:
            log.warning("usage journal: the records of a dead process wait for the database: %s", exc)
            return 0

    async def start(self) -> None:
        """Recover what dead processes left, then keep retrying in the background."""
        await self.recover()
        if self.journal is not None and self._maintainer is None:
            self._maintainer = asyncio.ensure_future(self._maintain())

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(RETRY_SECONDS)
            await self._replay_backlog()
            await self.recover()

    async def flush(self) -> None:
        """Write everything queued so far (read-your-writes for queries; shutdown)."""
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            self._wake.set()
            await asyncio.shield(flusher)
        await self._write_pending()
        await self._replay_backlog()

    async def close(self) -> None:
        """Write what is queued; the journal goes if everything is written, else it stays
        for the next process to replay."""
        if self._maintainer is not None:
            self._maintainer.cancel()
            self._maintainer = None
        await self.flush()
        if self.journal is not None:
            self.journal.close(clean=not (self._pending or self._unjournalled or self._backlog))
            self.journal = None
