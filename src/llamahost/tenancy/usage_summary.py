"""Usage aggregated for a report or a dashboard: requests, tokens and rate-limit
rejections per model over time buckets, per model, and per end user (``user``).

Aggregated in the database (GROUP BY), so a report over months of records reads a
few hundred rows, not the records themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, func, select

from ..protocol.errors import InvalidRequest
from ..store.db import Database
from ..store.functions import epoch_seconds
from ..store.models import Team, UsageRecord

# The status a usage record gets when a rate limit refused its request (RateLimited.error_type).
RATE_LIMITED_STATUS = "rate_limit_error"
DEFAULT_WINDOW = timedelta(hours=24)
DEFAULT_BUCKET_SECONDS = 3600
MAX_BUCKETS = 1000
MAX_TOP_USERS = 100

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_bucket(value: str, param: str = "bucket") -> int:
    """A bucket width: whole seconds, or an amount with a unit (``5m``, ``1h``, ``1d``)."""
    match = _DURATION.match(value)
    seconds = int(match.group(1)) * _SECONDS[match.group(2)] if match else 0
    if seconds < 1:
        raise InvalidRequest(
            f"{param}: expected a duration such as 60, 5m, 1h or 1d, got {value!r}", param=param
        )
    return seconds


@dataclass(frozen=True)
class Counts:
    requests: int = 0  # every record, rate-limited ones included
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rate_limited: int = 0  # records of requests a rate limit refused (429)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Bucket:
    start: datetime  # a multiple of the bucket width since the epoch, UTC
    model: str
    counts: Counts


@dataclass(frozen=True)
class UsageSummary:
    since: datetime
    until: datetime
    bucket_seconds: int
    buckets: list[Bucket]  # only (start, model) pairs with records, by start then model
    models: list[tuple[str, Counts]]  # by requests, most first
    users: list[tuple[str, Counts]]  # the top end users by requests; records without `user` are left out
    totals: Counts


def _counts(requests, prompt, completion, rate_limited) -> Counts:
    return Counts(int(requests), int(prompt or 0), int(completion or 0), int(rate_limited or 0))


def summarize_usage(
    db: Database,
    *,
    team: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    bucket_seconds: int = DEFAULT_BUCKET_SECONDS,
    top_users: int = 10,
) -> UsageSummary:
    until = until or datetime.now(UTC)
    since = since or until - DEFAULT_WINDOW
    if since >= until:
        raise InvalidRequest("since must be earlier than until", param="since")
    buckets = (until - since).total_seconds() / bucket_seconds
    if buckets > MAX_BUCKETS:
        raise InvalidRequest(
            f"bucket: {bucket_seconds} s buckets over this range make {int(buckets) + 1} buckets, "
            f"more than {MAX_BUCKETS}; widen the bucket or shorten the range",
            param="bucket",
        )
    if not 0 <= top_users <= MAX_TOP_USERS:
        raise InvalidRequest(f"top_users must be 0 to {MAX_TOP_USERS}", param="top_users")

    conditions = [UsageRecord.created_at >= since, UsageRecord.created_at < until]
    if team is not None:
        conditions.append(Team.name == team)
    measures = (
        func.count(UsageRecord.id),
        func.sum(UsageRecord.prompt_tokens),
        func.sum(UsageRecord.completion_tokens),
        func.sum(case((UsageRecord.status == RATE_LIMITED_STATUS, 1), else_=0)),
    )
    # Floor division: SQLAlchemy 2 renders `//` as integer division on both dialects.
    start = (epoch_seconds(UsageRecord.created_at) // bucket_seconds) * bucket_seconds
    with db.session() as s:
        by_bucket = s.execute(
            select(start.label("start"), UsageRecord.model, *measures)
            .join(Team)
            .where(*conditions)
            .group_by(start, UsageRecord.model)
            .order_by(start, UsageRecord.model)
        ).all()
        by_model = s.execute(
            select(UsageRecord.model, *measures)
            .join(Team)
            .where(*conditions)
            .group_by(UsageRecord.model)
            .order_by(func.count(UsageRecord.id).desc(), UsageRecord.model)
        ).all()
        by_user = (
            s.execute(
                select(UsageRecord.end_user, *measures)
                .join(Team)
                .where(*conditions, UsageRecord.end_user.is_not(None))
                .group_by(UsageRecord.end_user)
                .order_by(func.count(UsageRecord.id).desc(), UsageRecord.end_user)
                .limit(top_users)
            ).all()
            if top_users
            else []
        )
        totals = s.execute(select(*measures).join(Team).where(*conditions)).one()
    return UsageSummary(
        since=since,
        until=until,
        bucket_seconds=bucket_seconds,
        buckets=[
            Bucket(datetime.fromtimestamp(int(row[0]), UTC), row[1], _counts(*row[2:])) for row in by_bucket
        ],
        models=[(row[0], _counts(*row[1:])) for row in by_model],
        users=[(row[0], _counts(*row[1:])) for row in by_user],
        totals=_counts(*totals),
    )
