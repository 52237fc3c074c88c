"""The team API (/team/v1: any key, its own team only), the admin usage summary and
effective limits, and how /dashboard is served, over HTTP against a real server."""

from __future__ import annotations

import httpx
import pytest
from ratelimit_helpers import chat_body, new_team


def make_key(server, team: str, *args: str) -> str:
    return server.cli("keys", "create", "--team", team, *args).stdout.strip()


def _client(server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=server.headers(key), timeout=120)


def _error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return error


def test_a_member_key_sees_and_manages_only_its_own_team(server):
    team, other = new_team(), new_team()
    member = make_key(server, team, "--name", "mine")
    team_admin = make_key(server, team, "--role", "admin", "--name", "team-admin")
    stranger = make_key(server, other, "--name", "theirs")
    with _client(server, member) as c:
        me = c.get("/team/v1/me").json()
        assert me == {"team": team, "role": "member", "key_id": member.split("_")[1], "prefix": "llh_" + member.split("_")[1]}

        listed = c.get("/team/v1/keys").json()["data"]
        assert {k["name"] for k in listed} == {"mine", "team-admin"} and {k["team"] for k in listed} == {team}
        assert all("key" not in k for k in listed)

        created = c.post("/team/v1/keys", json={"name": "made-by-member", "expires_in_days": 1})
        assert created.status_code == 201
        body = created.json()
        assert body["team"] == team and body["role"] == "member" and body["key"].startswith(body["prefix"] + "_")
        assert body["expires_at"] is not None
        # The team and the role come from the caller's key, never from the body.
        _error(c.post("/team/v1/keys", json={"team": other}), 400, "team")
        _error(c.post("/team/v1/keys", json={"role": "admin"}), 400, "role")
        _error(c.post("/team/v1/keys", json={"name": 5}), 400, "name")
        # Another team's key does not exist for this caller; an admin key is not a member's to revoke.
        _error(c.delete(f"/team/v1/keys/{stranger.split('_')[1]}"), 404, "key_id")
        _error(c.delete(f"/team/v1/keys/{team_admin.split('_')[1]}"), 403, "key_id")
        revoked = c.delete(f"/team/v1/keys/{body['id']}").json()
        assert revoked["revoked_at"] is not None
        assert httpx.get(f"{server.base_url}/models", headers=server.headers(body["key"])).status_code == 401

        # ?team= is refused rather than silently answered about the caller's own team.
        for path in ("/team/v1/keys", "/team/v1/usage", "/team/v1/usage/summary", "/team/v1/limits"):
            _error(c.get(path, params={"team": other}), 400, "team")
        # The admin API stays closed to members.
        assert c.get("/admin/v1/usage/summary").status_code == 403

    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.get("/team/v1/me").status_code == 401
    with _client(server, team_admin) as c:  # an admin key may revoke its own team's admin keys here
        second_admin = make_key(server, team, "--role", "admin")
        assert c.delete(f"/team/v1/keys/{second_admin.split('_')[1]}").status_code == 200


def test_usage_summary_counts_requests_users_and_rejections(server):
    team, other = new_team(), new_team()
    member = make_key(server, team)
    admin = make_key(server, team, "--role", "admin")
    noise = make_key(server, other)
    server.cli("limits", "set", "--team", team, "--rpm", "2")
    with _client(server, member) as c:
        statuses = [c.post("/v1/chat/completions", json=chat_body(user=f"user-{n % 2}")).status_code for n in range(3)]
        assert statuses == [200, 200, 429]
        assert httpx.post(f"{server.base_url}/chat/completions", json=chat_body(), headers=server.headers(noise)).status_code == 200

        summary = c.get("/team/v1/usage/summary", params={"since": "10m", "bucket": "1m"}).json()
        assert summary["bucket_seconds"] == 60
        assert summary["totals"]["requests"] == 3 and summary["totals"]["rate_limited"] == 1
        assert summary["totals"]["total_tokens"] == summary["totals"]["prompt_tokens"] + summary["totals"]["completion_tokens"] > 0
        assert [(m["model"], m["requests"], m["rate_limited"]) for m in summary["models"]] == [("SmolLM2-135M-Instruct", 3, 1)]
        assert [(u["user"], u["requests"]) for u in summary["users"]] == [("user-0", 2), ("user-1", 1)]
        assert sum(b["requests"] for b in summary["buckets"]) == 3
        assert all(b["start"].endswith(":00Z") for b in summary["buckets"])

        records = c.get("/team/v1/usage").json()
        assert records["totals"]["requests"] == 3 and {r["team"] for r in records["data"]} == {team}

        limits = c.get("/team/v1/limits").json()
        assert limits == {"team": team, "enabled": True, "data": [{"model": "SmolLM2-135M-Instruct", "rpm": 2, "tpm": 1_000_000}]}

        _error(c.get("/team/v1/usage/summary", params={"bucket": "often"}), 400, "bucket")
        _error(c.get("/team/v1/usage/summary", params={"since": "30d", "bucket": "1m"}), 400, "bucket")
        _error(c.get("/team/v1/usage/summary", params={"since": "yesterday"}), 400, "since")
        _error(c.get("/team/v1/usage/summary", params={"since": "1h", "until": "2h"}), 400, "since")
        _error(c.get("/team/v1/usage/summary", params={"top_users": 101}), 400, "top_users")

    with _client(server, admin) as c:  # a team admin's /admin/v1 is its own team's
        mine = c.get("/admin/v1/usage/summary", params={"since": "10m"}).json()
        assert mine["totals"]["requests"] == 3 and [u["team"] for u in mine["users"]] == [team, team]
        _error(c.get("/admin/v1/usage/summary", params={"team": other}), 404, "team")
        _error(c.get("/admin/v1/limits/effective", params={"team": other}), 404, "team")
    with _client(server, make_key(server, new_team(), "--role", "operator")) as c:
        everyone = c.get("/admin/v1/usage/summary", params={"since": "10m"}).json()
        one_team = c.get("/admin/v1/usage/summary", params={"since": "10m", "team": team, "top_users": 0}).json()
        assert everyone["totals"]["requests"] >= one_team["totals"]["requests"] + 1
        assert one_team["totals"]["requests"] == 3 and one_team["users"] == []
        effective = c.get("/admin/v1/limits/effective", params={"team": team}).json()
        assert effective["data"] == [{"model": "SmolLM2-135M-Instruct", "rpm": 2, "tpm": 1_000_000}]
        _error(c.get("/admin/v1/limits/effective"), 400, "team")
        _error(c.get("/admin/v1/limits/effective", params={"team": new_team()}), 404, "team")


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/", "/dashboard/keys", "/dashboard/playground", "/dashboard/usage"])
def test_dashboard_pages_are_served_with_a_same_origin_policy(server, path):
    response = httpx.get(server.url + path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/dashboard/static/js/app.js">' in response.text
    policy = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    for directive in ("script-src", "style-src", "img-src", "connect-src"):
        assert policy[directive] == "'self'"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_dashboard_assets_and_unknown_paths(server):
    script = httpx.get(server.url + "/dashboard/static/js/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "content-security-policy" in script.headers
    vendor = httpx.get(server.url + "/dashboard/static/vendor/LICENSE-preact.txt")
    assert vendor.status_code == 200 and "MIT License" in vendor.text
    for missing in ("/dashboard/nope", "/dashboard/static/nope.js", "/dashboard/static/../api/app.py"):
        response = httpx.get(server.url + missing)
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
