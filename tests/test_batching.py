"""Continuous batching in the embedded engine, through the official SDK over HTTP:
batched sequences give exactly what they give alone, cancellation frees a slot, and
grammar-constrained and free sequences share a batch without disturbing each other."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from jsonschema import validate
from llama_api_client import AsyncLlamaAPIClient

from test_load import ENDLESS as ENDLESS_BUNDLED
from test_load import metric, stopped_early, wait_until

MODEL = "batched"
PROMPTS = [
    "Name three colours of the rainbow.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Count from one to ten in words.",
    "Give me a tip for learning to cook.",
    "What do bees make?",
    "Describe a cat in one sentence.",
    "Say something kind about Mondays.",
]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "pets": {"type": "array", "items": {"type": "string", "enum": ["cat", "dog", "fish"]}, "maxItems": 3},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}
ENDLESS = {**ENDLESS_BUNDLED, "model": MODEL}  # runs for its whole budget unless stopped


@pytest.fixture(scope="module")
def batched_server(tmp_path_factory):
    # Without prefix reuse: a reused prefix may change greedy output by rounding (README, Load).
    from conftest import start_server

    server = start_server(
        tmp_path_factory.mktemp("batched"),
        config=f'[[models]]\nid = "{MODEL}"\nparallel = 8\ncontext_window = 1024\nmax_queue = 8\nprefix_cache = false\n',
    )
    yield server
    server.stop()


async def _stream_text(client: AsyncLlamaAPIClient, prompt: str, tokens: int = 40, **extra) -> str:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_completion_tokens=tokens,
        temperature=0,
        stream=True,
        **extra,
    )
    text = []
    async for chunk in stream:
        if chunk.event.event_type == "progress" and chunk.event.delta.type == "text":
            text.append(chunk.event.delta.text)
    return "".join(text)


def _client(server) -> AsyncLlamaAPIClient:
    return AsyncLlamaAPIClient(api_key=server.key, base_url=server.base_url, max_retries=0, timeout=300)


@pytest.mark.anyio
async def test_eight_concurrent_greedy_streams_match_their_solo_text(batched_server):
    async with _client(batched_server) as client:
        alone = [await _stream_text(client, p) for p in PROMPTS]
        together = await asyncio.gather(*(_stream_text(client, p) for p in PROMPTS))
    assert all(alone), alone
    assert list(together) == alone


@pytest.mark.anyio
async def test_constrained_and_free_sequences_in_one_batch_stay_correct(batched_server):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    free_prompts = PROMPTS[:4]
    async with _client(batched_server) as client:
        alone = [await _stream_text(client, p) for p in free_prompts]
        results = await asyncio.gather(
            *(_stream_text(client, p) for p in free_prompts),
            *(
                _stream_text(client, f"Invent person number {i}: their name, age and pets.", 120, response_format=response_format)
                for i in range(4)
            ),
        )
    assert list(results[:4]) == alone
    for text in results[4:]:
        validate(json.loads(text), SCHEMA)


def _first_token_seconds(server, timeout: float = 60) -> float:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 4, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=server.headers(), timeout=timeout) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["event"]["event_type"] == "progress":
                return time.monotonic() - started
    raise AssertionError("no progress event")


@pytest.mark.anyio
async def test_a_cancelled_stream_frees_its_slot(server_factory):
    # Two slots, both taken by endless generations: a third request waits. Cancelling
    # one of them must let the third start at once, while the other keeps streaming.
    server = server_factory(config=f'[[models]]\nid = "{MODEL}"\nparallel = 2\ncontext_window = 4096\n')
    users = [f"endless-{n}-{uuid.uuid4().hex[:8]}" for n in range(2)]
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers(), timeout=120) as client:
        streams = [client.stream("POST", "/v1/chat/completions", json={**ENDLESS, "user": u}) for u in users]
        responses = [await s.__aenter__() for s in streams]
        assert all(r.status_code == 200 for r in responses)
        lines = [r.aiter_lines() for r in responses]
        for it in lines:
            for _ in range(3):
                await anext(it)
        waiting = asyncio.create_task(asyncio.to_thread(_first_token_seconds, server))
        await wait_until(lambda: metric(server, "llamahost_queue_depth", MODEL) == 1)
        assert not waiting.done(), "the third request ran although both slots were busy"
        await streams[0].__aexit__(None, None, None)  # the client goes away
        await asyncio.wait_for(waiting, 300)  # a deadline against a hang, not a speed check
        # The surviving stream is still generating.
        for _ in range(3):
            assert (await anext(lines[1])) is not None
        await streams[1].__aexit__(None, None, None)
    # Neither endless generation can end before its 4,000 tokens, and both advance one
    # token per batch step: had the cancelled one kept its slot, the third request could
    # only have started as the survivor ended too. The survivor was cut off far earlier.
    survivor = await asyncio.to_thread(stopped_early, server, users[1])
    assert survivor["completion_tokens"] < ENDLESS["max_completion_tokens"] // 2, survivor
    stopped_early(server, users[0])
    assert metric(server, "llamahost_queue_depth", MODEL) == 0


def _reused_tokens(server) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f'llamahost_prefix_cache_tokens_total{{model="{MODEL}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.anyio
async def test_a_shared_prefix_is_reused_not_recomputed(server_factory):
    batched_server = server_factory(config=f'[[models]]\nid = "{MODEL}"\nparallel = 2\ncontext_window = 1024\n')
    system = "You are a meticulous assistant for a bakery. " * 12
    conversation = [{"role": "system", "content": system}, {"role": "user", "content": "What bread is best for toast?"}]

    async def ask(messages) -> tuple[str, int]:
        async with _client(batched_server) as client:
            response = await client.chat.completions.create(
                model=MODEL, messages=messages, max_completion_tokens=24, temperature=0
            )
        prompt_tokens = next(m.value for m in response.metrics if m.metric == "num_prompt_tokens")
        return response.completion_message.content.text, int(prompt_tokens)

    first, prompt_tokens = await ask(conversation)
    before = _reused_tokens(batched_server)
    again, _ = await ask(conversation)
    reused = _reused_tokens(batched_server) - before
    assert again.split()[:2] == first.split()[:2]  # equal up to rounding (README, Load)
    assert reused >= prompt_tokens - 1, (reused, prompt_tokens)
    # The next turn of the chat reuses the whole earlier prompt.
    before = _reused_tokens(batched_server)
    await ask([*conversation, {"role": "assistant", "content": first}, {"role": "user", "content": "And for sandwiches?"}])
    assert _reused_tokens(batched_server) - before >= prompt_tokens - 1
