"""A 1,000-item ``completions`` run against an upstream stub, split between two
``llamahost jobs work`` loops, one of which is SIGKILLed midway: the run completes with
exactly one result per item (items the dead loop held are generated again)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from conftest import free_port, llamahost_env, postgres_env, postgres_schema, start_server

BENCH = Path(__file__).resolve().parents[1] / "bench"
ITEMS = 1000


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request):
    if request.param == "sqlite":
        yield {}
        return
    with postgres_schema("llh_evals") as schema:
        yield postgres_env(schema)


def _wait_http(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the stub exited"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def test_one_result_per_item_when_a_loop_dies_midway(tmp_path, database_env):
    port = free_port()
    stub = subprocess.Popen([sys.executable, str(BENCH / "gateway.py"), "--stub", str(port)])
    workers: list[subprocess.Popen] = []
    server = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/v1/models", stub)
        config = f"""
[jobs]
run_in_server = false
poll_interval_seconds = 0.2
lease_seconds = 10

[evals]
jobs_per_run = 2
max_concurrency = 8
batch_size = 10
item_lease_seconds = 10

[[models]]
id = "stubbed"
engine = "openai"
upstream_model = "stub"
replicas = ["http://127.0.0.1:{port}/v1"]
context_window = 4096
"""
        server = start_server(tmp_path, config, env=database_env)
        config_path = tmp_path / "llamahost.toml"
        env = llamahost_env(server.data_dir, database_env)
        logs = [(tmp_path / f"worker{i}.log").open("wb") for i in range(2)]
        workers = [
            subprocess.Popen([sys.executable, "-m", "llamahost", "jobs", "work", "--config", str(config_path)],
                             env=env, stdout=log, stderr=subprocess.STDOUT)
            for log in logs
        ]
        c = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0, timeout=120)
        ev = c.evals.create(
            data_source_config={"type": "custom", "item_schema": {"type": "object", "properties": {"n": {"type": "integer"}}}},
            testing_criteria=[{"type": "string_check", "name": "greets", "operation": "like",
                               "input": "{{sample.output_text}}", "reference": "Hello"}],
        )
        rows = [{"item": {"n": i}} for i in range(ITEMS)]
        run = c.evals.runs.create(ev.id, data_source={
            "type": "completions", "model": "stubbed",
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "Item {{item.n}}"}]},
            "sampling_params": {"max_completion_tokens": 32, "temperature": 0},
            "source": {"type": "file_content", "content": rows}})

        # Midway: once both loops hold items and some results are in, kill one of them.
        deadline = time.monotonic() + 600
        while True:
            assert time.monotonic() < deadline, "the run did not get going"
            done = c.evals.runs.retrieve(run.id, eval_id=ev.id).progress["done"]
            if done >= ITEMS // 5:
                break
            time.sleep(0.2)
        assert done < ITEMS, "the run finished before a loop could be killed midway; make it longer"
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=20)

        while True:
            assert time.monotonic() < deadline, "the run did not finish after a loop died"
            run = c.evals.runs.retrieve(run.id, eval_id=ev.id)
            if run.status not in ("queued", "in_progress"):
                break
            time.sleep(0.5)
        assert run.status == "completed", run
        counts = run.result_counts
        assert (counts.passed, counts.failed, counts.errored, counts.total) == (ITEMS, 0, 0, ITEMS)

        items = []
        page = c.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100)
        for item in page:  # the SDK follows the cursor
            items.append(item)
        ids = Counter(item.datasource_item_id for item in items)
        assert len(items) == ITEMS and set(ids) == set(range(ITEMS)) and max(ids.values()) == 1
        assert sorted(item.datasource_item["n"] for item in items) == list(range(ITEMS))
        generations = sum(item.model_extra["generations"] for item in items)
        usage = json.loads(server.cli("usage", "--json", "--limit", "1").stdout)["totals"]
        # Generations are counted at claim time (a claim the dead loop never started counts
        # too); each finished generation's usage record is written before its result, so
        # every result has its record, and the dead loop's last ones may add a few more.
        assert run.per_model_usage[0].invocation_count == generations >= ITEMS
        assert ITEMS <= usage["requests"] <= generations
        print(f"\n{ITEMS} items, {generations} generations ({generations - ITEMS} repeated), "
              f"usage totals {usage}")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    worker.kill()
        if server is not None:
            server.stop()
        stub.terminate()
        stub.wait(timeout=10)
