"""Behaviour under load: the bounded wait queue, and disconnects freeing the engine."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest

MODEL = "SmolLM2-135M-Instruct"
# Runs for its whole budget unless something stops it, whatever is sampled: the reply
# must be a JSON string of at least 200,000 characters, and no token of the vocabulary
# is longer than 32 bytes, so 4,000 tokens cannot close it and the grammar masks
# end-of-sequence until then.
ENDLESS = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me an extremely long story."}],
    "max_completion_tokens": 4000,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "story", "schema": {"type": "string", "minLength": 200_000}},
    },
    "temperature": 1.0,
    "stream": True,
}
SHORT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 8, "stream": True}


def streams_a_token(server) -> bool:
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=SHORT, headers=server.headers(), timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["event"]["event_type"] == "progress":
                return True
    return False


def stopped_early(server, user: str) -> dict:
    """The usage record of ``user``'s one request once it is written (the generation has
    ended): the server stopped it, before its budget, when the client went away."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        records = json.loads(server.cli("usage", "--user", user, "--json").stdout)["data"]
        if records:
            break
        time.sleep(0.2)
    assert [r["status"] for r in records] == ["cancelled"], records
    assert records[0]["completion_tokens"] < ENDLESS["max_completion_tokens"], records
    return records[0]


def test_disconnected_stream_frees_the_engine(server):
    user = f"gone-{uuid.uuid4().hex[:8]}"
    body = {**ENDLESS, "user": user}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=server.headers(), timeout=60) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data:"):
                seen += 1
            if seen >= 5:
                break
    # Leaving the block closed the connection mid-stream.
    stopped_early(server, user)
    assert streams_a_token(server)


@pytest.mark.anyio
async def test_disconnected_non_streaming_request_frees_the_engine(server):
    user = f"gone-{uuid.uuid4().hex[:8]}"
    body = {**ENDLESS, "stream": False, "user": user}
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers(), timeout=120) as client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        # Once it is generating (a JSON reply says nothing until it is done), go away.
        await wait_until(lambda: in_flight(server) >= 1 and not request.done())
        request.cancel()
    stopped_early(server, user)
    assert streams_a_token(server)


def metric(server, name: str, model: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


def in_flight(server, model: str = MODEL) -> float:
    return metric(server, "llamahost_requests_in_flight", model)


async def wait_until(condition, seconds: float = 120) -> None:
    """Poll ``condition`` (a blocking call, run in a thread) until it holds."""
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


@pytest.mark.anyio
async def test_queue_bound_gives_503_with_retry_after(server_factory):
    server = server_factory(config='[[models]]\nid = "tiny"\nparallel = 1\nmax_queue = 1\n')
    body = {**ENDLESS, "model": "tiny"}
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers(), timeout=60) as client:
        running = client.stream("POST", "/v1/chat/completions", json=body)
        first = await running.__aenter__()  # occupies the engine
        assert first.status_code == 200
        short = {**body, "stream": False, "max_completion_tokens": 2}
        waiting = asyncio.create_task(client.post("/v1/chat/completions", json=short))
        await wait_until(lambda: metric(server, "llamahost_queue_depth", "tiny") == 1)  # it reached the queue
        refused = await client.post("/v1/chat/completions", json=body)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"]
        assert refused.json()["error"]["type"] == "service_unavailable"
        await running.__aexit__(None, None, None)  # disconnect: the waiting request runs
        done = await asyncio.wait_for(waiting, 30)
        assert done.status_code == 200


def test_health_is_ok_when_loaded(server):
    response = httpx.get(server.url + "/health", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "ok"
