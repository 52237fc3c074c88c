"""The batched usage writer: records reach the database, in one transaction per batch,
and survive a database that refuses writes for a while."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from llamahost.store.db import Database
from llamahost.store.models import UsageRecord
from llamahost.tenancy.keys import KeyStore
from llamahost.tenancy.usage import UsageStore, UsageWriter


def _fields(team_id: int, n: int) -> dict:
    return dict(
        team_id=team_id, key_id=None, model="m", user=f"u{n}", prompt_tokens=n, completion_tokens=1,
        latency_ms=1.0, status="ok", stop_reason="stop",
    )


def _count(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count(UsageRecord.id)))


def test_records_are_written_in_batches_and_flush_makes_them_visible(tmp_path):
    db = Database.open(tmp_path)
    team_id, _ = KeyStore(db).ensure_team("t")

    async def run() -> None:
        writer = UsageWriter(UsageStore(db))
        for n in range(250):
            writer.record(**_fields(team_id, n))
        await writer.flush()
        assert _count(db) == 250
        writer.record(**_fields(team_id, 999))
        await asyncio.sleep(0.5)  # the background flush, without anyone asking
        assert _count(db) == 251

    asyncio.run(run())
    entries, totals = UsageStore(db).query(limit=1000)
    assert totals.requests == 251 and totals.prompt_tokens == sum(range(250)) + 999


def test_a_refused_write_keeps_the_records_for_the_next_attempt(tmp_path):
    db = Database.open(tmp_path)
    team_id, _ = KeyStore(db).ensure_team("t")
    store = UsageStore(db)
    real_write = store.write_rows
    failures = [1, 1]  # the background attempt and the flush's own

    def flaky(rows):
        if failures:
            failures.pop()
            raise RuntimeError("database is locked")
        real_write(rows)

    store.write_rows = flaky

    async def run() -> None:
        writer = UsageWriter(store)
        writer.record(**_fields(team_id, 1))
        await writer.flush()  # refused: kept
        assert _count(db) == 0
        writer.record(**_fields(team_id, 2))
        await writer.flush()
        assert _count(db) == 2

    asyncio.run(run())
