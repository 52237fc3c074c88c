"""Tuned models of an upstream model: their PEFT adapters loaded into every vLLM replica at
run time, and loaded again after a replica restarts.

The replicas are real processes speaking vLLM's runtime-LoRA API over HTTP
(tests/vllm_stub.py: vLLM's request and error shapes); each restart is a process killed and
started again on its port, which forgets its adapters as vLLM does. The tuned models come
from a small in-memory ``TunedModelSource`` (the contract serving reads; the fine-tuning
store implements it over the database).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from llamahost.config import ModelConfig
from llamahost.engines.base import Finished, TextOut
from llamahost.engines.openai_upstream import OpenAIUpstreamEngine
from llamahost.errors import APIError
from llamahost.types.chat import ChatMessage, ChatRequest
from llamahost.types.tuned import TunedModel

STUB = Path(__file__).with_name("vllm_stub.py")
TEAM = 7
TUNED = TunedModel(
    id="ft:big:t3f9a1c2:support:ftjob-abc123", team_id=TEAM, base_model="big", job_id="ftjob-abc123",
    adapter_ref="ref-1", created=0,
)


class Replica:
    """One vllm_stub process on a fixed port: killed and started again, it is a restarted replica."""

    def __init__(self, tmp: Path, name: str, runtime_lora: bool = True) -> None:
        self.port = free_port()
        self.record = tmp / f"{name}.jsonl"
        self.runtime_lora = runtime_lora
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Replica:
        env = {k: v for k, v in os.environ.items() if k != "VLLM_ALLOW_RUNTIME_LORA_UPDATING"}
        if self.runtime_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        self.process = subprocess.Popen(
            [sys.executable, str(STUB), "--port", str(self.port), "--record", str(self.record), "--base", "base"], env=env
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("vllm_stub did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def calls(self, path: str | None = None) -> list[dict]:
        if not self.record.exists():
            return []
        rows = [json.loads(line) for line in self.record.read_text().splitlines()]
        return [r for r in rows if path is None or r["path"] == path]

    def models(self) -> list[str]:
        return [m["id"] for m in httpx.get(self.url + "/models", timeout=5).json()["data"]]

    def wait_for(self, predicate, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.url}: {what} did not happen; calls: {self.calls()}")
            time.sleep(0.05)


class Source:
    """Tuned models in memory, with a PEFT folder each (what the fine-tuning store hands out)."""

    def __init__(self, *models: TunedModel) -> None:
        self.models = {m.id: m for m in models}
        self.peft_reads = 0

    def get(self, team_id: int, model_id: str) -> TunedModel | None:
        model = self.models.get(model_id)
        return model if model is not None and model.team_id == team_id else None

    def list(self, team_id: int) -> list[TunedModel]:
        return [m for m in self.models.values() if m.team_id == team_id]

    def all_for_base(self, base_model: str) -> list[TunedModel]:
        return [m for m in self.models.values() if m.base_model == base_model]

    def adapter_gguf(self, model: TunedModel) -> bytes:
        raise AssertionError("an upstream engine loads the PEFT folder, never the GGUF")

    def adapter_peft(self, model: TunedModel) -> dict[str, bytes]:
        self.peft_reads += 1
        config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
        return {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": b"\0" * 64}

    def delete(self, team_id: int, model_id: str) -> bool:
        return self.models.pop(model_id, None) is not None


@pytest.fixture
def replicas(tmp_path):
    started: list[Replica] = []

    def make(n: int = 1, runtime_lora: bool = True) -> list[Replica]:
        for i in range(n):
            started.append(Replica(tmp_path, f"replica{len(started)}-{i}", runtime_lora).start())
        return started[-n:]

    yield make
    for replica in started:
        replica.stop()


def engine_for(replicas: list[Replica], tmp: Path, source: Source, **config) -> OpenAIUpstreamEngine:
    written = tmp / "adapters"
    # The replicas see the same directory under another path (a volume mounted elsewhere).
    mounted = tmp / "mnt-adapters"
    written.mkdir(exist_ok=True)
    if not mounted.exists():
        mounted.symlink_to(written)
    config.setdefault("health_check_interval", 3600)
    engine = OpenAIUpstreamEngine(
        ModelConfig(
            id="big", engine="openai", upstream_model="base", replicas=[r.url for r in replicas],
            lora_dir=str(written), upstream_lora_dir=str(mounted), context_window=4096, **config,
        )
    )
    engine.tuned_source = source  # what the registry does for every engine, before they load
    return engine


def chat(adapter: str | None, team_id: int | None = TEAM) -> ChatRequest:
    return ChatRequest(model="big", messages=[ChatMessage("user", "hi")], adapter=adapter, team_id=team_id, max_tokens=8)


async def ask(engine: OpenAIUpstreamEngine, request: ChatRequest) -> str:
    if request.adapter is not None:  # what the chat service does for a tuned model, then prepare
        tuned = engine.tuned_source.get(request.team_id, request.adapter) if engine.tuned_source else None
        if tuned is not None:
            await engine.ensure_adapter(tuned)
    prepared = await engine.prepare(request)
    events = [e async for e in engine.generate(prepared, 8)]
    assert isinstance(events[-1], Finished)
    return "".join(e.text for e in events if isinstance(e, TextOut))


def test_a_tuned_model_is_loaded_into_every_replica_with_vllms_request_shape(replicas, tmp_path):
    first, second = replicas(2)
    source = Source(TUNED)

    async def scenario() -> None:
        engine = engine_for([first, second], tmp_path, source, health_check_interval=0.1)
        await engine.load()
        try:
            # Existing tuned models are preloaded: the health loop loads them into both replicas.
            for replica in (first, second):
                await asyncio.to_thread(replica.wait_for, lambda r=replica: TUNED.id in r.models(), "preload")
            assert "r=4" in await ask(engine, chat(TUNED.id))
            assert await ask(engine, chat(None)) == "the base model answered"
        finally:
            await engine.close()

    asyncio.run(scenario())
    for replica in (first, second):
        loads = replica.calls("/v1/load_lora_adapter")
        assert [c["body"] for c in loads] == [{"lora_name": TUNED.id, "lora_path": str(tmp_path / "mnt-adapters" / "ft_big_t3f9a1c2_support_ftjob-abc123")}]
    sent = [c["body"]["model"] for r in (first, second) for c in r.calls("/v1/chat/completions")]
    assert sorted(sent) == sorted([TUNED.id, "base"])
    # The folder was written once, where the replicas read it, readable to them.
    folder = tmp_path / "adapters" / "ft_big_t3f9a1c2_support_ftjob-abc123"
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4
    assert source.peft_reads == 1 and oct(folder.stat().st_mode & 0o777) == "0o755"


def test_a_restarted_replica_gets_the_adapter_again_on_the_404_and_the_request_is_retried_once(replicas, tmp_path):
    (replica,) = replicas(1)
    source = Source(TUNED)

    async def scenario() -> None:
        engine = engine_for([replica], tmp_path, source)  # one health pass at start, then none: the 404 path alone
        await engine.load()
        try:
            # The start's health pass loads the existing tuned model; once it has, it is over.
            while TUNED.id not in (engine.loras.loaded_on(replica.url) if engine.loras else ()):
                await asyncio.sleep(0.01)
            assert "r=4" in await ask(engine, chat(TUNED.id))
            replica.restart()  # forgets its adapters
            assert TUNED.id not in replica.models()
            assert "r=4" in await ask(engine, chat(TUNED.id))
        finally:
            await engine.close()

    asyncio.run(scenario())
    paths = [(c["path"], c["body"].get("model") or c["body"].get("lora_name")) for c in replica.calls() if c["path"] != "/v1/models"]
    assert paths == [
        ("/v1/load_lora_adapter", TUNED.id),  # preloaded
        ("/v1/chat/completions", TUNED.id),
        ("/v1/chat/completions", TUNED.id),  # 404: the restarted replica does not know it
        ("/v1/load_lora_adapter", TUNED.id),
        ("/v1/chat/completions", TUNED.id),
    ]


def test_the_health_loop_reloads_what_a_restarted_replica_no_longer_lists(replicas, tmp_path):
    (replica,) = replicas(1)

    async def scenario() -> None:
        engine = engine_for([replica], tmp_path, Source(TUNED), health_check_interval=0.1)
        await engine.load()
        try:
            await asyncio.to_thread(replica.wait_for, lambda: TUNED.id in replica.models(), "first load")
            replica.restart()
            await asyncio.to_thread(replica.wait_for, lambda: TUNED.id in replica.models(), "reload after the restart")
            requests_before = len(replica.calls("/v1/chat/completions"))
            assert "r=4" in await ask(engine, chat(TUNED.id))
            # Served at the first try: the adapter was back before the request came.
            assert len(replica.calls("/v1/chat/completions")) == requests_before + 1
        finally:
            await engine.close()

    asyncio.run(scenario())
    assert len(replica.calls("/v1/load_lora_adapter")) == 2


def test_a_deleted_tuned_model_is_unloaded_and_its_folder_removed(replicas, tmp_path):
    first, second = replicas(2)
    source = Source(TUNED)

    async def scenario() -> None:
        engine = engine_for([first, second], tmp_path, source, health_check_interval=0.1)
        await engine.load()
        try:
            for replica in (first, second):
                await asyncio.to_thread(replica.wait_for, lambda r=replica: TUNED.id in r.models(), "preload")
            source.delete(TEAM, TUNED.id)
            for replica in (first, second):
                await asyncio.to_thread(replica.wait_for, lambda r=replica: TUNED.id not in r.models(), "unload")
            with pytest.raises(APIError) as refused:
                await engine.prepare(chat(TUNED.id))
            assert refused.value.status_code == 404
        finally:
            await engine.close()

    asyncio.run(scenario())
    for replica in (first, second):
        assert [c["body"] for c in replica.calls("/v1/unload_lora_adapter")] == [{"lora_name": TUNED.id}]
    assert not (tmp_path / "adapters" / "ft_big_t3f9a1c2_support_ftjob-abc123").exists()


def test_another_teams_tuned_model_is_not_found_and_the_key_goes_with_load_calls(replicas, tmp_path):
    (replica,) = replicas(1)

    async def scenario() -> None:
        engine = engine_for([replica], tmp_path, Source(TUNED), api_key="sk-upstream")
        await engine.load()
        try:
            with pytest.raises(APIError) as other_team:
                await engine.prepare(chat(TUNED.id, team_id=TEAM + 1))
            assert other_team.value.status_code == 404 and other_team.value.param == "model"
            await ask(engine, chat(TUNED.id))
        finally:
            await engine.close()

    asyncio.run(scenario())
    assert [c["auth"] for c in replica.calls("/v1/load_lora_adapter")] == ["Bearer sk-upstream"]


def test_a_replica_without_runtime_lora_loading_is_a_clear_502(replicas, tmp_path):
    (replica,) = replicas(1, runtime_lora=False)

    async def scenario() -> None:
        engine = engine_for([replica], tmp_path, Source(TUNED))
        await engine.load()
        try:
            with pytest.raises(APIError) as failed:
                await ask(engine, chat(TUNED.id))
            assert failed.value.status_code == 502
            assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in failed.value.message
        finally:
            await engine.close()

    asyncio.run(scenario())


def test_a_model_without_lora_dir_refuses_tuned_requests_by_name():
    engine = OpenAIUpstreamEngine(ModelConfig(id="big", engine="openai", replicas=["http://127.0.0.1:9/v1"]))
    engine.tuned_source = Source(TUNED)

    async def scenario() -> None:
        await engine.load()
        try:
            assert engine.loras is None
            with pytest.raises(APIError) as refused:
                await engine.ensure_adapter(TUNED)
            assert refused.value.status_code == 400 and "lora_dir" in refused.value.message
            with pytest.raises(APIError) as refused:
                await engine.prepare(chat(TUNED.id))
            assert refused.value.status_code == 400 and "lora_dir" in refused.value.message
        finally:
            await engine.close()

    asyncio.run(scenario())
