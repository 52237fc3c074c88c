"""Behaviour under load: the bounded wait queue, and disconnects freeing the engine."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

MODEL = "SmolLM2-135M-Instruct"
# Temperature 2 over the whole vocabulary almost never samples end-of-sequence, so
# these generations run for their whole (long) budget unless something stops them.
ENDLESS = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me an extremely long story."}],
    "max_completion_tokens": 4000,
    "temperature": 2.0,
    "top_p": 1.0,
    "stream": True,
}
SHORT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 8, "stream": True}


def first_token_seconds(server) -> float:
    started = time.monotonic()
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=SHORT, headers=server.headers(), timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["event"]["event_type"] == "progress":
                return time.monotonic() - started
    raise AssertionError("no progress event")


def test_disconnected_stream_frees_the_engine(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=ENDLESS, headers=server.headers(), timeout=60) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data:"):
                seen += 1
            if seen >= 5:
                break
    # Leaving the block closed the connection mid-stream.
    assert first_token_seconds(server) < 2.0
    assert "completion_tokens=4000" not in server.log()


def test_disconnected_non_streaming_request_frees_the_engine(server):
    body = {**ENDLESS, "stream": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, headers=server.headers(), timeout=1.0)
    assert first_token_seconds(server) < 2.0


@pytest.mark.anyio
async def test_queue_bound_gives_503_with_retry_after(server_factory):
    server = server_factory(config='[[models]]\nid = "tiny"\nparallel = 1\nmax_queue = 1\n')
    body = {**ENDLESS, "model": "tiny"}
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers(), timeout=60) as client:
        running = client.stream("POST", "/v1/chat/completions", json=body)
        first = await running.__aenter__()  # occupies the engine
        assert first.status_code == 200
        waiting = asyncio.create_task(client.post("/v1/chat/completions", json={**body, "stream": False, "max_completion_tokens": 2}))
        await asyncio.sleep(0.5)  # let it reach the queue
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
