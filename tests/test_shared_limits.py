"""Many replicas: two llamahost processes sharing PostgreSQL (127.0.0.1:5432, database
``test``) and Redis (127.0.0.1:6379). Each test gets its own PostgreSQL schema and Redis
key prefix, removed afterwards, so concurrent runs never see each other's state."""

from __future__ import annotations

import subprocess

import httpx
import psycopg
import pytest
import redis

from conftest import PG, postgres_env, postgres_schema
from ratelimit_helpers import assert_exact_burst, burst, chat, chat_body, new_team

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def shared_env():
    with postgres_schema() as schema:
        prefix = f"llamahost-test:{schema}:"
        env = postgres_env(schema) | {"LLAMAHOST_REDIS_URL": REDIS, "LLAMAHOST_REDIS_PREFIX": prefix}
        yield env | {"_schema": schema}
    r = redis.Redis.from_url(REDIS)
    for key in r.scan_iter(match=prefix + "*"):
        r.delete(key)
    r.close()


@pytest.fixture
def replicas(server_factory, shared_env):
    env = {k: v for k, v in shared_env.items() if not k.startswith("_")}
    return [server_factory(env=env, name="replica") for _ in range(2)], shared_env["_schema"]


@pytest.mark.anyio
async def test_two_processes_share_limits_exactly(replicas):
    (a, b), schema = replicas
    team = new_team()
    key = a.cli("keys", "create", "--team", team).stdout.strip()
    b.cli("limits", "set", "--team", team, "--rpm", "5")
    replies = await burst([a.url, b.url], key, 30, chat_body(stream=True))
    assert_exact_burst(replies, 5)

    # Tokens too: what one process settles, the other sees.
    team2 = new_team()
    key2 = a.cli("keys", "create", "--team", team2).stdout.strip()
    a.cli("limits", "set", "--team", team2, "--tpm", "3000")
    async with httpx.AsyncClient(base_url=a.url, timeout=120) as ca, httpx.AsyncClient(base_url=b.url, timeout=120) as cb:
        first = await chat(ca, key2, chat_body("Say hello.", max_tokens=6, user="shared"))
        second = await chat(cb, key2, chat_body("Say hi.", max_tokens=6, user="shared"))
    assert first.status == second.status == 200
    assert first.rate("remaining-tokens") == 3000 - first.total_tokens
    assert second.rate("remaining-tokens") == 3000 - first.total_tokens - second.total_tokens
    assert second.rate("remaining-requests") == 3000 - 2  # the server default RPM, shared

    # Both processes wrote to the same usage table.
    report = b.cli("usage", "--team", team2, "--user", "shared").stdout
    assert "TOTAL 2 requests" in report and f"= {first.total_tokens + second.total_tokens} tokens" in report

    # The secrets are nowhere in the database, neither in a dump nor in the table.
    dump = subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-n", schema, "test"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "api_keys" in dump and key.split("_")[1] in dump  # the visible id is there...
    with psycopg.connect(PG) as conn:
        rows = conn.execute(f'SELECT * FROM "{schema}".api_keys').fetchall()
    table = repr(rows)
    assert len(rows) >= 4
    for secret in (a.key, b.key, key, key2):
        for text in (dump, table):
            assert secret not in text and secret.rsplit("_", 1)[1] not in text  # ...the secret is not


def test_unreachable_redis_refuses_with_503_not_uncounted(server_factory):
    from conftest import free_port

    server = server_factory(env={"LLAMAHOST_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, name="no-redis")
    r = httpx.post(server.url + "/v1/chat/completions", json=chat_body(), headers=server.headers(), timeout=60)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "rate_limiter_unavailable" and r.headers["retry-after"]
    status = server.cli("usage", "--json").stdout
    assert '"service_unavailable"' in status
