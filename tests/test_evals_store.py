"""Eval items as a work queue, on SQLite and PostgreSQL: a claim takes at most its limit
(PostgreSQL once ran an ``IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` subquery once
per row and one claim took 280 of 300 items), concurrent claimers never share an item,
a lost claim cannot record a result, and results are sealed."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import text

from conftest import opened_stores
from llamahost.errors import NotFound
from llamahost.evals.store import EvalStore, ItemResult


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, monkeypatch):
    with opened_stores(request.param, tmp_path, monkeypatch, "llh_evst") as stores:
        team, _ = stores.teams.ensure("t")
        yield EvalStore(stores.db, stores.keyring), team, stores


def test_concurrent_claims_respect_the_limit_and_never_share_an_item(store):
    evals, team, _ = store
    ev = evals.create_eval(team, {"name": "e"})
    run = evals.create_run(team, ev.id, None, {"s": 1}, [{"item": {"n": i}} for i in range(300)])
    claims: Counter[int] = Counter()
    sizes: list[int] = []
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            while batch := evals.claim(run.id, name, 10, 30):
                sizes.append(len(batch))
                for idx, row in batch:
                    assert row == {"item": {"n": idx}}
                    claims[idx] += 1
                    assert evals.finish(run.id, team, idx, name, ItemResult("passed", [True], {"ok": idx}))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert max(sizes) <= 10 and sum(sizes) == 300
    assert set(claims) == set(range(300)) and max(claims.values()) == 1
    counts = evals.counts(run.id, 1)
    assert (counts.passed, counts.total, counts.generations, counts.per_criterion) == (300, 300, 300, [(300, 0)])


def test_a_lost_claim_records_nothing(store):
    evals, team, _ = store
    ev = evals.create_eval(team, {"name": "e"})
    run = evals.create_run(team, ev.id, None, {}, [{"item": {}}])
    assert [idx for idx, _ in evals.claim(run.id, "dead", 5, -1)] == [0]  # a claim that has already expired
    assert [idx for idx, _ in evals.claim(run.id, "alive", 5, 30)] == [0]
    assert not evals.finish(run.id, team, 0, "dead", ItemResult("failed", [False], {}))
    assert evals.finish(run.id, team, 0, "alive", ItemResult("passed", [True], {"secret": "answer-42"}))
    assert not evals.finish(run.id, team, 0, "alive", ItemResult("failed", [False], {}))
    item = evals.item(team, run.id, 0)
    assert (item.status, item.generations, item.result) == ("passed", 2, {"secret": "answer-42"})
    with evals.db.session() as s:  # sealed at rest
        raw = s.execute(text("SELECT row_sealed, result_sealed FROM eval_items")).one()
    assert b"answer-42" not in bytes(raw.result_sealed) and b"item" not in bytes(raw.row_sealed)
    evals.delete_team(team)
    with pytest.raises(NotFound):
        evals.get_run(team, ev.id, run.id)


def test_purge_deletes_finished_runs_past_the_teams_retention(store):
    from datetime import UTC, datetime, timedelta

    evals, team, _ = store
    ev = evals.create_eval(team, {"name": "e"})
    done = evals.create_run(team, ev.id, None, {}, [{"item": {}}])
    evals.set_run_status(done.id, "completed", only_from=("queued",))
    running = evals.create_run(team, ev.id, None, {}, [{"item": {}}])
    assert evals.purge(lambda team_id: 30) == 0  # both younger than 30 days
    later = datetime.now(UTC) + timedelta(days=31)
    assert evals.purge(lambda team_id: 30, now=later) == 1  # a queued run is kept while it may still run
    with pytest.raises(NotFound):
        evals.get_run(team, ev.id, done.id)
    assert evals.get_run(team, ev.id, running.id).status == "queued"
