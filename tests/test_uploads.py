"""Resumable uploads with the official SDK, encrypted at rest, surviving a restart.

The Llama SDK (``client.uploads``) uploads a 5 MB JSONL in 1 MB parts; the server is
killed after part 2 and started again; the upload resumes from ``get().offset``, gets a
file id, and the content downloads byte for byte. A canary in the file (and its name)
is nowhere in the SQLite database, its WAL, a PostgreSQL dump, or the server's
temporary directory."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from llama_api_client import LlamaAPIClient

from conftest import postgres_url, start_server
from upload_helpers import MiB, assert_absent_in, assert_absent_under, canary, dataset, send_parts


def _client(server) -> LlamaAPIClient:
    return LlamaAPIClient(api_key=server.key, base_url=server.base_url, max_retries=0, timeout=120)


def _upload_across_a_restart(tmp_path, env: dict[str, str]):
    """Upload 5 MB in 1 MB parts, SIGKILL the server after part 2, restart, resume."""
    mark = canary()
    data = dataset(5 * MiB, mark)
    filename = f"{mark}.jsonl"
    # Where Starlette would spool a multipart file. Short: the embedded engine puts a Unix
    # socket in it, and a socket path has at most 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="llh-up-"))
    env = {**env, "TMPDIR": str(temp)}
    server = start_server(tmp_path, env=env)
    try:
        client = _client(server)
        session = client.uploads.create(
            bytes=len(data), filename=filename, mime_type="application/jsonl", purpose="messages_finetune"
        )
        assert session.id and session.bytes == len(data) and session.filename == filename
        assert send_parts(client, session.id, data, 0, MiB, stop_after=2) is None
        assert client.uploads.get(session.id).offset == 2 * MiB
    finally:
        server.process.kill()  # no graceful shutdown: what was acknowledged must be on disk
        server.process.wait()
    restarted = start_server(tmp_path, env=env, key=False)
    restarted.key = server.key
    try:
        client = _client(restarted)
        offset = client.uploads.get(session.id).offset
        assert offset == 2 * MiB
        file_id = send_parts(client, session.id, data, offset, MiB)
        assert file_id
        with httpx.Client(base_url=restarted.url, headers=restarted.headers(), timeout=120) as http:
            info = http.get(f"/v1/files/{file_id}").json()
            assert info["status"] == "processed", info
            assert info["sha256"] == hashlib.sha256(data).hexdigest()
            assert info["bytes"] == len(data) and info["filename"] == filename and info["purpose"] == "messages_finetune"
            response = http.get(f"/v1/files/{file_id}/content")
            assert response.status_code == 200
            assert response.content == data
            assert response.headers["content-disposition"].startswith("attachment;")
            assert response.headers["x-content-type-options"] == "nosniff"
            # A completed session answers with its file and takes no more parts.
            assert http.get(f"/v1/uploads/{session.id}").json() == {
                "upload_id": session.id, "offset": len(data), "file_id": file_id
            }
        scanned = assert_absent_under(temp, mark)
        return restarted, mark, file_id, scanned
    except BaseException:
        restarted.stop()
        raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_sdk_upload_resumes_after_a_restart_sqlite(tmp_path):
    server, mark, file_id, _ = _upload_across_a_restart(tmp_path, {})
    try:
        files = sorted(server.data_dir.glob("llamahost.db*"))
        assert server.data_dir / "llamahost.db-wal" in files
        assert sum(p.stat().st_size for p in files) > 5 * MiB  # the chunks are in there, sealed
        for path in files:
            assert_absent_in(path.read_bytes(), mark, path.name)
    finally:
        server.stop()


def test_sdk_upload_resumes_after_a_restart_postgresql(tmp_path, pg_schema):
    env = {
        "LLAMAHOST_DATABASE_URL": postgres_url(pg_schema),
        "LLAMAHOST_MASTER_KEY": secrets.token_hex(32),
    }
    server, mark, file_id, _ = _upload_across_a_restart(tmp_path, env)
    try:
        dump = subprocess.run(
            ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-n", pg_schema, "test"], capture_output=True, check=True
        ).stdout
        assert b"file_chunks" in dump and len(dump) > 5 * MiB
        assert_absent_in(dump, mark, "pg_dump")
    finally:
        server.stop()


def test_the_job_loop_expires_abandoned_uploads(tmp_path):
    """``uploads_expiry`` runs on the server's job loop: an upload idle past
    ``session_ttl_hours`` is gone (404), its stored part with it."""
    config = "[files]\nsession_ttl_hours = 0.0005\npurge_interval_seconds = 0.5\n[jobs]\npoll_interval_seconds = 0.1\n"
    server = start_server(tmp_path, config=config)
    try:
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
            body = {"bytes": 100, "filename": "a.txt", "mime_type": "text/plain", "purpose": "attachment"}
            upload_id = http.post("/v1/uploads", json=body).json()["id"]
            assert http.post(f"/v1/uploads/{upload_id}", files={"data": ("p", b"x" * 10)}).json()["offset"] == 10
            deadline = time.monotonic() + 90
            while http.get(f"/v1/uploads/{upload_id}").status_code == 200:
                assert time.monotonic() < deadline, "the abandoned upload was not purged"
                time.sleep(0.25)
            assert http.get(f"/v1/uploads/{upload_id}").json()["error"]["param"] == "upload_id"
        with sqlite3.connect(server.data_dir / "llamahost.db") as db:
            assert db.execute("select count(*) from file_chunks").fetchone() == (0,)
            kinds = {row[0] for row in db.execute("select kind from jobs where status = 'succeeded'")}
            assert "uploads_expiry" in kinds
    finally:
        server.stop()
