"""Teams, keys, rate limits, usage and the admin API on one server (SQLite, in-process
limiter). The shared server is used with a fresh team per test: limits are per team."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from ratelimit_helpers import RATE_HEADERS, assert_exact_burst, burst, chat, chat_body, new_team
from test_load import ENDLESS


def make_key(server, team: str, *args: str) -> str:
    return server.cli("keys", "create", "--team", team, *args).stdout.strip()


def set_limits(server, team: str, *args: str) -> None:
    server.cli("limits", "set", "--team", team, *args)


@pytest.mark.anyio
async def test_rpm_is_exact_under_a_burst(server):
    team = new_team()
    key = make_key(server, team)
    set_limits(server, team, "--rpm", "5")
    replies = await burst([server.url], key, 30, chat_body(stream=True))
    assert_exact_burst(replies, 5)
    # Non-streaming answers count the window as it is when they finish: all 5 used.
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        again = await chat(client, key, chat_body())
    assert again.status == 429 and again.rate("remaining-requests") == 0


@pytest.mark.anyio
async def test_tpm_refuses_a_huge_prompt_before_generating_and_settles_to_real_tokens(server):
    team = new_team()
    key = make_key(server, team)
    set_limits(server, team, "--tpm", "2000")
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        huge = chat_body("lorem ipsum " * 1500, max_tokens=10, user="huge-prompt")
        refused = await chat(client, key, huge)
        assert refused.status == 429, refused.body
        assert refused.body["error"]["code"] == "tokens_per_minute_exceeded"
        assert "more than team" in refused.body["error"]["message"]
        assert refused.rate("limit-tokens") == 2000 and refused.rate("remaining-tokens") == 2000
        assert refused.headers["retry-after"]

        first = await chat(client, key, chat_body("Say hello.", max_tokens=8))
        assert first.status == 200
        # Settled before the response: the header counts the real tokens, not the reservation.
        assert first.rate("remaining-tokens") == 2000 - first.total_tokens

        streamed = await chat(client, key, chat_body("Say hello.", max_tokens=8, stream=True))
        assert streamed.status == 200
        for name in RATE_HEADERS:
            assert name in streamed.headers
        # A stream's headers leave before generation: they count its reservation.
        assert streamed.rate("remaining-tokens") < first.rate("remaining-tokens")

        after = await chat(client, key, chat_body("Say hello.", max_tokens=8))
        assert after.rate("remaining-tokens") == 2000 - first.total_tokens - streamed.total_tokens - after.total_tokens

        # A reservation that no longer fits is refused, saying when it would.
        too_much = await chat(client, key, chat_body("Say hello.", max_tokens=after.rate("remaining-tokens")))
        assert too_much.status == 429
        assert too_much.body["error"]["code"] == "tokens_per_minute_exceeded"
        assert 1 <= int(too_much.headers["retry-after"]) <= 60

    records = json.loads(server.cli("usage", "--team", team, "--json").stdout)
    huge_record = next(r for r in records["data"] if r["user"] == "huge-prompt")
    assert huge_record["status"] == "rate_limit_error" and huge_record["total_tokens"] == 0
    label = server.cli("log-user", "huge-prompt").stdout.strip()  # how the log names it (hashed)
    assert f"user={label}" not in server.log()  # never generated


def test_keys_are_never_stored_in_plaintext(server):
    team = new_team()
    key = make_key(server, team)
    admin = make_key(server, team, "--role", "admin")
    created = httpx.post(
        server.url + "/admin/v1/keys", json={"team": team}, headers=server.headers(admin), timeout=30
    ).json()["key"]
    for secret in (key, admin, created):
        assert httpx.get(server.url + "/v1/models", headers=server.headers(secret), timeout=30).status_code == 200
    files = list(server.data_dir.glob("llamahost.db*"))  # the database, its WAL and shared memory
    assert files
    contents = b"".join(f.read_bytes() for f in files)
    for secret in (key, admin, created):
        assert secret.encode() not in contents
        assert secret.rsplit("_", 1)[1].encode() not in contents  # nor the secret part alone


def test_revoked_and_expired_keys_get_401(server):
    team = new_team()
    key = make_key(server, team)
    assert httpx.get(server.url + "/v1/models", headers=server.headers(key), timeout=30).status_code == 200
    began = time.monotonic()
    server.cli("keys", "revoke", key.split("_")[1])
    # Revoked from another process (the CLI): the server applies it within its key
    # cache's time (AUTH_CACHE_SECONDS, 1 s), whatever the CLI's own start-up took.
    time.sleep(max(0.0, 1.1 - (time.monotonic() - began)))
    revoked = httpx.get(server.url + "/v1/models", headers=server.headers(key), timeout=30)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]

    short = make_key(server, team, "--expires-in-days", str(1.5 / 86400))
    time.sleep(1.6)
    expired = httpx.post(
        server.url + "/v1/chat/completions", json=chat_body(), headers=server.headers(short), timeout=30
    )
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]


def test_admin_api_needs_an_admin_key(server):
    team = new_team()
    member = make_key(server, team)
    # Server-wide administration (other teams) needs an operator key; a team admin key
    # is limited to its own team (tests/test_data_at_rest.py checks that isolation).
    admin = make_key(server, team, "--role", "operator")
    calls = [
        ("GET", "/admin/v1/teams", None),
        ("POST", "/admin/v1/teams", {"name": team + "-x"}),
        ("GET", "/admin/v1/keys", None),
        ("POST", "/admin/v1/keys", {"team": team}),
        ("DELETE", "/admin/v1/keys/nonexistent", None),
        ("GET", "/admin/v1/limits", None),
        ("PUT", "/admin/v1/limits", {"team": team, "rpm": 10}),
        ("GET", "/admin/v1/usage", None),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path, body in calls:
            r = client.request(method, path, json=body, headers=server.headers(member))
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error"]["type"] == "permission_error"
            assert client.request(method, path, json=body).status_code == 401
        # The same calls work with an admin key.
        assert client.post("/admin/v1/teams", json={"name": team + "-x"}, headers=server.headers(admin)).status_code == 201
        assert client.post("/admin/v1/teams", json={"name": team + "-x"}, headers=server.headers(admin)).status_code == 200
        created = client.post(
            "/admin/v1/keys", json={"team": team + "-x", "name": "api", "role": "member"}, headers=server.headers(admin)
        )
        assert created.status_code == 201
        new_key = created.json()
        assert new_key["key"].startswith(new_key["prefix"] + "_") and new_key["team"] == team + "-x"
        listed = client.get("/admin/v1/keys", params={"team": team + "-x"}, headers=server.headers(admin)).json()
        assert [k["id"] for k in listed["data"]] == [new_key["id"]] and "key" not in listed["data"][0]
        teams = client.get("/admin/v1/teams", headers=server.headers(admin)).json()["data"]
        assert {"name": team + "-x", "active_keys": 1}.items() <= teams[[t["name"] for t in teams].index(team + "-x")].items()

        # Limits: an alias is stored as the model it stands for; unset values inherit.
        put = client.put(
            "/admin/v1/limits",
            json={"team": team + "-x", "model": "Llama-3.3-70B-Instruct", "rpm": 7},
            headers=server.headers(admin),
        )
        assert put.status_code == 200, put.text
        assert put.json()["model"] == "SmolLM2-135M-Instruct" and put.json()["tpm"] is None
        limits = client.get("/admin/v1/limits", params={"team": team + "-x"}, headers=server.headers(admin)).json()
        assert limits["defaults"] == {"rpm": 3000, "tpm": 1000000} and limits["enabled"] is True
        assert [(x["model"], x["rpm"]) for x in limits["data"]] == [("SmolLM2-135M-Instruct", 7)]
        r = client.get("/v1/models", headers=server.headers(new_key["key"]))
        assert r.status_code == 200
        reply = client.post("/v1/chat/completions", json=chat_body(), headers=server.headers(new_key["key"]))
        assert reply.headers["x-ratelimit-limit-requests"] == "7"
        assert reply.headers["x-ratelimit-limit-tokens"] == "1000000"

        revoked = client.delete(f"/admin/v1/keys/{new_key['id']}", headers=server.headers(admin))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert client.get("/v1/models", headers=server.headers(new_key["key"])).status_code == 401
        cleared = client.delete(
            "/admin/v1/limits", params={"team": team + "-x", "model": "SmolLM2-135M-Instruct"}, headers=server.headers(admin)
        )
        assert cleared.status_code == 204


@pytest.mark.parametrize(
    "method, path, body, param",
    [
        ("POST", "/admin/v1/keys", {"team": "t", "role": "owner"}, "role"),
        ("POST", "/admin/v1/keys", {"team": "t", "expires_in_days": "7"}, "expires_in_days"),
        ("POST", "/admin/v1/keys", {"team": "t", "extra": 1}, "extra"),
        ("POST", "/admin/v1/teams", {"name": ""}, "name"),
        ("PUT", "/admin/v1/limits", {"team": "t", "rpm": 0}, "rpm"),
        ("PUT", "/admin/v1/limits", {"team": "t", "tpm": "100"}, "tpm"),
        ("PUT", "/admin/v1/limits", {"team": "t"}, "rpm"),
        ("PUT", "/admin/v1/limits", {"team": "no-such-team-anywhere", "rpm": 3}, "team"),
        ("PUT", "/admin/v1/limits", {"team": "t", "model": "no-such-model", "rpm": 3}, "model"),
        ("GET", "/admin/v1/usage?since=yesterday", None, "since"),
        ("GET", "/admin/v1/usage?limit=0", None, "limit"),
        ("DELETE", "/admin/v1/limits", None, "team"),
    ],
)
def test_admin_bad_input_names_the_field(server, method, path, body, param):
    admin = make_key(server, "t", "--role", "admin")
    r = httpx.request(method, server.url + path, json=body, headers=server.headers(admin), timeout=30)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_cli_refuses_bad_limits(server):
    team = new_team()
    make_key(server, team)
    for args, message in [
        ((), "give rpm, tpm or both"),
        (("--rpm", "0"), "rpm must be at least 1"),
        (("--model", "no-such-model", "--rpm", "3"), "not configured"),
    ]:
        result = server.cli("limits", "set", "--team", team, *args, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
    result = server.cli("limits", "set", "--team", "no-such-team-" + team, "--rpm", "3", check=False)
    assert result.returncode != 0 and "no team" in result.stderr
    set_limits(server, team, "--model", "Llama-3.3-8B-Instruct", "--tpm", "5000")
    listing = server.cli("limits", "list", "--team", team).stdout
    assert "SmolLM2-135M-Instruct" in listing and "5000" in listing
    result = server.cli("usage", "--since", "yesterday", check=False)
    assert result.returncode != 0 and "--since" in result.stderr


@pytest.mark.anyio
async def test_usage_by_user_matches_the_responses(server):
    team = new_team()
    key = make_key(server, team)
    user = f"user-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        replies = [
            await chat(client, key, chat_body("Name a colour.", max_tokens=6, user=user)),
            await chat(client, key, chat_body("Name a fruit.", max_tokens=4, user=user, stream=True)),
            await chat(client, key, chat_body("Name a tree.", max_tokens=5, user=user)),
            await chat(client, key, chat_body("Unrelated.", max_tokens=3, user=user + "-other")),
        ]
    assert all(r.status == 200 for r in replies)
    mine = replies[:3]

    report = json.loads(server.cli("usage", "--user", user, "--json").stdout)
    assert report["totals"]["requests"] == 3
    assert report["totals"]["total_tokens"] == sum(r.total_tokens for r in mine)
    assert [r["status"] for r in report["data"]] == ["ok"] * 3
    assert {r["user"] for r in report["data"]} == {user} and {r["team"] for r in report["data"]} == {team}
    assert all(r["key_id"] == key.split("_")[1] for r in report["data"])

    text = server.cli("usage", "--user", user, "--since", "1h").stdout
    assert "TOTAL 3 requests" in text and f"= {sum(r.total_tokens for r in mine)} tokens" in text

    admin = make_key(server, team, "--role", "admin")
    over_http = httpx.get(
        server.url + "/admin/v1/usage", params={"user": user, "since": "1h"}, headers=server.headers(admin), timeout=30
    ).json()
    assert over_http["totals"] == report["totals"]


@pytest.mark.anyio
async def test_a_disconnected_request_still_leaves_a_usage_record(server):
    team = new_team()
    key = make_key(server, team)
    user = f"gone-{uuid.uuid4().hex[:8]}"
    body = {**ENDLESS, "user": user}  # cannot end before its budget, whatever is sampled
    async with httpx.AsyncClient(base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
        async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if '"progress"' in line:
                    break  # leaving the block drops the connection mid-stream
    deadline = time.monotonic() + 120  # a generous deadline for a loaded machine; it returns at once when done
    while time.monotonic() < deadline:
        records = json.loads(server.cli("usage", "--user", user, "--json").stdout)["data"]
        if records:
            break
        time.sleep(0.3)
    assert [r["status"] for r in records] == ["cancelled"]
    assert records[0]["prompt_tokens"] > 0 and records[0]["completion_tokens"] < 4000
