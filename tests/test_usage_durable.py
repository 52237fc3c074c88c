"""No usage lost on a crash: every response that reached its client has its usage
record after a ``kill -9`` of the server and a restart on the same data directory and
database, on SQLite and on PostgreSQL (127.0.0.1:5432, database ``test``, a schema of
the test's own).

40 requests go out at once (chat on both surfaces, JSON and streamed, unknown models
(404), a team over its rate limit (429), moderation calls); the server is killed the
moment the 30th response is complete (and the refusals are), while the rest are still in
flight and the batch writer still holds records it has not committed. What the client received in full is
what must be accounted for."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid

import httpx

from conftest import Server, start_server

MODEL = "SmolLM2-135M-Instruct"
REQUESTS = 40
KILL_AFTER = 30  # completed responses


def _call(i: int, tag: str, key: str, limited_key: str) -> tuple[str, str, dict, str]:
    """Request ``i`` of the burst: (path, key, body, user); every chat call has a user
    of its own, which is how its usage record is found afterwards."""
    user = f"{tag}-{i}"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": f"Say {i}."}], "user": user}
    native = {**chat, "max_completion_tokens": 2}
    compat = {**chat, "max_tokens": 2}
    kind = i % 8
    if kind == 0:
        return "/v1/chat/completions", key, native, user
    if kind == 1:
        return "/v1/chat/completions", key, {**native, "stream": True}, user
    if kind == 2:
        return "/compat/v1/chat/completions", key, compat, user
    if kind == 3:
        return "/compat/v1/chat/completions", key, {**compat, "stream": True}, user
    if kind == 4:  # a 404 that is metered: the body is valid, the model unknown
        return "/v1/chat/completions", key, {**native, "model": "no-such-model", "stream": i % 16 == 4}, user
    if kind == 5:  # a team over its limit: 429s, each a usage record
        return "/v1/chat/completions", limited_key, native, user
    if kind == 6:  # moderation: a usage record of kind "moderation" (no user)
        return "/v1/moderations", key, {"messages": [{"role": "user", "content": f"Hello {i}"}]}, ""
    return "/v1/chat/completions", key, {**native, "stream": True, "max_completion_tokens": 1}, user


async def _send(client: httpx.AsyncClient, path: str, key: str, body: dict) -> int | None:
    """The status of a response received in full, or None if the server died first."""
    try:
        async with client.stream("POST", path, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
            raw = await r.aread()
            if body.get("stream") and r.status_code == 200:
                # A streamed reply is complete with its last event (native: metrics,
                # compat: [DONE]); a cut connection raised above instead.
                assert b"[DONE]" in raw or b'"metrics"' in raw.split(b"\n\n")[-2], raw[-200:]
            else:
                json.loads(raw)
            return r.status_code
    except (httpx.TransportError, httpx.RemoteProtocolError):
        return None


async def _burst_then_kill(server: Server, key: str, limited_key: str, tag: str) -> dict[int, int]:
    calls = [_call(i, tag, key, limited_key) for i in range(REQUESTS)]
    completed: dict[int, int] = {}
    async with httpx.AsyncClient(
        base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=REQUESTS)
    ) as client:

        # The refusals (404, 429) are among what must be accounted for: the kill waits for them.
        refusals = {i for i in range(REQUESTS) if i % 8 in (4, 5)}
        killed = False

        async def one(i: int) -> None:
            nonlocal killed
            path, k, body, _ = calls[i]
            status = await _send(client, path, k, body)
            if status is not None:
                completed[i] = status
                if not killed and len(completed) >= KILL_AFTER and refusals <= completed.keys():
                    # At once, in the same step of the loop that saw the response end.
                    os.kill(server.process.pid, signal.SIGKILL)
                    killed = True

        await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    server.process.wait(timeout=30)
    assert server.process.returncode == -signal.SIGKILL
    return completed


def _usage(server: Server) -> list[dict]:
    return json.loads(server.cli("usage", "--json", "--limit", "10000").stdout)["data"]


def _kill_and_restart(tmp_path, env: dict[str, str] | None) -> None:
    first = start_server(tmp_path, env=env)
    try:
        key = first.key
        limited_team = f"limited-{uuid.uuid4().hex[:6]}"
        limited_key = first.cli("keys", "create", "--team", limited_team).stdout.strip()
        first.cli("limits", "set", "--team", limited_team, "--rpm", "2")
        tag = uuid.uuid4().hex[:8]
        completed = asyncio.run(_burst_then_kill(first, key, limited_key, tag))
    finally:
        first.stop()
    statuses = sorted(set(completed.values()))
    assert len(completed) >= KILL_AFTER and {200, 404, 429} <= set(statuses), completed

    again = start_server(tmp_path, env=env, key=False)  # same data dir, same database
    try:
        records = _usage(again)
    finally:
        again.stop()
    replayed = [line for line in again.log().splitlines() if "usage records from the journal" in line]
    print(f"\n{len(completed)} responses completed before the kill; at restart: {replayed or 'nothing to replay'}")
    users = {r["user"] for r in records}
    calls = {i: _call(i, tag, key, limited_key) for i in completed}
    missing = sorted(i for i, c in calls.items() if c[3] and c[3] not in users)
    assert not missing, f"completed responses without a usage record: {[(i, completed[i]) for i in missing]}"
    moderations = sum(1 for c in calls.values() if not c[3])
    assert sum(1 for r in records if r["kind"] == "moderation") >= moderations
    # Records keep what they said: a 404 is a not-found record, a 429 a rate-limit one.
    by_user = {r["user"]: r for r in records if r["kind"] == "chat"}
    for i, status in completed.items():
        user = calls[i][3]
        if status == 404:
            assert by_user[user]["status"] == "not_found_error", by_user[user]
        elif status == 429:
            assert by_user[user]["status"] == "rate_limit_error", by_user[user]
        elif status == 200 and user:
            assert by_user[user]["status"] == "ok", by_user[user]


def test_kill_9_loses_no_usage_on_sqlite(tmp_path):
    _kill_and_restart(tmp_path, None)


def test_kill_9_loses_no_usage_on_postgresql(tmp_path, pg_env):
    _kill_and_restart(tmp_path, pg_env)
