"""Usage records: one row per chat request that reached the service, however it ended
(``ok``, ``cancelled`` when the client went away, or the error type that ended it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from ..protocol.errors import InvalidRequest
from ..store.db import Database, aware_utc
from ..store.models import Team, UsageRecord

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
    return aware_utc(moment)


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

    def record(
        self,
        *,
        team_id: int,
        key_id: str | None,
        model: str,
        user: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: float,
        status: str,
        stop_reason: str | None,
    ) -> None:
        with self.db.session() as s:
            s.add(
                UsageRecord(
                    created_at=datetime.now(UTC),
                    team_id=team_id,
                    key_id=key_id,
                    model=model,
                    end_user=user,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    latency_ms=round(latency_ms),
                    status=status,
                    stop_reason=stop_reason,
                )
            )

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
