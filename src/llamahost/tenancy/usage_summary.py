"""Usage aggregated for a report or a dashboard: requests, tokens and rate-limit
rejections per model over time buckets, per model, and per end user (``user``).

Aggregated in the database (GROUP BY), so a report over months of records reads a
few hundred rows, not the records themselves. ``user`` is encrypted: end users are
grouped by their blind index (per team: the same ``user`` in two teams is two end
users), and only the top ones are decrypted, from one record each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import ColumnElement, case, func, select

from ..errors import InvalidRequest
from ..store.db import Database
from ..store.functions import epoch_seconds
from ..store.keyring import Keyring, Sealed
from ..store.models import StoredFile, Team, UsageRecord
from .scope import Scope
from .teams import TeamStore

# The status a usage record gets when a rate limit refused its request (RateLimited.error_type).
RATE_LIMITED_STATUS = "rate_limit_error"
DEFAULT_WINDOW = timedelta(hours=24)
DEFAULT_BUCKET_SECONDS = 3600
MAX_BUCKETS = 1000
MAX_TOP_USERS = 100
# A century: wider than any useful range, and small enough for the database's integers.
MAX_BUCKET_SECONDS = 100 * 365 * 86400

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
    if seconds > MAX_BUCKET_SECONDS:
        raise InvalidRequest(f"{param}: at most {MAX_BUCKET_SECONDS} seconds (100 years), got {value!r}", param=param)
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
class Storage:
    files: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Bucket:
    start: datetime  # a multiple of the bucket width since the epoch, UTC
    model: str
    counts: Counts



class UsageSource(Protocol):
    """What a summary reads (the usage store has it): declared here so the store can
    offer summaries without this module importing the store back."""

    db: Database
    keyring: Keyring
    teams: TeamStore


@dataclass(frozen=True)
class UsageSummary:
    since: datetime
    until: datetime
    bucket_seconds: int
    buckets: list[Bucket]  # only (start, model) pairs with records, by start then model
    models: list[tuple[str, Counts]]  # by requests, most first
    # The top end users by requests, as (user, team, counts); records without `user` (or
    # of deleted teams, whose users are shredded) are left out.
    users: list[tuple[str, str, Counts]]
    totals: Counts
    storage: Storage = Storage()  # uploaded files kept now (not a count of requests)


def _storage(session, team_id: int | None) -> Storage:
    """The scope's uploaded files as they are now, whatever the window: storage is held,
    not spent per request."""
    query = select(func.count(StoredFile.id), func.coalesce(func.sum(StoredFile.size), 0))
    if team_id is not None:
        query = query.where(StoredFile.team_id == team_id)
    files, size = session.execute(query).one()
    return Storage(files=int(files), bytes=int(size))


def _counts(requests, prompt, completion, rate_limited) -> Counts:
    return Counts(int(requests), int(prompt or 0), int(completion or 0), int(rate_limited or 0))


def summarize_usage(
    store: UsageSource,
    scope: Scope,
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

    team_id = scope.team_filter(store.teams, team)
    conditions = [UsageRecord.created_at >= since, UsageRecord.created_at < until]
    if team_id is not None:
        conditions.append(UsageRecord.team_id == team_id)
    measures = (
        func.count(UsageRecord.id),
        func.sum(UsageRecord.prompt_tokens),
        func.sum(UsageRecord.completion_tokens),
        func.sum(case((UsageRecord.status == RATE_LIMITED_STATUS, 1), else_=0)),
    )
    # Floor division: SQLAlchemy 2 renders `//` as integer division on both dialects.
    seconds: ColumnElement[int] = epoch_seconds(UsageRecord.created_at)
    start = (seconds // bucket_seconds) * bucket_seconds
    with store.db.session() as s:
        by_bucket = s.execute(
            select(start.label("start"), UsageRecord.model, *measures)
            .where(*conditions)
            .group_by(start, UsageRecord.model)
            .order_by(start, UsageRecord.model)
        ).all()
        by_model = s.execute(
            select(UsageRecord.model, *measures)
            .where(*conditions)
            .group_by(UsageRecord.model)
            .order_by(func.count(UsageRecord.id).desc(), UsageRecord.model)
        ).all()
        totals = s.execute(select(*measures).where(*conditions)).one()
        users = _top_users(store, s, conditions, measures, top_users) if top_users else []
        storage = _storage(s, team_id)
    return UsageSummary(
        since=since,
        until=until,
        bucket_seconds=bucket_seconds,
        buckets=[
            Bucket(datetime.fromtimestamp(int(row[0]), UTC), row[1], _counts(*row[2:])) for row in by_bucket
        ],
        models=[(row[0], _counts(*row[1:])) for row in by_model],
        users=users,
        totals=_counts(*totals),
        storage=storage,
    )


def _top_users(store: UsageSource, session, conditions, measures, top: int) -> list[tuple[str, str, Counts]]:
    """The ``top`` end users by requests, ties by name. Names are encrypted, so the
    database ranks by count; every group tied with the last one is decrypted and sorted here."""
    requests = func.count(UsageRecord.id)
    query = (
        select(UsageRecord.team_id, func.min(UsageRecord.record_id), *measures)
        .join(Team, Team.id == UsageRecord.team_id)
        .where(*conditions, UsageRecord.user_index.is_not(None), Team.deleted_at.is_(None))
        .group_by(UsageRecord.team_id, UsageRecord.user_index)
    )
    groups = session.execute(query.order_by(requests.desc()).limit(top)).all()
    if len(groups) == top:
        boundary = groups[-1][2]
        ties = session.execute(query.having(requests == boundary)).all()
        groups = [g for g in groups if g[2] > boundary] + ties
    # One record of each group holds the encrypted name (bound to that record's id).
    sealed = dict(
        session.execute(
            select(UsageRecord.record_id, UsageRecord.user_sealed).where(
                UsageRecord.record_id.in_([g[1] for g in groups])
            )
        ).all()
    )
    named = [
        (
            store.keyring.open(team_id, sealed[record_id], Sealed.usage_user(record_id)),
            store.teams.name(team_id),
            _counts(*measured),
        )
        for team_id, record_id, *measured in groups
    ]
    named.sort(key=lambda u: (-u[2].requests, u[0], u[1]))
    return named[:top]
