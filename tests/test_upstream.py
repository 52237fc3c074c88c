"""Serving through real upstream engines: two ``llama_cpp.server`` processes on the
bundled model as replicas of one model id, driven through llamahost with the
official SDKs; failover, recovery, metrics, request ids and ``--workers``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from llama_api_client import APIError as LlamaAPIError
from llama_api_client import BadRequestError, InternalServerError, LlamaAPIClient
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, run_cli, start_server
from ratelimit_helpers import assert_exact_burst, burst, chat_body, new_team
from test_shared_limits import shared_env  # noqa: F401  (the fixture: a fresh PostgreSQL schema and Redis prefix)
from upstreams import UpstreamReplica, upstream_model_config

BENCH = Path(__file__).resolve().parents[1] / "bench"
MODEL = "smol-upstream"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
FORCE_TOOL = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    logs = tmp_path_factory.mktemp("replicas")
    started = [UpstreamReplica(logs / "a.log").start(), UpstreamReplica(logs / "b.log").start()]
    yield started
    for replica in started:
        replica.kill()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, replicas):
    config = (
        '[server]\nlog_format = "json"\n'
        + upstream_model_config(MODEL, replicas, 'aliases = ["Llama-3.3-70B-Instruct"]')
        # A second id on the same upstream: several llamahost ids, one upstream model.
        + upstream_model_config("smol-upstream-b", replicas, 'json_schema = true\nupstream_streaming = "as_requested"')
        # The embedded engine beside them, which still refuses tools.
        + '[[models]]\nid = "embedded"\ncontext_window = 2048\n'
    )
    server = start_server(tmp_path_factory.mktemp("gateway"), config)
    yield server
    server.stop()


def metric_samples(url: str, name: str) -> dict[tuple, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def ok_attempts(url: str, model: str) -> dict[str, float]:
    samples = metric_samples(url, "llamahost_upstream_attempts_total")
    return {
        dict(k)["replica"]: v for k, v in samples.items() if dict(k)["model"] == model and dict(k)["outcome"] == "ok"
    }


def native(server) -> LlamaAPIClient:
    return LlamaAPIClient(api_key=server.key, base_url=server.base_url, max_retries=0, timeout=60)


def compat(server) -> OpenAI:
    return OpenAI(api_key=server.key, base_url=server.url + "/compat/v1", max_retries=0, timeout=60)


def long_stream_in_flight(server, model: str):
    """Start a native stream that runs for a long while; return its event iterator, a
    few events in, and the URL of the replica serving it. Greedy, so its length is no
    matter of sampling luck: the bundled model tells this story past 600 tokens without
    an end-of-sequence (measured on llama.cpp), while a sampled reply may end at once."""
    stream = native(server).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me an extremely long story."}],
        max_completion_tokens=1500,
        temperature=0,
        stream=True,
    )
    events = iter(stream)
    assert next(events).event.event_type == "start"
    for _ in range(3):
        assert next(events).event.event_type == "progress"
    status = httpx.get(server.url + "/health", timeout=5).json()["upstreams"][model]
    return events, next(r["url"] for r in status if r["outstanding"] == 1)


def test_native_sdk_through_replicas(gateway):
    client = native(gateway)
    messages = [{"role": "user", "content": "Name three colours."}]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=12, temperature=0)
    message = response.completion_message
    assert message.content.text.strip()
    assert message.stop_reason in ("stop", "length")
    metrics = {m.metric: m.value for m in response.metrics}
    assert metrics["num_prompt_tokens"] > 5 and 1 <= metrics["num_completion_tokens"] <= 12
    assert metrics["num_total_tokens"] == metrics["num_prompt_tokens"] + metrics["num_completion_tokens"]

    events = list(
        client.chat.completions.create(model="Llama-3.3-70B-Instruct", messages=messages, max_completion_tokens=12, temperature=0, stream=True)
    )
    kinds = [e.event.event_type for e in events]
    assert kinds[0] == "start" and kinds[-2:] == ["complete", "metrics"]
    assert "".join(e.event.delta.text for e in events if e.event.event_type == "progress") == message.content.text


def test_openai_sdk_through_replicas(gateway):
    client = compat(gateway)
    messages = [{"role": "user", "content": "Say hello."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    assert whole.choices[0].message.content and whole.usage.total_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="smol-upstream-b", messages=messages, max_tokens=10, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_non_streaming_requests_can_go_up_as_json(gateway):
    """upstream_streaming = "as_requested": a JSON request goes up as JSON; same text as
    the streamed-upstream path, token counts from the upstream's own usage."""
    client = native(gateway)
    kwargs = dict(messages=[{"role": "user", "content": "Write about the sea."}], max_completion_tokens=6, temperature=0)
    as_json = client.chat.completions.create(model="smol-upstream-b", **kwargs)
    streamed_up = client.chat.completions.create(model=MODEL, **kwargs)
    assert as_json.completion_message.content.text == streamed_up.completion_message.content.text
    assert as_json.completion_message.stop_reason == "length"
    assert {m.metric: m.value for m in as_json.metrics}["num_completion_tokens"] == 6
    call = compat(gateway).chat.completions.create(
        model="smol-upstream-b", messages=[{"role": "user", "content": "Weather in Rome?"}], tools=TOOLS,
        tool_choice=FORCE_TOOL, max_tokens=40, temperature=0,
    ).choices[0]
    assert call.finish_reason == "tool_calls" and call.message.tool_calls[0].function.name == "get_weather"


def test_tool_calls_are_translated_both_ways(gateway):
    """Forced tool call through the upstream's own grammar: tool-call deltas become
    native tool_call events and OpenAI tool_calls; the tool result goes back up."""
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    events = list(
        native(gateway).chat.completions.create(
            model=MODEL, messages=question, tools=TOOLS, tool_choice=FORCE_TOOL, max_completion_tokens=40, stream=True,
            temperature=0,
        )
    )
    deltas = [e.event.delta for e in events if e.event.event_type == "progress"]
    assert deltas and all(d.type == "tool_call" for d in deltas)
    assert deltas[0].function.name == "get_weather" and deltas[0].id
    arguments = json.loads("".join(d.function.arguments or "" for d in deltas))
    assert isinstance(arguments.get("city"), str)
    assert events[-1].event.stop_reason == "tool_calls"

    client = compat(gateway)
    first = client.chat.completions.create(
        model=MODEL, messages=question, tools=TOOLS, tool_choice=FORCE_TOOL, max_tokens=40, temperature=0
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    follow_up = client.chat.completions.create(
        model=MODEL,
        messages=[
            *question,
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
        ],
        max_tokens=12,
        temperature=0,
    )
    assert follow_up.choices[0].message.content


def test_capabilities_decide_what_passes(gateway):
    client = native(gateway)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]}]
        )
    assert refused.value.body["error"]["param"] == "messages[0].content[1]"  # vision not declared
    # The embedded engine serves tools (constrained decoding) but not images.
    with pytest.raises(BadRequestError) as embedded:
        client.chat.completions.create(model="embedded", messages=[{"role": "user", "content": [image]}])
    assert embedded.value.body["error"]["param"] == "messages[0].content[0]"
    # json_schema is passed through as response_format json_schema. This upstream
    # (llama_cpp.server) only knows json_object and refuses it, with a 500 of its own:
    # the client gets a 502 that quotes the upstream, and no replica is ejected for it.
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    with pytest.raises(InternalServerError) as upstream:
        client.chat.completions.create(
            model="smol-upstream-b", messages=[{"role": "user", "content": "hi"}], response_format=schema,
            max_completion_tokens=4,
        )
    assert upstream.value.status_code == 502
    assert upstream.value.body["error"]["code"] == "upstream_error"
    assert "json_schema" in upstream.value.body["error"]["message"]
    status = httpx.get(gateway.url + "/health", timeout=5).json()["upstreams"]["smol-upstream-b"]
    assert all(r["healthy"] for r in status)


def test_context_window_is_checked_before_sending(gateway):
    long_prompt = "word " * 3000  # ~3000 Llama 3 tokens, over the 2048 window
    response = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": long_prompt}], "max_completion_tokens": 8},
        headers=gateway.headers(),
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_completion_tokens"


def test_both_replicas_take_traffic(gateway, replicas):
    before = ok_attempts(gateway.url, MODEL)
    client = native(gateway)
    for _ in range(6):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=2)
    after = ok_attempts(gateway.url, MODEL)
    for replica in replicas:
        assert after.get(replica.url, 0) - before.get(replica.url, 0) >= 2, (before, after)
    healthy = metric_samples(gateway.url, "llamahost_upstream_replica_healthy")
    assert sorted(v for k, v in healthy.items() if dict(k)["model"] == MODEL) == [1.0, 1.0]


def test_request_id_is_echoed_and_logged_as_json(gateway):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 2}
    response = httpx.post(
        gateway.base_url + "/chat/completions", json=body, headers=gateway.headers() | {"x-request-id": "trace-42"}, timeout=30
    )
    assert response.headers["x-request-id"] == "trace-42"
    generated = httpx.get(gateway.url + "/v1/models", headers=gateway.headers(), timeout=10).headers["x-request-id"]
    assert len(generated) == 32
    unauthorized = httpx.get(gateway.url + "/v1/models", headers={"x-request-id": "bad id with spaces"}, timeout=10)
    assert unauthorized.status_code == 401 and unauthorized.headers["x-request-id"] != "bad id with spaces"
    records = [json.loads(line) for line in gateway.log().splitlines() if line.startswith("{")]
    mine = [r for r in records if r.get("request_id") == "trace-42"]
    assert {r.get("event") for r in mine} >= {"chat_completion", "http_request"}
    chat = next(r for r in mine if r.get("event") == "chat_completion")
    assert chat["status"] == "ok" and chat["model"] == MODEL and chat["completion_tokens"] >= 1


def test_no_reachable_replica_is_503(server_factory):
    dead = [UpstreamReplica.__new__(UpstreamReplica)]
    dead[0].port = 9  # discard port: nothing listens, connections are refused
    server = server_factory(config=upstream_model_config("nowhere", dead))
    response = httpx.post(
        server.base_url + "/chat/completions",
        json={"model": "nowhere", "messages": [{"role": "user", "content": "Hi"}]},
        headers=server.headers(),
        timeout=30,
    )
    assert response.status_code == 503 and response.headers["retry-after"]
    assert response.json()["error"]["code"] in ("upstream_unavailable", "no_healthy_replica")


def test_workers_share_the_port_and_metrics(gateway, replicas, server_factory):
    server = server_factory(config=upstream_model_config(MODEL, replicas), args=("--workers", "2"))
    with ThreadPoolExecutor(4) as pool:
        codes = list(
            pool.map(
                lambda _: httpx.post(
                    server.base_url + "/chat/completions",
                    json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 2},
                    headers=server.headers(),
                    timeout=60,
                ).status_code,
                range(8),
            )
        )
    assert codes == [200] * 8
    assert server.log().count("Started server process") == 2
    # Whichever worker answers /metrics reports the sum over both.
    for _ in range(3):
        ok = metric_samples(server.url, "llamahost_chat_requests_total")
        assert ok[(("model", MODEL), ("status", "ok"))] == 8


def test_replica_dies_mid_run_and_comes_back(tmp_path, server_factory):
    a, b = UpstreamReplica(tmp_path / "a.log").start(), UpstreamReplica(tmp_path / "b.log").start()
    try:
        server = server_factory(config='[server]\nlog_format = "json"\n' + upstream_model_config("fo", [a, b]))
        client = native(server)
        # A long stream in flight on one replica...
        events, busy = long_stream_in_flight(server, "fo")
        victim, survivor = (a, b) if busy == a.url else (b, a)

        # ...while a run of 50 short requests goes on; the victim is killed during it.
        results: list[tuple[float, float, bool]] = []
        killed_at: list[float] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            started = time.monotonic()
            ok = True
            try:
                body = dict(model="fo", messages=[{"role": "user", "content": f"Say {i}."}], temperature=0)
                if i % 2:
                    list(compat(server).chat.completions.create(max_tokens=3, stream=i % 4 == 1, **body))
                else:
                    client.chat.completions.create(max_completion_tokens=3, **body)
            except Exception:
                ok = False
            with lock:
                results.append((started, time.monotonic(), ok))
                if len(results) == 10 and not killed_at:
                    killed_at.append(time.monotonic())
                    victim.kill()

        with ThreadPoolExecutor(3) as pool:
            run = [pool.submit(one, i) for i in range(50)]
            # The in-flight stream ends with an error event, well within the read timeout (5 s).
            with pytest.raises(LlamaAPIError):
                for _ in events:
                    pass
            error_seen = time.monotonic()
            for future in run:
                future.result(timeout=120)
        assert killed_at, "the victim was never killed"
        assert error_seen - killed_at[0] < 5.0
        started_after_kill = [ok for started, _, ok in results if started > killed_at[0]]
        assert len(started_after_kill) >= 30 and all(started_after_kill)
        assert all(end - started < 60 for started, end, _ in results)  # nobody hung
        assert sum(ok for *_, ok in results) >= 45
        print(
            f"\nfailover: stream error {error_seen - killed_at[0]:.2f}s after the kill; "
            f"{len(started_after_kill)} requests started after it, all ok; "
            f"{sum(ok for *_, ok in results)}/50 ok in all"
        )

        records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        failed = [r for r in records if r.get("event") == "chat_completion" and r["status"] == "error"]
        assert any(victim.url in (r.get("error") or "") for r in failed)  # the log says which replica
        # ...and the usage record says the stream failed, with what it had generated.
        usage = json.loads(server.cli("usage", "--json", "--limit", "100").stdout)["data"]
        broken = [u for u in usage if u["status"] == "server_error"]
        assert broken and all(u["completion_tokens"] >= 3 for u in broken)

        # The replica comes back: health checks return it to service and it gets traffic.
        victim.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = httpx.get(server.url + "/health", timeout=5).json()["upstreams"]["fo"]
            if all(r["healthy"] for r in status):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"victim not back in service: {status}")
        before = ok_attempts(server.url, "fo").get(victim.url, 0)
        for _ in range(6):
            client.chat.completions.create(model="fo", messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=2)
        assert ok_attempts(server.url, "fo").get(victim.url, 0) - before >= 2
        assert survivor.process.poll() is None
    finally:
        a.kill()
        b.kill()


def test_upstream_usage_is_preferred_to_counting(server_factory, tmp_path):
    """The bench's stub upstream reports usage as vLLM does (include_usage): those
    numbers, not llamahost's tokenizer count, are what the client sees."""
    port = free_port()
    stub = subprocess.Popen([sys.executable, str(BENCH / "gateway.py"), "--stub", str(port)])
    try:
        replica = UpstreamReplica.__new__(UpstreamReplica)
        replica.port = port
        for _ in range(100):
            try:
                if httpx.get(replica.url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        server = server_factory(config=upstream_model_config("stubbed", [replica]))
        response = native(server).chat.completions.create(model="stubbed", messages=[{"role": "user", "content": "Hi"}])
        metrics = {m.metric: m.value for m in response.metrics}
        assert (metrics["num_prompt_tokens"], metrics["num_completion_tokens"]) == (12, 21)
        assert response.completion_message.content.text.startswith("Hello there!")
    finally:
        stub.terminate()
        stub.wait(timeout=10)


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"max_completion_tokens": 4000}, "max_completion_tokens"),
    ],
)
def test_bad_upstream_requests_are_4xx_naming_the_field(gateway, patch, param):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **patch}
    response = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=gateway.headers(), timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('[[models]]\nid = "x"\nengine = "openai"\n', "needs replicas"),
        ('[[models]]\nid = "x"\nengine = "openai"\nreplicas = ["10.0.0.5:8000"]\n', "http://"),
        ('[[models]]\nid = "x"\nengine = "openai"\nreplicas = ["http://h/v1"]\npath = "bundled"\n', "llamacpp key"),
        ('[[models]]\nid = "x"\nreplicas = ["http://h/v1"]\n', "openai-engine key"),
        ('[[models]]\nid = "x"\nvision = true\n', "cannot serve vision"),
        ('[[models]]\nid = "x"\nengine = "openai"\nreplicas = ["http://h/v1"]\napi_key_env = "LLAMAHOST_TEST_UNSET"\n', "LLAMAHOST_TEST_UNSET"),
    ],
)
def test_bad_upstream_config_is_refused_at_startup(tmp_path, config, message):
    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = run_cli(tmp_path / "data", "serve", "--port", "0", "--config", str(path), check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_silent_replica_ends_the_stream_within_the_read_timeout(gateway, replicas):
    """A replica that stops answering (SIGSTOP: connections stay open, nothing comes)
    ends the in-flight stream with an error event after read_timeout (5 s), not a hang."""
    client = native(gateway)
    events, busy_url = long_stream_in_flight(gateway, MODEL)
    busy = next(r for r in replicas if r.url == busy_url)
    os.kill(busy.process.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        with pytest.raises(LlamaAPIError, match="read timeout"):
            for _ in events:
                pass
        waited = time.monotonic() - stopped
        assert 3.0 < waited < 9.0, waited
        # The other replica keeps serving meanwhile.
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=2)
    finally:
        os.kill(busy.process.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(r["healthy"] for r in httpx.get(gateway.url + "/health", timeout=5).json()["upstreams"][MODEL]):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the stopped replica did not come back")


@pytest.mark.anyio
async def test_two_gateways_on_shared_postgres_and_redis_enforce_one_limit(replicas, server_factory, shared_env):  # noqa: F811
    """Two llamahost processes in front of the same upstream replicas, sharing PostgreSQL
    and Redis: one team's limit holds exactly across both, and each counts its refusals."""
    env = {k: v for k, v in shared_env.items() if not k.startswith("_")}
    config = upstream_model_config(MODEL, replicas)
    a, b = (server_factory(config=config, env=env, name="gw") for _ in range(2))
    team = new_team()
    key = a.cli("keys", "create", "--team", team).stdout.strip()
    b.cli("limits", "set", "--team", team, "--rpm", "5")
    replies = await burst([a.url, b.url], key, 30, chat_body(stream=True) | {"model": MODEL})
    assert_exact_burst(replies, 5)
    refused = 0
    for server in (a, b):
        samples = metric_samples(server.url, "llamahost_rate_limit_rejections_total")
        refused += samples.get((("limit", "requests_per_minute_exceeded"),), 0)
    assert refused == 25
    usage = json.loads(a.cli("usage", "--team", team, "--json").stdout)["totals"]
    assert usage["requests"] == 30  # 5 served through the upstream + 25 refused, all recorded
