"""The usage summary's SQL on both databases: time buckets per model, per-model and
per-end-user totals, rate-limit rejections, the range and team filters. The bucket
arithmetic is spelled per dialect (``store/functions.py``), so it runs on SQLite and on
PostgreSQL (127.0.0.1:5432, database ``test``, a schema of its own)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conftest import postgres_schema, postgres_url
from llamahost.errors import InvalidRequest, NotFound
from llamahost.store.crypto import MasterKey
from llamahost.store.db import Database
from llamahost.store.keyring import Keyring
from llamahost.tenancy.scope import Scope
from llamahost.tenancy.teams import TeamStore
from llamahost.tenancy.usage import UsageStore, new_record_id, parse_time
from llamahost.tenancy.usage_summary import parse_bucket

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MASTER = MasterKey.generate()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'usage.db'}")
        database.migrate(MASTER)
        yield database
        database.close()
        return
    with postgres_schema() as schema:
        database = Database(postgres_url(schema, driver="postgresql+psycopg"))
        try:
            database.migrate(MASTER)
            yield database
        finally:
            database.close()


def _row(team_id: int, at: datetime, model: str, user: str | None, prompt: int, completion: int, status: str = "ok") -> dict:
    return {
        "record_id": new_record_id(), "created_at": at, "team_id": team_id, "key_id": None, "model": model, "user": user,
        "prompt_tokens": prompt, "completion_tokens": completion, "latency_ms": 5, "status": status,
        "stop_reason": "stop" if status == "ok" else None,
    }


class Usage:
    """The usage store over ``db``, asked with an operator's scope (every team)."""

    def __init__(self, db) -> None:
        keyring = Keyring.load(db, MASTER)
        self.teams = TeamStore(db, keyring)
        self.store = UsageStore(db, keyring, self.teams)

    def write_rows(self, rows):
        self.store.write_rows(rows)

    def summary(self, **filters):
        return self.store.summary(Scope.operator(), **filters)


@pytest.fixture
def usage(db):
    usage = Usage(db)
    red, _ = usage.teams.ensure("red")
    blue, _ = usage.teams.ensure("blue")
    rows = [
        # 12:00 bucket (hourly): two models, one rejection
        _row(red, T0 + timedelta(minutes=1), "alpha", "u1", 10, 5),
        _row(red, T0 + timedelta(minutes=59, seconds=59, microseconds=900_000), "alpha", "u2", 20, 10),
        _row(red, T0 + timedelta(minutes=30), "beta", "u1", 7, 3),
        _row(red, T0 + timedelta(minutes=31), "alpha", "u1", 0, 0, status="rate_limit_error"),
        # 13:00 bucket
        _row(red, T0 + timedelta(hours=1), "alpha", None, 1, 1),
        # 15:00 bucket, team blue
        _row(blue, T0 + timedelta(hours=3, minutes=5), "alpha", "u9", 100, 100),
        # outside the range asked below
        _row(red, T0 - timedelta(seconds=1), "alpha", "early", 1000, 1000),
        _row(red, T0 + timedelta(hours=6), "alpha", "late", 1000, 1000),
    ]
    usage.write_rows(rows)
    return usage


def test_buckets_models_users_and_totals(usage):
    summary = usage.summary(since=T0, until=T0 + timedelta(hours=6), bucket_seconds=3600)
    buckets = [(b.start, b.model, b.counts.requests, b.counts.total_tokens, b.counts.rate_limited) for b in summary.buckets]
    assert buckets == [
        # 12:59:59.9 stays in the 12:00 bucket: seconds are floored, not rounded.
        (T0, "alpha", 3, 45, 1),
        (T0, "beta", 1, 10, 0),
        (T0 + timedelta(hours=1), "alpha", 1, 2, 0),
        (T0 + timedelta(hours=3), "alpha", 1, 200, 0),
    ]
    assert [(m, c.requests, c.prompt_tokens, c.completion_tokens, c.rate_limited) for m, c in summary.models] == [
        ("alpha", 5, 131, 116, 1),
        ("beta", 1, 7, 3, 0),
    ]
    # By requests; records without a user are left out; ties by name (decrypted: the
    # database only holds the users' blind indexes).
    assert [(u, t, c.requests, c.total_tokens) for u, t, c in summary.users] == [
        ("u1", "red", 3, 25), ("u2", "red", 1, 30), ("u9", "blue", 1, 200)
    ]
    totals = summary.totals
    assert (totals.requests, totals.total_tokens, totals.rate_limited) == (6, 257, 1)


def test_team_filter_bucket_width_and_top_users(usage):
    summary = usage.summary(team="red", since=T0, until=T0 + timedelta(hours=6), bucket_seconds=1800, top_users=1)
    assert [(b.start, b.model, b.counts.requests) for b in summary.buckets] == [
        (T0, "alpha", 1),
        (T0 + timedelta(minutes=30), "alpha", 2),
        (T0 + timedelta(minutes=30), "beta", 1),
        (T0 + timedelta(hours=1), "alpha", 1),
    ]
    assert [u for u, _, _ in summary.users] == ["u1"]
    assert summary.totals.requests == 5
    with pytest.raises(NotFound):  # a team name the scope does not know, as everywhere in the admin API
        usage.summary(team="nobody", since=T0, until=T0 + timedelta(hours=1))
    # Ties at the cut are broken by name, though the database cannot sort encrypted names.
    tied = usage.summary(since=T0, until=T0 + timedelta(hours=6), top_users=2)
    assert [u for u, _, _ in tied.users] == ["u1", "u2"]


def test_default_range_is_the_last_24_hours(usage, db):
    now = datetime.now(UTC)
    team_id, _ = usage.teams.ensure("red")
    usage.write_rows([_row(team_id, now - timedelta(minutes=5), "gamma", "now", 1, 2)])
    summary = usage.summary()
    assert summary.bucket_seconds == 3600
    assert abs((summary.until - summary.since) - timedelta(hours=24)) < timedelta(seconds=1)
    assert [m for m, _ in summary.models] == ["gamma"]


def test_bad_ranges_are_refused_naming_the_parameter(usage):
    with pytest.raises(InvalidRequest) as since_after_until:
        usage.summary(since=T0, until=T0)
    assert since_after_until.value.param == "since"
    with pytest.raises(InvalidRequest) as too_many:
        usage.summary(since=T0 - timedelta(days=30), until=T0, bucket_seconds=60)
    assert too_many.value.param == "bucket" and "43201 buckets" in too_many.value.message
    for bad in ("", "0", "abc", "5x", "-1m", "1.5h"):
        with pytest.raises(InvalidRequest) as error:
            parse_bucket(bad)
        assert error.value.param == "bucket"
    assert [parse_bucket(v) for v in ("90", "90s", "5m", "1h", "1d", "1w")] == [90, 90, 300, 3600, 86400, 604800]


def test_times_with_an_offset_are_read_as_utc():
    assert parse_time("2025-03-01T14:00:00+02:00") == T0
    assert parse_time("2025-03-01T12:00:00").tzinfo is UTC
