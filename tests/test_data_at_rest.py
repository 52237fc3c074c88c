"""Encryption at rest, proved on the bytes: canary strings sent through the API (chat on
both surfaces, moderation, the `user` field, the team name, a key label) are nowhere in
the SQLite file, its WAL or a PostgreSQL dump, yet read back intact through the admin
API; tampered or moved ciphertexts and wrong master keys are clear errors; rotating the
master key re-wraps the data keys without rewriting content; a database from before
encryption is converted in place."""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from llama_api_client import LlamaAPIClient
from openai import OpenAI

from conftest import postgres_url, run_cli, start_server
from llamahost.store.crypto import CryptoError, MasterKey

MODEL = "SmolLM2-135M-Instruct"


def canaries() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {
        name: f"CANARY-{name}-{tag}"
        for name in ("team", "label", "user", "native", "stream", "compat", "moderation")
    }


def write_canaries(server, c: dict[str, str]) -> dict:
    """Calls carrying every canary, through the official SDKs; returns what they answered."""
    key = server.cli("keys", "create", "--team", c["team"], "--name", c["label"]).stdout.strip()
    llama = LlamaAPIClient(api_key=key, base_url=server.base_url, max_retries=0)
    native = llama.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"Repeat: {c['native']}"}],
        max_completion_tokens=8, user=c["user"],
    )
    streamed = "".join(
        chunk.event.delta.text
        for chunk in llama.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": c["stream"]}], max_completion_tokens=6,
            user=c["user"], stream=True,
        )
        if chunk.event.event_type == "progress"
    )
    compat = OpenAI(api_key=key, base_url=f"{server.url}/compat/v1", max_retries=0).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": c["compat"]}], max_tokens=6, user=c["user"],
    )
    moderation = llama.moderations.create(messages=[{"role": "user", "content": f"{c['moderation']}: make a bomb"}])
    return {
        "key": key,
        "native": native.completion_message.content.text,
        "stream": streamed,
        "compat": compat.choices[0].message.content,
        "flagged": moderation.results[0].flagged,
    }


def read_back(server, c: dict[str, str], answers: dict) -> None:
    """A team admin key reads the team's stored content and usage, intact."""
    admin = server.cli("keys", "create", "--team", c["team"], "--role", "admin").stdout.strip()
    with httpx.Client(base_url=server.url, headers=server.headers(admin), timeout=60) as client:
        stored = client.get(f"/admin/v1/teams/{c['team']}/requests").json()["data"]
        by_user = client.get(f"/admin/v1/teams/{c['team']}/requests", params={"user": c["user"]}).json()["data"]
        usage = client.get("/admin/v1/usage", params={"user": c["user"]}).json()
        keys = client.get("/admin/v1/keys").json()["data"]
        teams = client.get("/admin/v1/teams").json()["data"]
    assert [r["kind"] for r in stored] == ["chat", "chat", "chat", "moderation"], stored
    assert all(r["error"] is None and r["team"] == c["team"] for r in stored)
    native, streamed, compat, moderation = stored
    assert native["request"]["messages"] == [{"role": "user", "content": f"Repeat: {c['native']}"}]
    assert native["response"]["text"] == answers["native"] and native["user"] == c["user"]
    assert streamed["request"]["messages"][0]["content"] == c["stream"] and streamed["request"]["stream"] is True
    assert streamed["response"]["text"] == answers["stream"]
    assert compat["surface"] == "compat" and compat["request"]["messages"][0]["content"] == c["compat"]
    assert compat["response"]["text"] == answers["compat"]
    assert moderation["request"]["messages"][0]["content"].startswith(c["moderation"])
    assert moderation["flagged"] == answers["flagged"] == moderation["response"]["flagged"]
    assert [r["id"] for r in by_user] == [native["id"], streamed["id"], compat["id"]]
    assert usage["totals"]["requests"] == 3 and {r["user"] for r in usage["data"]} == {c["user"]}
    assert {r["id"] for r in usage["data"]} == {native["id"], streamed["id"], compat["id"]}  # same records
    assert c["label"] in {k["name"] for k in keys} and [t["name"] for t in teams] == [c["team"]]


def assert_absent(blob: bytes, c: dict[str, str], answers: dict, where: str) -> None:
    for name, value in c.items():
        for form in (value.encode(), value.encode().hex().encode(), value.encode("utf-16-le")):
            assert form not in blob, f"canary {name} found in {where}"
    for name in ("native", "compat"):  # the model's replies are content too
        if len(answers[name]) >= 12:
            assert answers[name].encode() not in blob, f"the {name} reply found in {where}"


def test_sqlite_file_and_wal_hold_no_canary(server_factory):
    server = server_factory()
    c = canaries()
    answers = write_canaries(server, c)
    read_back(server, c, answers)  # also makes sure everything was written
    files = sorted(server.data_dir.glob("llamahost.db*"))
    wal = server.data_dir / "llamahost.db-wal"
    assert wal in files and wal.stat().st_size > 0, files  # the server is running: its WAL is there
    for path in files:
        assert_absent(path.read_bytes(), c, answers, path.name)


def test_postgresql_dump_holds_no_canary(server_factory, pg_schema):
    env = {
        "LLAMAHOST_DATABASE_URL": postgres_url(pg_schema),
        "LLAMAHOST_MASTER_KEY": secrets.token_hex(32),
    }
    server = server_factory(env=env, name="pg")
    c = canaries()
    answers = write_canaries(server, c)
    read_back(server, c, answers)
    dump = subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-n", pg_schema, "test"], capture_output=True, check=True
    ).stdout
    assert b"stored_requests" in dump and b"request_sealed" in dump
    assert_absent(dump, c, answers, "pg_dump")


def test_postgresql_needs_a_master_key(tmp_path, pg_schema):
    env = {"LLAMAHOST_DATABASE_URL": postgres_url(pg_schema)}
    result = run_cli(tmp_path, "teams", "list", env=env, check=False)
    assert result.returncode == 2 and "set LLAMAHOST_MASTER_KEY" in result.stderr
    assert not (tmp_path / "master.key").exists()  # one key per replica would be worse than none


# --- tampering ------------------------------------------------------------------------


def _db(server) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "llamahost.db", timeout=10)


def _chat(server, key: str, text: str) -> None:
    LlamaAPIClient(api_key=key, base_url=server.base_url, max_retries=0).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_completion_tokens=2, user="u-" + text
    )


def test_tampered_or_moved_ciphertext_is_a_clear_error(server_factory):
    server = server_factory()
    operator = server.cli("keys", "create", "--team", "ops", "--role", "operator").stdout.strip()
    key_a = server.cli("keys", "create", "--team", "team-a").stdout.strip()
    key_b = server.cli("keys", "create", "--team", "team-b").stdout.strip()
    for text in ("a-first", "a-second", "a-third"):
        _chat(server, key_a, text)
    _chat(server, key_b, "b-only")

    def records(team: str) -> list[dict]:
        r = httpx.get(f"{server.url}/admin/v1/teams/{team}/requests", headers=server.headers(operator), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    first, second, third = records("team-a")
    (b_only,) = records("team-b")
    with _db(server) as db:
        blob = bytearray(
            db.execute("SELECT request_sealed FROM stored_requests WHERE id = ?", (first["id"],)).fetchone()[0]
        )
        blob[len(blob) // 2] ^= 0x01  # one flipped bit in the ciphertext
        db.execute("UPDATE stored_requests SET request_sealed = ? WHERE id = ?", (bytes(blob), first["id"]))
        # Team B's ciphertext pasted into team A's row, and A's third row's into A's second.
        b_blob = db.execute("SELECT response_sealed FROM stored_requests WHERE id = ?", (b_only["id"],)).fetchone()[0]
        db.execute("UPDATE stored_requests SET response_sealed = ? WHERE id = ?", (b_blob, third["id"]))
        third_user = db.execute("SELECT user_sealed FROM stored_requests WHERE id = ?", (third["id"],)).fetchone()[0]
        db.execute("UPDATE stored_requests SET user_sealed = ? WHERE id = ?", (third_user, second["id"]))

    tampered = {r["id"]: r for r in records("team-a")}
    for record_id, field in ((first["id"], "request"), (second["id"], "user"), (third["id"], "response")):
        entry = tampered[record_id]
        assert entry["request"] is None and entry["response"] is None and entry["user"] is None, entry
        assert f"stored_requests {record_id} {field}" in entry["error"] and "tampered, or moved" in entry["error"]
    # Untouched content of the other team still reads.
    assert records("team-b")[0]["request"]["messages"][0]["content"] == "b-only"
    one = httpx.get(
        f"{server.url}/admin/v1/teams/team-a/requests/{first['id']}", headers=server.headers(operator), timeout=30
    ).json()
    assert one["error"] and one["request"] is None
    listed = server.cli("requests", "list", "--team", "team-a").stdout
    assert listed.count("!! stored content does not decrypt") == 3

    # A tampered wrapped data key: the process that unwraps it says so.
    with _db(server) as db:
        team_a = db.execute("SELECT team_id FROM stored_requests WHERE id = ?", (first["id"],)).fetchone()[0]
        wrapped = bytearray(db.execute("SELECT wrapped FROM encryption_keys WHERE team_id = ?", (team_a,)).fetchone()[0])
        wrapped[-1] ^= 0x80
        db.execute("UPDATE encryption_keys SET wrapped = ? WHERE team_id = ?", (bytes(wrapped), team_a))
    result = server.cli("requests", "list", "--team", "team-a", check=False)
    assert result.returncode == 2 and "tampered" in result.stderr and "data key v1 of team" in result.stderr


def test_a_wrong_or_missing_master_key_is_refused_at_start(server_factory):
    server = server_factory()
    server.stop()
    wrong = run_cli(server.data_dir, "usage", env={"LLAMAHOST_MASTER_KEY": secrets.token_hex(32)}, check=False)
    assert wrong.returncode == 2 and "wrong master key" in wrong.stderr, wrong.stderr
    key_file = server.data_dir / "master.key"
    saved = key_file.read_text()
    key_file.unlink()
    missing = run_cli(server.data_dir, "usage", check=False)
    assert missing.returncode == 2 and "no master key" in missing.stderr and "restore" in missing.stderr
    assert not key_file.exists()  # not silently replaced by a new key
    key_file.write_text(saved)
    assert run_cli(server.data_dir, "usage").returncode == 0
    with pytest.raises(RuntimeError, match="wrong master key"):
        start_server(server.data_dir.parent, env={"LLAMAHOST_MASTER_KEY": secrets.token_hex(32)}, key=False)


# --- rotation -------------------------------------------------------------------------


def _blobs(data_dir: Path) -> dict:
    with sqlite3.connect(data_dir / "llamahost.db") as db:
        return {
            "content": db.execute("SELECT id, user_sealed, request_sealed, response_sealed FROM stored_requests").fetchall(),
            "usage": db.execute("SELECT record_id, user_sealed FROM usage_records").fetchall(),
            "keys": db.execute("SELECT team_id, purpose, version, wrapped, master_key_id FROM encryption_keys").fetchall(),
        }


def test_rotate_master_rewraps_keys_without_rewriting_content(tmp_path):
    server = start_server(tmp_path)
    try:
        for text in ("before-rotation-1", "before-rotation-2"):
            _chat(server, server.key, text)
        operator = server.cli("keys", "create", "--team", "ops", "--role", "operator").stdout.strip()
        before_list = httpx.get(f"{server.url}/admin/v1/teams/test/requests", headers=server.headers(operator),
                                timeout=30).json()["data"]
        assert [r["request"]["messages"][0]["content"] for r in before_list] == ["before-rotation-1", "before-rotation-2"]
        old = MasterKey.parse((server.data_dir / "master.key").read_text())
        before = _blobs(server.data_dir)

        rotated = server.cli("keys", "rotate-master")
        # The index key and each team's data key; the new key is in the file, not on stdout.
        assert f"re-wrapped {len(before['keys'])} keys" in rotated.stderr and rotated.stdout == ""
        new = MasterKey.parse((server.data_dir / "master.key").read_text())
        assert new != old and not (server.data_dir / "master.key.new").exists()
        after = _blobs(server.data_dir)
        assert after["content"] == before["content"] and after["usage"] == before["usage"]  # content untouched
        assert {k[4] for k in after["keys"]} == {new.key_id}
        for team_id, purpose, version, wrapped, _ in after["keys"]:
            args = (team_id or 0, version, "data-key" if purpose == "content" else "index-key")
            with pytest.raises(CryptoError):
                old.unwrap(wrapped, *args)  # the old master opens none of them
            new.unwrap(wrapped, *args)
        refused = run_cli(server.data_dir, "usage", env={"LLAMAHOST_MASTER_KEY": old.encoded()}, check=False)
        assert refused.returncode == 2 and "wrong master key" in refused.stderr

        # The running server keeps the keys it opened, and refuses to wrap new ones under the old master.
        still = httpx.get(f"{server.url}/admin/v1/teams/test/requests", headers=server.headers(operator), timeout=30)
        assert still.json()["data"] == before_list
        stale = httpx.post(f"{server.url}/admin/v1/teams", json={"name": "new-team"}, headers=server.headers(operator),
                           timeout=30)
        assert stale.status_code == 500 and stale.json()["error"]["code"] == "decryption_failed"
        assert "restart this process" in stale.json()["error"]["message"]
    finally:
        server.stop()

    server = start_server(tmp_path, key=False)
    try:
        server.key = server.cli("keys", "create", "--team", "test").stdout.strip()
        # A new data key version seals new records; old records keep opening with v1.
        assert "data key v2" in server.cli("keys", "rotate-data-key", "--team", "test").stdout
        _chat(server, server.key, "after-rotation")
        records = httpx.get(f"{server.url}/admin/v1/teams/test/requests", headers=server.headers(operator),
                            timeout=30).json()["data"]
        assert [r["request"]["messages"][0]["content"] for r in records] == [
            "before-rotation-1", "before-rotation-2", "after-rotation"
        ]
        versions = {row[0]: int.from_bytes(row[2][3:7], "big") for row in _blobs(server.data_dir)["content"]}
        assert versions[records[0]["id"]] == 1 and versions[records[2]["id"]] == 2
    finally:
        server.stop()


def test_rotate_master_given_in_the_environment(tmp_path):
    old = secrets.token_hex(32)
    run_cli(tmp_path, "teams", "create", "alpha", env={"LLAMAHOST_MASTER_KEY": old})
    assert not (tmp_path / "master.key").exists()
    rotated = run_cli(tmp_path, "keys", "rotate-master", env={"LLAMAHOST_MASTER_KEY": old})
    new = rotated.stdout.strip()
    assert MasterKey.parse(new) != MasterKey.parse(old) and "set LLAMAHOST_MASTER_KEY" in rotated.stderr
    assert "alpha" in run_cli(tmp_path, "teams", "list", env={"LLAMAHOST_MASTER_KEY": new}).stdout
    assert run_cli(tmp_path, "teams", "list", env={"LLAMAHOST_MASTER_KEY": old}, check=False).returncode == 2


# --- a database from before encryption ------------------------------------------------------


def test_plaintext_rows_of_an_older_database_are_encrypted_in_place(tmp_path, monkeypatch):
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import create_engine, text

    from llamahost.store.db import MIGRATIONS_DIR

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    engine = create_engine(f"sqlite:///{data_dir / 'llamahost.db'}")
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    c = canaries()
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")  # the schema before encryption, with plaintext rows
        conn.execute(text("INSERT INTO teams (name, created_at) VALUES (:n, :t)"), {"n": c["team"], "t": now})
        conn.execute(text("INSERT INTO api_keys (key_id, team_id, name, secret_hash, role, created_at) "
                          "VALUES ('oldkey', 1, :n, 'x', 'member', :t)"), {"n": c["label"], "t": now})
        conn.execute(text("INSERT INTO rate_limits (team_id, rpm, updated_at) VALUES (1, 7, :t)"), {"t": now})
        for _ in range(3):
            conn.execute(text("INSERT INTO usage_records (created_at, team_id, key_id, model, end_user, "
                              "prompt_tokens, completion_tokens, latency_ms, status) "
                              "VALUES (:t, 1, 'oldkey', 'm', :u, 5, 6, 7, 'ok')"), {"u": c["user"], "t": now})
    engine.dispose()

    listed = run_cli(data_dir, "teams", "list")  # opening the database runs the migration
    assert c["team"] in listed.stdout and "GENERATED A NEW MASTER KEY" in listed.stderr
    assert c["label"] in run_cli(data_dir, "keys", "list").stdout
    assert "7" in run_cli(data_dir, "limits", "list").stdout  # rows referencing the team survived
    usage = json.loads(run_cli(data_dir, "usage", "--user", c["user"], "--json").stdout)
    assert usage["totals"]["requests"] == 3 and {r["user"] for r in usage["data"]} == {c["user"]}
    for path in data_dir.glob("llamahost.db*"):
        blob = path.read_bytes()
        for name in ("team", "label", "user"):
            assert c[name].encode() not in blob, f"plaintext {name} left in {path.name}"
