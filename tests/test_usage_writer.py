"""The batched usage writer: records reach the database, in one transaction per batch,
and survive a database that refuses writes for a while; with its journal, they wait on
disk (not in memory) meanwhile, and a dead process's journal is replayed once."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from sqlalchemy import func, select

from llamahost.config import load_config
from llamahost.store.db import Database
from llamahost.store.models import UsageRecord
from llamahost.tenancy.journal import UsageJournal
from llamahost.tenancy.scope import Scope
from llamahost.tenancy.stores import open_stores
from llamahost.tenancy.usage import UsageWriter, usage_row


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
        # The background flush, without anyone asking.
        deadline = time.monotonic() + 30
        while _count(db) < 251 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
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


def _journal_files(directory) -> list[str]:
    return sorted(p.name.split(".", 1)[1] for p in directory.iterdir())


def test_records_are_journalled_when_queued_and_the_journal_empties_when_written(tmp_path, monkeypatch):
    stores, team_id = _stores(tmp_path, monkeypatch)
    directory = tmp_path / "usage-journal"

    async def run() -> None:
        writer = UsageWriter(stores.usage, journal=UsageJournal(directory, stores.keyring.journal_key))
        for n in range(3):
            writer.record(**_fields(team_id, n))
        # On disk the moment they are queued (what a kill -9 cannot take), the user encrypted.
        segment = next(directory.glob("*.jsonl"))
        assert segment.read_bytes().count(b"\n") == 3 and b"u1" not in segment.read_bytes()
        await writer.close()

    asyncio.run(run())
    assert _count(stores.db) == 3
    assert _journal_files(directory) == []  # written, and closed cleanly: nothing left


def test_a_locked_database_leaves_the_records_in_the_journal_not_in_memory(tmp_path, monkeypatch):
    stores, team_id = _stores(tmp_path, monkeypatch)
    directory = tmp_path / "usage-journal"
    blocker = sqlite3.connect(tmp_path / "llamahost.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database: writes wait, then fail

    async def run() -> None:
        writer = UsageWriter(stores.usage, journal=UsageJournal(directory, stores.keyring.journal_key))
        writer.record(**_fields(team_id, 1))
        writer.record(**_fields(team_id, 2))
        await writer.flush()  # refused after SQLite's busy timeout
        assert writer._pending == [] and writer._unjournalled == []  # nothing held in memory...
        assert len(writer._backlog) == 1 and writer._backlog[0].read_bytes().count(b"\n") == 2  # ...but on disk
        blocker.execute("ROLLBACK")
        writer.record(**_fields(team_id, 3))
        await writer.flush()  # the new record, and the refused batch replayed
        assert _count(stores.db) == 3 and writer._backlog == []
        await writer.close()

    try:
        asyncio.run(run())
    finally:
        blocker.close()
    assert _journal_files(directory) == []


def test_a_dead_process_journal_is_replayed_once_and_a_live_one_is_left_alone(tmp_path, monkeypatch):
    stores, team_id = _stores(tmp_path, monkeypatch)
    directory = tmp_path / "usage-journal"
    key = stores.keyring.journal_key
    # Another "process": its lock is a separate open file description, so flock treats it as one.
    other = UsageJournal(directory, key)
    rows = [usage_row(**_fields(team_id, n)) for n in range(5)]
    for row in rows:
        other.append(row)
    stores.usage.write_rows(rows[:2])  # committed just before the crash: its segment was not yet deleted

    async def run() -> None:
        writer = UsageWriter(stores.usage, journal=UsageJournal(directory, key))
        assert await writer.recover() == 0  # its owner is alive: not touched
        assert _count(stores.db) == 2
        other.close(clean=False)  # dies: the lock goes with it, the journal stays
        assert await writer.recover() == 5
        await writer.close()

    asyncio.run(run())
    entries, totals = stores.usage.query(Scope.operator(), limit=100)
    assert totals.requests == 5  # the two already written are not counted twice
    assert sorted(e.user for e in entries) == [f"u{n}" for n in range(5)]  # users decrypted from the journal
    assert _journal_files(directory) == []


def test_a_row_the_database_never_takes_does_not_hold_back_its_batch(tmp_path, monkeypatch):
    stores, team_id = _stores(tmp_path, monkeypatch)

    async def run() -> None:
        writer = UsageWriter(stores.usage, journal=UsageJournal(tmp_path / "usage-journal", stores.keyring.journal_key))
        writer.record(**_fields(team_id, 1))
        writer.record(**{**_fields(team_id, 2), "team_id": 999_999})  # no such team: a foreign key it breaks
        writer.record(**_fields(team_id, 3))
        await writer.flush()
        assert writer._backlog == []  # nothing waits for a retry that could never succeed
        await writer.close()

    asyncio.run(run())
    entries, _ = stores.usage.query(Scope.operator(), limit=10)
    assert sorted(e.user for e in entries) == ["u1", "u3"]
