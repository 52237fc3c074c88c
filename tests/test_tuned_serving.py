"""Serving tuned models: ``ft:...`` names resolve for their own team only, run on their
base model's llama.cpp with their LoRA adapter, are listed and deleted through /models,
and a tuned model this process has not loaded yet reloads the engine without failing or
cutting any request in flight.

Real parts throughout: ``llamahost serve``'s app in its own process (with a directory of
tuned models as their source, ``tuned_models.py``), llama.cpp, the ``openai`` and
``llama-api-client`` SDKs; adapters are random LoRA GGUFs (``tiny_lora.py``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import STARTUP_TIMEOUT, Server, free_port, llamahost_env, run_cli
from llama_api_client import LlamaAPIClient
from openai import OpenAI
from tiny_lora import write_tiny_lora
from tuned_models import DirectorySource, tuned_model

TESTS = Path(__file__).resolve().parent
BASE = "smol"
# Greedy, and a reply with no end in sight: the bundled model counts on well past these
# token budgets (measured: 1,500 tokens of "1, 2, 3, ..."), so each stream runs to exactly
# its max_completion_tokens.
COUNTING = [{"role": "user", "content": "Write the numbers from 1 to 2000, separated by commas."}]
CONFIG = f"""
[[models]]
id = "{BASE}"
aliases = ["smol-alias"]
parallel = 4
context_window = 2048
prefix_cache = false
"""


def start_tuned_server(tmp_path: Path, config: str, tuned_dir: Path) -> Server:
    """``llamahost serve``'s app with ``tuned_dir`` as its tuned-model source."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / "llamahost.toml"
    config_path.write_text(config)
    key = run_cli(data_dir, "keys", "create", "--team", "test", "--name", "tests").stdout.strip()
    port = free_port()
    log_path = tmp_path / "server.log"
    env = llamahost_env(data_dir)
    process = subprocess.Popen(
        [sys.executable, str(TESTS / "tuned_models.py"), "--dir", str(tuned_dir), "--port", str(port), "--config", str(config_path)],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = Server(process, port, data_dir, key, log_path, {})
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


def team_id(server: Server, name: str) -> int:
    """The team's database id (what a tuned model belongs to), read from the server's store."""
    from llamahost.config import load_config
    from llamahost.tenancy.stores import open_stores

    stores = open_stores(load_config(data_dir=server.data_dir))
    try:
        found = stores.teams.find(name)
        assert found is not None
        return found
    finally:
        stores.db.close()


def compat(server: Server, key: str | None = None) -> OpenAI:
    return OpenAI(api_key=key or server.key, base_url=server.url + "/compat/v1", max_retries=0, timeout=120)


def native(server: Server, key: str | None = None) -> LlamaAPIClient:
    return LlamaAPIClient(api_key=key or server.key, base_url=server.base_url, max_retries=0, timeout=120)


def metric(server: Server, name: str, model: str = BASE) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    found = re.search(rf'^{name}{{model="{re.escape(model)}"}} ([0-9.e+-]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def greedy(client: OpenAI, model: str, content: str = "Name three fruits.", max_tokens: int = 16) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0
    )
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tuned")
    source = DirectorySource(tmp / "tuned")
    server = start_tuned_server(tmp, CONFIG, source.root)
    yield server, source, tmp
    server.stop()


def add_tuned(source: DirectorySource, tmp: Path, team: int, suffix: str, seed: int, opaque: str = "t0a1b2c3") -> str:
    adapter = write_tiny_lora(tmp / f"{suffix}-{seed}.gguf", seed=seed)
    model = tuned_model(BASE, opaque, suffix, team, f"ftjob-{suffix}{seed}")
    return source.add(model, adapter.read_bytes()).id


# --- resolution, listing, deleting --------------------------------------------------------


def test_a_tuned_model_serves_its_own_team_only(served):
    server, source, tmp = served
    mine, theirs = team_id(server, "test"), None
    other_key = server.cli("keys", "create", "--team", "other").stdout.strip()
    theirs = team_id(server, "other")
    model = add_tuned(source, tmp, mine, "mine", seed=1)
    other_model = add_tuned(source, tmp, theirs, "theirs", seed=2, opaque="t9f8e7d6")

    client = compat(server)
    base_text = greedy(client, BASE)
    tuned_text = greedy(client, model)
    assert tuned_text and tuned_text != base_text  # the adapter runs (and changes the reply)
    assert greedy(client, BASE) == base_text  # the base model beside it is unchanged
    # The native surface and its SDK, streaming: the same model, the same greedy reply.
    stream = native(server).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name three fruits."}], max_completion_tokens=16,
        temperature=0, stream=True,
    )
    events = list(stream)
    assert "".join(e.event.delta.text for e in events if e.event.event_type == "progress") == tuned_text
    # ...and the compat surface streaming.
    chunks = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name three fruits."}], max_tokens=16, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == tuned_text

    # Another team's tuned model is exactly an unknown model: 404 model_not_found.
    for name in (other_model, "ft:smol:t0a1b2c3:never:ftjob-none"):
        with pytest.raises(openai.NotFoundError) as info:
            greedy(client, name)
        assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(name)
    assert greedy(compat(server, other_key), other_model)  # its own team calls it

    # Listed for the team (after the configured models), with the base as root.
    listed = {m.id: m for m in client.models.list().data}
    assert model in listed and other_model not in listed and BASE in listed
    card = client.models.retrieve(model)
    assert card.owned_by == "t0a1b2c3" and card.model_extra["root"] == BASE
    native_ids = [m.id for m in native(server).models.list()]
    assert model in native_ids and other_model not in native_ids
    assert native(server).models.retrieve(model).id == model

    # Prometheus labels: the base model's id only, never a tuned model's name.
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert "ft:" not in metrics
    assert metric(server, "llamahost_completion_tokens_total") > 0


def test_deleting_a_tuned_model(served):
    server, source, tmp = served
    mine = team_id(server, "test")
    model = add_tuned(source, tmp, mine, "gone", seed=3)
    admin_key = server.cli("keys", "create", "--team", "test", "--role", "admin").stdout.strip()
    client = compat(server, admin_key)
    assert greedy(client, model)

    # A member key may call tuned models but not delete them.
    with pytest.raises(openai.PermissionDeniedError):
        compat(server).models.delete(model)
    # A configured model (or alias) is no tuned model: refused, saying so.
    for name in (BASE, "smol-alias"):
        with pytest.raises(openai.PermissionDeniedError) as info:
            client.models.delete(name)
        assert "only tuned models can be deleted" in info.value.body["message"]
    # Another team's: not found.
    other_admin = server.cli("keys", "create", "--team", "other", "--role", "admin").stdout.strip()
    with pytest.raises(openai.NotFoundError):
        compat(server, other_admin).models.delete(model)

    deleted = client.models.delete(model)
    assert deleted.id == model and deleted.deleted is True and deleted.object == "model"
    # Gone at once, on both surfaces, for calling and listing.
    with pytest.raises(openai.NotFoundError):
        greedy(client, model)
    assert model not in [m.id for m in client.models.list().data]
    response = httpx.delete(f"{server.base_url}/models/{model}", headers=server.headers(admin_key), timeout=30)
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"
    # The native surface deletes too (its SDK has no delete: plain HTTP).
    again = add_tuned(source, tmp, mine, "gone2", seed=4)
    response = httpx.delete(f"{server.base_url}/models/{again}", headers=server.headers(admin_key), timeout=30)
    assert response.status_code == 200 and response.json() == {"id": again, "object": "model", "deleted": True}


# --- reloading under load ------------------------------------------------------------------


def test_a_new_tuned_model_reloads_without_cutting_requests_in_flight(served):
    server, source, tmp = served
    mine = team_id(server, "test")
    client = compat(server)
    base_before = greedy(client, BASE, max_tokens=24)
    reloads_before = metric(server, "llamahost_adapter_reload_seconds_count")
    # Long (a reload takes seconds; these take tens of them), each its own length.
    budgets = [900, 1000, 1100]
    results: dict[int, dict] = {}
    started = threading.Barrier(len(budgets) + 1)

    def stream(i: int, budget: int) -> None:
        text, finish, usage, pieces = [], None, None, 0
        try:
            chunks = client.chat.completions.create(
                model=BASE, messages=COUNTING, max_tokens=budget, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in chunks:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    text.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
                    pieces += 1
                    if pieces == 5:
                        started.wait()  # generating: the reload comes now
            results[i] = {"text": "".join(text), "finish": finish, "usage": usage}
        except BaseException as exc:  # the assertion below reports it
            results[i] = {"error": repr(exc)}
            started.abort()

    threads = [threading.Thread(target=stream, args=(i, b)) for i, b in enumerate(budgets)]
    for t in threads:
        t.start()
    started.wait()
    # Every stream is mid-generation: a tuned model this process has never loaded arrives.
    model = add_tuned(source, tmp, mine, "fresh", seed=5)
    tuned_text = greedy(client, model, max_tokens=24)
    # The old server is still finishing the streams (counting to thousands, greedy).
    assert metric(server, "llamahost_engine_servers") == 2
    for t in threads:
        t.join()
    for i, budget in enumerate(budgets):
        result = results[i]
        assert "error" not in result, result
        assert result["finish"] == "length" and result["usage"].completion_tokens == budget, result
        assert ", 100, 101, 102, " in result["text"]  # the sequence, uncut
    assert tuned_text and tuned_text != base_before
    assert greedy(client, BASE, max_tokens=24) == base_before  # the new server: the same base model
    assert metric(server, "llamahost_adapter_reload_seconds_count") == reloads_before + 1
    # Drained and closed: one server again.
    deadline = time.monotonic() + 60
    while metric(server, "llamahost_engine_servers") != 1:
        assert time.monotonic() < deadline, "the replaced server was never closed"
        time.sleep(0.2)
