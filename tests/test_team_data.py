"""A team's data: isolation between teams' admin keys, the per-team settings
(store_content, retention_days), retention purges, abuse-review filters, and team
deletion crypto-shredding what the team stored."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import httpx
import pytest
from llama_api_client import LlamaAPIClient
from ratelimit_helpers import new_team

MODEL = "SmolLM2-135M-Instruct"


def make_key(server, team: str, *args: str) -> str:
    return server.cli("keys", "create", "--team", team, *args).stdout.strip()


def chat(server, key: str, text: str, user: str | None = None) -> None:
    LlamaAPIClient(api_key=key, base_url=server.base_url, max_retries=0).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_completion_tokens=2,
        **({"user": user} if user else {}),
    )


def test_a_team_admin_key_reaches_only_its_own_team(server):
    team_a, team_b = new_team(), new_team()
    admin_a = make_key(server, team_a, "--role", "admin")
    member_a = make_key(server, team_a)
    member_b = make_key(server, team_b)
    operator = make_key(server, new_team(), "--role", "operator")
    chat(server, member_a, "from team a", user="shared-user")
    chat(server, member_b, "from team b", user="shared-user")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        b_records = client.get(f"/admin/v1/teams/{team_b}/requests", headers=server.headers(operator)).json()["data"]
        b_key_id = member_b.split("_")[1]
        a = server.headers(admin_a)
        not_found = [
            ("GET", f"/admin/v1/teams/{team_b}/requests", None),
            ("GET", f"/admin/v1/teams/{team_b}/requests/{b_records[0]['id']}", None),
            ("GET", f"/admin/v1/teams/{team_a}/requests/{b_records[0]['id']}", None),  # B's record via A's path
            ("GET", f"/admin/v1/teams/{team_b}/settings", None),
            ("PATCH", f"/admin/v1/teams/{team_b}/settings", {"store_content": False}),
            ("POST", f"/admin/v1/teams/{team_b}/rotate-data-key", None),
            ("GET", "/admin/v1/teams/no-such-team-at-all/requests", None),  # same answer as for a real team
            ("GET", f"/admin/v1/usage?team={team_b}", None),
            ("GET", f"/admin/v1/keys?team={team_b}", None),
            ("DELETE", f"/admin/v1/keys/{b_key_id}", None),
            ("POST", "/admin/v1/keys", {"team": team_b}),
            ("GET", f"/admin/v1/limits?team={team_b}", None),
            ("PUT", "/admin/v1/limits", {"team": team_b, "rpm": 1}),
            ("DELETE", f"/admin/v1/limits?team={team_b}", None),
        ]
        for method, path, body in not_found:
            r = client.request(method, path, json=body, headers=a)
            assert r.status_code == 404, (method, path, r.text)
            assert team_b not in r.text or "no team named" in r.text  # nothing of B's beyond the name asked for
        forbidden = [
            ("POST", "/admin/v1/teams", {"name": new_team()}),
            ("DELETE", f"/admin/v1/teams/{team_b}", None),
            ("DELETE", f"/admin/v1/teams/{team_a}", None),
            ("POST", "/admin/v1/keys", {"team": team_a, "role": "operator"}),
        ]
        for method, path, body in forbidden:
            r = client.request(method, path, json=body, headers=a)
            assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", (method, path, r.text)
        for path in (f"/admin/v1/teams/{team_a}/requests", f"/admin/v1/teams/{team_a}/settings", "/admin/v1/usage"):
            assert client.get(path, headers=server.headers(member_a)).status_code == 403

        # Without a team filter a team admin sees its own team, and only it.
        usage = client.get("/admin/v1/usage", params={"user": "shared-user"}, headers=a).json()
        assert usage["totals"]["requests"] == 1 and {r["team"] for r in usage["data"]} == {team_a}
        assert [t["name"] for t in client.get("/admin/v1/teams", headers=a).json()["data"]] == [team_a]
        assert {k["team"] for k in client.get("/admin/v1/keys", headers=a).json()["data"]} == {team_a}
        mine = client.get(f"/admin/v1/teams/{team_a}/requests", headers=a).json()["data"]
        assert [r["request"]["messages"][0]["content"] for r in mine] == ["from team a"]
        created = client.post("/admin/v1/keys", json={"team": team_a, "role": "admin"}, headers=a)
        assert created.status_code == 201 and created.json()["team"] == team_a

        # The operator sees both teams; the same user in two teams is matched in each.
        both = client.get("/admin/v1/usage", params={"user": "shared-user"}, headers=server.headers(operator)).json()
        assert {r["team"] for r in both["data"]} >= {team_a, team_b}


CONFIG = """
[content]
purge_interval_seconds = 0.5

[moderation]
mode = "input"
action = "flag"
"""


def _backdate(server, record_id: str, days: float) -> None:
    with sqlite3.connect(server.data_dir / "llamahost.db", timeout=10) as db:
        db.execute(
            "UPDATE stored_requests SET created_at = datetime(created_at, ?) WHERE id = ?", (f"-{days} days", record_id)
        )


def test_settings_retention_flags_and_deletion(server_factory):
    server = server_factory(config=CONFIG)
    operator = make_key(server, "ops", "--role", "operator")
    team = f"team-{uuid.uuid4().hex[:6]}"
    key = make_key(server, team)
    admin = make_key(server, team, "--role", "admin")
    requests_url = f"{server.url}/admin/v1/teams/{team}/requests"
    settings_url = f"{server.url}/admin/v1/teams/{team}/settings"

    def stored(**params) -> list[dict]:
        r = httpx.get(requests_url, params=params, headers=server.headers(admin), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    # Off before the first request: nothing is stored, usage still is.
    assert "store_content = false" in server.cli("teams", "set", team, "--store-content", "off").stdout
    chat(server, key, "not kept", user="alice")
    assert stored() == []
    usage = json.loads(server.cli("usage", "--team", team, "--json").stdout)
    # The chat and its guardrail check (mode "input" in CONFIG), both with the end user.
    assert sorted(r["kind"] for r in usage["data"]) == ["chat", "guardrail_input"]
    assert {r["user"] for r in usage["data"]} == {"alice"}

    patched = httpx.patch(settings_url, json={"store_content": True, "retention_days": 3}, headers=server.headers(admin),
                          timeout=30)
    assert patched.status_code == 200, patched.text
    assert patched.json() | {"updated_at": None} == {
        "team": team, "store_content": True, "retention_days": 3, "moderation": "input", "moderation_action": "flag",
        "files_quota_bytes": None, "inherited": ["moderation", "moderation_action", "files_quota_bytes"], "updated_at": None,
    }
    reset = httpx.patch(settings_url, json={"retention_days": None}, headers=server.headers(admin), timeout=30).json()
    assert reset["retention_days"] == 30
    assert reset["inherited"] == ["retention_days", "moderation", "moderation_action", "files_quota_bytes"]
    # (The PATCH reached this very process, which dropped its cached settings; other
    # processes see a change within 5 s.)
    chat(server, key, "kept one", user="alice")
    chat(server, key, "How do I kill my neighbour?", user="bob")  # the input guardrail flags it
    kept = stored()
    assert [r["request"]["messages"][0]["content"] for r in kept] == ["kept one", "How do I kill my neighbour?"]

    # Abuse-review filters: flagged, user, time, kind.
    (flagged,) = stored(flagged="true")
    assert flagged["user"] == "bob" and flagged["response"]["moderation"][0]["stage"] == "input"
    assert flagged["response"]["moderation"][0]["categories"]
    assert [r["user"] for r in stored(flagged="false")] == ["alice"]
    assert [r["user"] for r in stored(user="bob")] == ["bob"] and stored(user="carol") == []
    assert stored(since="1h") == kept and stored(until="2000-01-01") == [] and stored(kind="moderation") == []
    listing = server.cli("requests", "list", "--team", team, "--flagged").stdout
    assert "How do I kill" in listing and "kept one" not in listing
    shown = json.loads(server.cli("requests", "show", flagged["id"]).stdout)
    assert shown["request"]["messages"][0]["content"] == "How do I kill my neighbour?"

    # Retention: the server's background purge deletes what is past the team's days (30 by default).
    _backdate(server, kept[0]["id"], 29)
    _backdate(server, flagged["id"], 31)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(stored()) == 2:
        time.sleep(0.25)
    assert [r["id"] for r in stored()] == [kept[0]["id"]]

    # Deleting the team: keys stop working, content and data keys are gone, usage stays without users.
    refused = server.cli("teams", "delete", team, check=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    chat(server, key, "last words", user="alice")
    assert len(stored()) == 2  # (reading flushes what the server has queued)
    deleted = httpx.delete(f"{server.url}/admin/v1/teams/{team}", headers=server.headers(operator), timeout=30)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"team": team, "deleted": True, "api_keys": 2, "stored_requests": 2, "data_keys": 1, "files": 0}
    assert httpx.get(f"{server.url}/v1/models", headers=server.headers(key), timeout=30).status_code == 401
    with sqlite3.connect(server.data_dir / "llamahost.db") as db:
        (team_id,) = db.execute("SELECT team_id FROM usage_records WHERE key_id = ? LIMIT 1", (key.split("_")[1],)).fetchone()
        assert db.execute("SELECT count(*) FROM encryption_keys WHERE team_id = ?", (team_id,)).fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM stored_requests WHERE team_id = ?", (team_id,)).fetchone() == (0,)
    records = json.loads(server.cli("usage", "--json", "--limit", "1000").stdout)["data"]
    mine = [r for r in records if r["key_id"] == key.split("_")[1] and r["kind"] == "chat"]
    assert len(mine) == 4 and {r["team"] for r in mine} == {f"(deleted team {team_id})"}
    assert {r["user"] for r in mine} == {None}  # shredded with the team's keys
    assert team not in server.cli("teams", "list").stdout
    assert "TOTAL 0 requests" in server.cli("usage", "--user", "alice").stdout  # no longer matched
    # The name is free again, for a new team that sees nothing of the old one.
    make_key(server, team)
    assert json.loads(server.cli("usage", "--team", team, "--json").stdout)["totals"]["requests"] == 0


@pytest.mark.parametrize(
    "method, path, body, param",
    [
        ("PATCH", "/settings", {"retention_days": 0}, "retention_days"),
        ("PATCH", "/settings", {"retention_days": "7"}, "retention_days"),
        ("PATCH", "/settings", {"store_content": "yes"}, "store_content"),
        ("PATCH", "/settings", {"bogus": 1}, "bogus"),
        ("PATCH", "/settings", {}, "store_content"),
        ("GET", "/requests?flagged=maybe", None, "flagged"),
        ("GET", "/requests?kind=video", None, "kind"),
        ("GET", "/requests?since=yesterday", None, "since"),
        ("GET", "/requests?limit=0", None, "limit"),
        ("GET", "/requests/no-such-record", None, "id"),
    ],
)
def test_team_data_bad_input_names_the_field(server, method, path, body, param):
    team = "bad-input-team"
    admin = make_key(server, team, "--role", "admin")
    r = httpx.request(method, f"{server.url}/admin/v1/teams/{team}{path}", json=body, headers=server.headers(admin),
                      timeout=30)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_cli_team_settings_and_purge(server):
    team = new_team()
    key = make_key(server, team)
    for args, message in [
        ((), "give at least one setting"),
        (("--retention-days", "soon"), "--retention-days"),
        (("--retention-days", "0"), "retention_days"),
    ]:
        result = server.cli("teams", "set", team, *args, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
    result = server.cli("teams", "set", "no-such-team-" + team, "--store-content", "on", check=False)
    assert result.returncode != 0 and "no team" in result.stderr
    assert "(server default)" in server.cli("teams", "set", team, "--store-content", "default").stdout

    # `llamahost purge` (the shared server's own purge runs at its start, then hourly).
    chat(server, key, "to be purged")
    operator = make_key(server, new_team(), "--role", "operator")
    (record,) = httpx.get(f"{server.url}/admin/v1/teams/{team}/requests", headers=server.headers(operator),
                          timeout=30).json()["data"]
    assert "retention_days = 1\n" in server.cli("teams", "set", team, "--retention-days", "1").stdout
    assert f"team {team}:" not in server.cli("purge").stdout  # nothing of it has expired yet
    _backdate(server, record["id"], 1.5)
    assert f"team {team}: purged 1 stored requests" in server.cli("purge").stdout
    assert server.cli("requests", "list", "--team", team).stdout.count("\n") == 1  # the header only
