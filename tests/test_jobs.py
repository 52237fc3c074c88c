"""Background jobs (``jobs/``): the queue's transitions on SQLite and PostgreSQL, job
loops in separate processes sharing PostgreSQL (each job claimed once; a killed loop's
job retried by another after its lease), retention as a periodic job, and the jobs
admin API and CLI.

PostgreSQL tests run on 127.0.0.1:5432, database ``test``, each in a schema of its own
that is dropped afterwards. Every wait polls a condition under a generous deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from conftest import llamahost_env, run_cli, stop_process
from llamahost.config import ConfigError, load_config
from llamahost.errors import InvalidRequest, NotFound
from llamahost.jobs.kinds import JobContext, JobKinds
from llamahost.jobs.loop import JobLoop
from llamahost.jobs.queue import JobQueue
from llamahost.tenancy.scope import Scope
from llamahost.tenancy.stores import open_stores

WORKER = Path(__file__).with_name("jobs_worker.py")
DEADLINE = 120.0  # generous: a loaded machine starts processes slowly; a pass takes seconds


def wait_for(condition: Callable[[], object], what: str, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def local_env(monkeypatch):
    """This process opens the stores too: with the defaults, as the servers it starts."""
    for name in [n for n in os.environ if n.startswith("LLAMAHOST_")]:
        monkeypatch.delenv(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request, tmp_path, local_env, monkeypatch):
    if request.param == "postgresql":
        for name, value in request.getfixturevalue("pg_env").items():
            monkeypatch.setenv(name, value)
    opened = open_stores(load_config(data_dir=tmp_path / "data"))
    yield opened
    opened.db.close()


def test_jobs_config_is_strict(tmp_path) -> None:
    for text, named in [
        ("[jobs]\nlease_seconds = 0\n", "jobs.lease_seconds"),
        ("[jobs]\nconcurrency = 100\n", "jobs.concurrency"),
        ("[jobs]\nrun_in_servers = false\n", "jobs.run_in_servers"),
    ]:
        path = tmp_path / "llamahost.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=named):
            load_config(path, data_dir=tmp_path)
    path.write_text("[jobs]\nrun_in_server = false\nlease_seconds = 5\n")
    jobs = load_config(path, data_dir=tmp_path).jobs
    assert (jobs.run_in_server, jobs.lease_seconds, jobs.concurrency, jobs.keep_finished_days) == (False, 5, 1, 7)


# --- the queue and the loop, in this process -----------------------------------------------


def _loop(stores, kinds: JobKinds, lease: float) -> JobLoop:
    return JobLoop(JobQueue(stores.db, stores.teams, kinds), kinds, stores, poll_interval=0.05, lease_seconds=lease,
                   concurrency=2)


async def _until(condition: Callable[[], object], what: str):
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _finished(queue: JobQueue, job_id: str):
    job = queue.get(Scope.operator(), job_id)
    return job if job.status in ("succeeded", "failed", "cancelled") else None


def test_attempts_timeout_and_cancel(stores) -> None:
    kinds = JobKinds()
    runs: list[str] = []
    started = asyncio.Event()
    observed: list[str] = []

    async def flaky(ctx: JobContext) -> dict:
        runs.append(f"{ctx.payload['name']}#{ctx.attempt}")
        if ctx.attempt < ctx.payload["succeed_on"]:
            raise RuntimeError(f"attempt {ctx.attempt} failed")
        return {"attempt": ctx.attempt}

    async def slow(ctx: JobContext) -> dict:
        runs.append(f"slow#{ctx.attempt}")
        await asyncio.sleep(3600)
        return {}

    async def stoppable(ctx: JobContext) -> dict:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            observed.append("cancelled" if ctx.cancelled.is_set() else "stopped")
            raise
        return {}

    pid_file = stores.config.data_dir / "child.pid"

    async def unstorable(ctx: JobContext) -> dict:
        return {"when": datetime.now(UTC)}  # not JSON

    async def child(ctx: JobContext) -> dict:
        # Heavy work (torch) runs in a child process of the loop, stopped with the job.
        script = f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(3600)"
        await ctx.run_process([sys.executable, "-c", script])
        return {}

    kinds.register_kind("test.child", child, timeout=60, max_attempts=1)
    kinds.register_kind("test.flaky", flaky, timeout=30, max_attempts=3, retry_delay=0)
    kinds.register_kind("test.unstorable", unstorable, timeout=30, max_attempts=1)
    kinds.register_kind("test.slow", slow, timeout=0.3, max_attempts=2, retry_delay=0)
    kinds.register_kind("test.stoppable", stoppable, timeout=60, max_attempts=3)
    loop = _loop(stores, kinds, lease=3.0)  # cancel requests are seen within lease / 3
    queue = loop.queue
    team_id, _ = stores.keys.ensure_team("jobs-team")
    other_id, _ = stores.keys.ensure_team("other-team")

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(loop.run(stop))
        try:
            # A job not yet due can be cancelled before it ever runs.
            later = queue.enqueue("test.flaky", {"name": "later", "succeed_on": 1}, team_id=team_id,
                                  run_after=datetime.now(UTC) + timedelta(hours=1))
            assert queue.cancel(Scope(team_id), later).status == "cancelled"
            with pytest.raises(NotFound):
                queue.cancel(Scope(other_id), later)  # another team's job is not there

            second = queue.enqueue("test.flaky", {"name": "second", "succeed_on": 2})
            never = queue.enqueue("test.flaky", {"name": "never", "succeed_on": 99}, team_id=team_id)
            timing_out = queue.enqueue("test.slow")
            unstored = queue.enqueue("test.unstorable")
            done = await _until(lambda: _finished(queue, second), "the flaky job to succeed")
            assert (done.status, done.attempts, done.result, done.error) == ("succeeded", 2, {"attempt": 2}, None)
            failed = await _until(lambda: _finished(queue, never), "the failing job to use up its attempts")
            assert (failed.status, failed.attempts, failed.max_attempts) == ("failed", 3, 3)
            assert failed.error == "RuntimeError: attempt 3 failed" and failed.finished_at is not None
            bad = await _until(lambda: _finished(queue, unstored), "the job with a non-JSON result to fail")
            assert bad.status == "failed" and bad.error.startswith("the result is not a JSON object")
            timed_out = await _until(lambda: _finished(queue, timing_out), "the slow job to time out")
            assert (timed_out.status, timed_out.attempts, timed_out.error) == ("failed", 2, "timed out after 0.3 s")

            # A running job: the cancel request reaches the handler at its loop's next renewal.
            stopping = queue.enqueue("test.stoppable", team_id=team_id)
            await asyncio.wait_for(started.wait(), DEADLINE)
            requested = queue.cancel(Scope(team_id), stopping)
            assert requested.status == "running" and requested.cancel_requested
            cancelled = await _until(lambda: _finished(queue, stopping), "the running job to be cancelled")
            assert (cancelled.status, cancelled.attempts) == ("cancelled", 1) and observed == ["cancelled"]
            # A job's child process is stopped when the job is cancelled.
            with_child = queue.enqueue("test.child")
            pid = int(await _until(lambda: pid_file.exists() and pid_file.read_text(), "the child process to start"))
            queue.cancel(Scope.operator(), with_child)
            assert (await _until(lambda: _finished(queue, with_child), "the job to be cancelled")).status == "cancelled"
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
            with pytest.raises(InvalidRequest, match="already succeeded"):
                queue.cancel(Scope.operator(), second)
            for unknown in ("job_unknown", "job_\x00", "job_" + "0" * 24):  # (PostgreSQL refuses NUL characters)
                with pytest.raises(NotFound):
                    queue.get(Scope.operator(), unknown)
            with pytest.raises(InvalidRequest):
                queue.list(Scope.operator(), kind="test\x00")
        finally:
            stop.set()
            await running

    asyncio.run(scenario())
    assert sorted(runs) == ["never#1", "never#2", "never#3", "second#1", "second#2", "slow#1", "slow#2"]
    # A team admin's listing holds its own team's jobs only; the operator's holds all.
    assert {j.id for j in queue.list(Scope(team_id))} == {j.id for j in queue.list(Scope.operator()) if j.team_id}
    assert all(j.team_id == team_id for j in queue.list(Scope(team_id)))
    assert [j.status for j in queue.list(Scope.operator(), status="failed")] == ["failed"] * 3


def test_a_stopping_loop_hands_its_running_job_back(stores) -> None:
    kinds = JobKinds()
    started = asyncio.Event()

    async def long(ctx: JobContext) -> dict:
        started.set()
        await asyncio.sleep(3600)
        return {}

    kinds.register_kind("test.long", long, timeout=7200)
    loop = _loop(stores, kinds, lease=30.0)
    job_id = loop.queue.enqueue("test.long")

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(loop.run(stop))
        await asyncio.wait_for(started.wait(), DEADLINE)
        stop.set()  # as SIGTERM does for `llamahost jobs work`, and the end of `llamahost serve`
        await asyncio.wait_for(running, DEADLINE)

    asyncio.run(scenario())
    # Back in the queue at once (not after its 30 s lease), the interrupted attempt not counted.
    job = loop.queue.get(Scope.operator(), job_id)
    assert (job.status, job.attempts, job.worker_id, job.leased_until) == ("queued", 0, None, None)


def test_periodic_jobs_are_scheduled_once_per_interval(stores) -> None:
    kinds = JobKinds()

    async def tick(ctx: JobContext) -> dict:
        return {}

    kinds.register_kind("test.tick", tick, timeout=10, every=60)
    one, two = (JobQueue(stores.db, stores.teams, kinds) for _ in range(2))  # two loops' queues
    at = datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC)
    first = one.schedule_periodic("test.tick", at)
    assert first is not None and two.schedule_periodic("test.tick", at + timedelta(seconds=10)) is None
    # The next interval's run waits while this one is still queued (or running)...
    assert two.schedule_periodic("test.tick", at + timedelta(seconds=60)) is None
    one.cancel(Scope.operator(), first)
    # ...and is scheduled once it has finished.
    assert two.schedule_periodic("test.tick", at + timedelta(seconds=60)) is not None
    assert one.schedule_periodic("test.tick", at + timedelta(seconds=61)) is None
    assert len(one.list(Scope.operator(), kind="test.tick")) == 2


# --- loops in separate processes, sharing PostgreSQL ---------------------------------------


def _start_worker(env: dict[str, str], data_dir: Path, traces: Path, lease: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(lease), str(traces)],
        env=llamahost_env(data_dir, env),
        stdout=subprocess.DEVNULL,
        stderr=(traces / f"worker-{time.monotonic_ns()}.log").open("wb"),
    )


def test_worker_processes_share_postgresql(pg_env, tmp_path, local_env, monkeypatch) -> None:
    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    data_dir, traces = tmp_path / "data", tmp_path / "traces"
    traces.mkdir()
    stores = open_stores(load_config(data_dir=data_dir))
    kinds = JobKinds()

    async def unused(ctx: JobContext) -> dict:
        raise AssertionError("the test process runs no loop")

    kinds.register_kind("test.mark", unused, timeout=30, max_attempts=1)
    kinds.register_kind("test.stall_first", unused, timeout=3600, max_attempts=2)
    queue = JobQueue(stores.db, stores.teams, kinds)
    # Short, for the test's speed, yet long enough that a loaded machine never stalls a
    # live worker past it (which would hand a job to the other worker: not what is tested).
    lease = 3.0
    workers = [_start_worker(pg_env, data_dir, traces, lease) for _ in range(2)]
    try:
        wait_for(lambda: len(list(traces.glob("ready-*"))) == 2, "both workers to start")

        # Each job is claimed by exactly one of the two processes polling the same table.
        ids = [queue.enqueue("test.mark", {"n": n}) for n in range(40)]
        wait_for(lambda: all(_finished(queue, i) for i in ids), "every job to finish")
        runs = (traces / "runs.log").read_text().split()
        ran = runs[0::2]
        assert sorted(ran) == sorted(ids)  # every job ran, and none twice
        jobs = [queue.get(Scope.operator(), i) for i in ids]
        assert {(j.status, j.attempts) for j in jobs} == {("succeeded", 1)}

        # A worker killed mid-job: its lease expires and the other worker runs the job again.
        stalled = queue.enqueue("test.stall_first")
        marker = wait_for(lambda: next(iter(traces.glob("stalled-*")), None), "a worker to start the job")
        holder = next(w for w in workers if marker.name == f"stalled-pid-{w.pid}")
        running = queue.get(Scope.operator(), stalled)
        assert (running.status, running.worker_id) == ("running", f"pid-{holder.pid}")
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        done = wait_for(lambda: _finished(queue, stalled), "the other worker to retry the job")
        survivor = next(w for w in workers if w is not holder)
        assert (done.status, done.attempts, done.result) == ("succeeded", 2, {"worker": f"pid-{survivor.pid}"})
        # Not before the lease it had when it was killed ran out.
        assert done.started_at >= running.leased_until
    finally:
        for worker in workers:
            stop_process(worker)
        stores.db.close()


# --- retention as a job; the CLI and the admin API -------------------------------------------


def _insert_stored(db_path: Path, team_id: int, days_old: float) -> str:
    record_id = uuid.uuid4().hex
    created = (datetime.now(UTC) - timedelta(days=days_old)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(db_path, timeout=10) as db:
        db.execute(
            "INSERT INTO stored_requests (id, team_id, created_at, kind, surface, model, status, flagged, "
            "request_sealed, response_sealed) VALUES (?, ?, ?, 'chat', 'native', 'm', 'ok', 0, x'00', x'00')",
            (record_id, team_id, created),
        )
    return record_id


def _stored_ids(db_path: Path) -> set[str]:
    with sqlite3.connect(db_path, timeout=10) as db:
        return {row[0] for row in db.execute("SELECT id FROM stored_requests")}


def test_retention_runs_as_a_job_of_llamahost_jobs_work(tmp_path, local_env) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "llamahost.toml"
    config.write_text("[content]\npurge_interval_seconds = 0.5\nretention_days = 30\n\n[jobs]\npoll_interval_seconds = 0.1\n")
    stores = open_stores(load_config(data_dir=data_dir))
    team_id, _ = stores.keys.ensure_team("kept-team")
    db_path = data_dir / "llamahost.db"
    expired, recent = _insert_stored(db_path, team_id, 31), _insert_stored(db_path, team_id, 29)
    worker = subprocess.Popen(
        [sys.executable, "-m", "llamahost", "jobs", "work", "--config", str(config)],
        env=llamahost_env(data_dir), stdout=subprocess.DEVNULL, stderr=(tmp_path / "worker.log").open("wb"),
    )
    try:
        queue = JobQueue(stores.db, stores.teams, JobKinds())

        def purging_job() -> list:
            # (The job's result is written after its purge has committed: wait for the job.)
            purges = queue.list(Scope.operator(), kind="retention.purge", limit=1000)
            return [j for j in purges if j.result == {"stored_requests": 1, "teams": 1}]

        purged = wait_for(purging_job, "a retention job to purge the expired record")
        assert len(purged) == 1 and (purged[0].status, purged[0].team_id, purged[0].attempts) == ("succeeded", None, 1)
        assert expired not in _stored_ids(db_path) and recent in _stored_ids(db_path)
        table = run_cli(data_dir, "jobs", "list", "--status", "succeeded", "--limit", "1000").stdout.splitlines()
        assert table[0].split() == ["ID", "KIND", "STATUS", "TEAM", "TRIES", "CREATED", "STARTED", "FINISHED", "ERROR"]
        row = next(line for line in table if line.startswith(purged[0].id)).split()
        assert row[1:5] == ["retention.purge", "succeeded", "-", "1/3"]
    finally:
        stop_process(worker)
        stores.db.close()
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
    unknown = run_cli(data_dir, "jobs", "cancel", "job_nope", check=False)
    assert unknown.returncode == 1 and "no job 'job_nope'" in unknown.stderr


SERVER_CONFIG = """
[content]
purge_interval_seconds = 0.5

[jobs]
poll_interval_seconds = 0.1
"""


def test_server_runs_the_loop_and_the_admin_api_shows_jobs(server_factory, local_env) -> None:
    server = server_factory(config=SERVER_CONFIG, key=False)
    stores = open_stores(load_config(data_dir=server.data_dir))
    operator, _ = stores.keys.create_key("ops", role="operator")
    team_admin, _ = stores.keys.create_key("jobs-a", role="admin")
    other_admin, _ = stores.keys.create_key("jobs-b", role="admin")
    url = f"{server.url}/admin/v1/jobs"

    def listed(key: str, **params) -> list[dict]:
        reply = httpx.get(url, params=params, headers=server.headers(key), timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]

    # `llamahost serve` runs the loop: the periodic retention purge appears and succeeds.
    purges = wait_for(
        lambda: [j for j in listed(operator, kind="retention.purge") if j["status"] == "succeeded"],
        "the server's loop to run the retention purge",
    )
    assert purges[0]["team"] is None and purges[0]["attempts"] == 1 and purges[0]["finished_at"]
    assert server.log().count("job loop started") == 1  # one loop, started once

    # A team's job (of a kind this server does not run, so it stays queued).
    kinds = JobKinds()

    async def noop(ctx: JobContext) -> dict:
        return {}

    kinds.register_kind("test.elsewhere", noop, timeout=10)
    try:
        team_id = stores.teams.find("jobs-a")
        job_id = JobQueue(stores.db, stores.teams, kinds).enqueue("test.elsewhere", {"x": 1}, team_id=team_id)
    finally:
        stores.db.close()
    assert [j["id"] for j in listed(team_admin)] == [job_id]  # the server's own jobs are not the team's
    assert listed(other_admin) == []
    assert job_id in [j["id"] for j in listed(operator, team="jobs-a")]
    mine = httpx.get(f"{url}/{job_id}", headers=server.headers(team_admin), timeout=30).json()
    assert (mine["kind"], mine["status"], mine["team"], mine["attempts"]) == ("test.elsewhere", "queued", "jobs-a", 0)

    for key, path, method in [
        (other_admin, f"/{job_id}", "GET"), (other_admin, f"/{job_id}/cancel", "POST"),
        (operator, "/job_unknown", "GET"), (operator, "/job_unknown/cancel", "POST"),
        (operator, "/job_%00", "GET"), (operator, "/job_" + "0" * 24, "GET"),
        (team_admin, f"/{purges[0]['id']}", "GET"),
    ]:
        reply = httpx.request(method, url + path, headers=server.headers(key), timeout=30)
        assert reply.status_code == 404 and reply.json()["error"]["type"] == "not_found_error", reply.text
    for params, field in [
        ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"status": "done"}, "status"), ({"team": "nobody"}, "team"),
        ({"kind": "Retention\x00"}, "kind"), ({"kind": "k" * 65}, "kind"),
    ]:
        reply = httpx.get(url, params=params, headers=server.headers(operator), timeout=30)
        assert reply.status_code in (400, 404) and reply.json()["error"]["param"] == field, reply.text

    cancelled = httpx.post(f"{url}/{job_id}/cancel", headers=server.headers(team_admin), timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    again = httpx.post(f"{url}/{purges[0]['id']}/cancel", headers=server.headers(operator), timeout=30)
    assert again.status_code == 400 and "already succeeded" in again.json()["error"]["message"]
