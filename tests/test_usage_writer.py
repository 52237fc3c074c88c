"""The batched usage writer: records reach the database, in one transaction per batch,
and survive a database that refuses writes for a while."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from llamahost.config import load_config
from llamahost.store.db import Database
from llamahost.store.models import UsageRecord
from llamahost.tenancy.scope import Scope
from llamahost.tenancy.stores import open_stores
from llamahost.tenancy.usage import UsageWriter


def _stores(tmp_path, monkeypatch):
    for name in ("LLAMAHOST_DATABASE_URL", "LLAMAHOST_MASTER_KEY", "LLAMAHOST_MASTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    stores = open_stores(load_config(data_dir=tmp_path))
    team_id, _ = stores.teams.ensure("t")
    return stores, team_id


def _fields(team_id: int, n: int) -> dict:
    return dict(
        team_id=team_id, key_id=None, model="m", user=f"u{n}", prompt_tokens=n, completion_tokens=1,
        latency_ms=1.0, status="ok", stop_reason="stop",
    )


def _count(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count(UsageRecord.id)))


def test_records_are_written_in_batches_and_flush_makes_them_visible(tmp_path, monkeypatch):
    stores, team_id = _stores(tmp_path, monkeypatch)
    db = stores.db

    async def run() -> None:
        writer = UsageWriter(stores.usage)
        for n in range(250):
            writer.record(**_fields(team_id, n))
        await writer.flush()
        assert _count(db) == 250
        writer.record(**_fields(team_id, 999))
        await asyncio.sleep(0.5)  # the background flush, without anyone asking
        assert _count(db) == 251

    asyncio.run(run())
    entries, totals = stores.usage.query(Scope.operator(), limit=1000)
    assert totals.requests == 251 and totals.prompt_tokens == sum(range(250)) + 999
    assert entries[0].user == "u0" and entries[-1].user == "u999"  # encrypted, and read back
    _, mine = stores.usage.query(Scope.operator(), user="u7")
    assert mine.requests == 1 and mine.prompt_tokens == 7


def test_a_refused_write_keeps_the_records_for_the_next_attempt(tmp_path, monkeypatch):
    stores, team_id = _stores(tmp_path, monkeypatch)
    db, store = stores.db, stores.usage
    real_write = store.write_rows
    failures = [1, 1]  # the background attempt and the flush's own

    def flaky(rows, content_rows=()):
        if failures:
            failures.pop()
            raise RuntimeError("database is locked")
        real_write(rows, content_rows)

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
