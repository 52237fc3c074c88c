"""Shared by the rate-limit tests: chat calls that return status, headers and token counts."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass

import httpx

MODEL = "SmolLM2-135M-Instruct"
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
)


def chat_body(content: str = "Hi", max_tokens: int = 1, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_completion_tokens": max_tokens, **extra}


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    body: dict
    total_tokens: int = 0

    def rate(self, name: str) -> int:
        return int(self.headers[f"x-ratelimit-{name}"])


def _tokens(metrics: list[dict]) -> int:
    return next(m["value"] for m in metrics if m["metric"] == "num_total_tokens")


async def chat(client: httpx.AsyncClient, key: str, body: dict) -> Reply:
    headers = {"Authorization": f"Bearer {key}"}
    if not body.get("stream"):
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        data = r.json()
        return Reply(r.status_code, r.headers, data, _tokens(data["metrics"]) if r.status_code == 200 else 0)
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            return Reply(r.status_code, r.headers, json.loads(await r.aread()))
        total = 0
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])["event"]
                if event["event_type"] == "metrics":
                    total = _tokens(event["metrics"])
        return Reply(r.status_code, r.headers, {}, total)


async def burst(urls: list[str], key: str, n: int, body: dict) -> list[Reply]:
    """``n`` requests at once, spread round-robin over ``urls``."""
    clients = [httpx.AsyncClient(base_url=u, timeout=120, limits=httpx.Limits(max_connections=n)) for u in urls]
    try:
        return await asyncio.gather(*(chat(clients[i % len(clients)], key, body) for i in range(n)))
    finally:
        for c in clients:
            await c.aclose()


def assert_exact_burst(replies: list[Reply], limit: int) -> None:
    """Exactly ``limit`` admitted, the rest 429 saying which limit, all with the headers."""
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] * limit + [429] * (len(replies) - limit), statuses
    for r in replies:
        for name in RATE_HEADERS:
            assert name in r.headers, (r.status, dict(r.headers))
        assert r.rate("limit-requests") == limit
    ok = [r for r in replies if r.status == 200 and "text/event-stream" in r.headers["content-type"]]
    if ok:
        # A stream's headers are those of its admission: each saw the window one fuller
        # than the last, so no two shared a slot.
        assert sorted(r.rate("remaining-requests") for r in ok) == list(range(limit))
    for r in replies:
        if r.status == 429:
            assert r.rate("remaining-requests") == 0
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert int(r.headers["retry-after-ms"]) > 0
            error = r.body["error"]
            assert error["type"] == "rate_limit_error"
            assert error["code"] == "requests_per_minute_exceeded"
            assert f"{limit} requests per minute" in error["message"]


def new_team() -> str:
    return f"team-{uuid.uuid4().hex[:8]}"
