"""Fuzzing: schemathesis generates requests for every operation of the served OpenAPI
document and sends them to a real ``llamahost serve`` over HTTP. No answer may be a 5xx,
and no JSON answer may contradict the document (status code, content type, schema).

Run it alone: ``pytest -m fuzz`` (or ``pytest tests/test_fuzz.py``). Operations come from
the served document, so a new operation is fuzzed without touching this file.

schemathesis runs through its command line (the documented, stable interface; its pytest
plugin does not run under this pytest), configured by a schemathesis.toml written here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import start_server
from fuzz_hooks import MODEL

pytestmark = pytest.mark.fuzz

SEED = 20261129
# Generated requests per operation in the fuzzing phase; the coverage phase adds its own
# boundary and negative cases. Sized for the run to stay well under 3 minutes on 2 cores.
MAX_EXAMPLES = 15
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
# Cheap chat: a 256-token window bounds every prompt and completion, a request without
# max_completion_tokens gets 4 tokens, one thread per decode (the fuzzer sends one request
# at a time); rate limits off so that no fuzzed limit starves the run.
CONFIG = f"""
[limits]
enabled = false

[[models]]
id = "{MODEL}"
context_window = 256
default_max_completion_tokens = 4
parallel = 2
threads = 1
max_queue = 256
"""
TESTS = Path(__file__).resolve().parent


def _fixture_objects(server, auth: dict[str, str]) -> dict[str, str]:
    """A team and two keys for the destructive operations to hit, so the fuzzer never
    deletes its own team or revokes its own key (ids it can read from /team/v1/me)."""

    def post(path: str, body: dict) -> dict:
        response = httpx.post(server.url + path, json=body, headers=auth, timeout=30)
        assert response.status_code in (200, 201), response.text
        return response.json()

    post("/admin/v1/teams", {"name": "fuzz-doomed"})
    return {
        "team": "fuzz-doomed",
        "admin_key": post("/admin/v1/keys", {"team": "fuzz-doomed", "name": "fuzz-doomed"})["id"],
        "team_key": post("/team/v1/keys", {"name": "fuzz-doomed"})["id"],
    }


def _schemathesis_config(doomed: dict[str, str]) -> str:
    # include-name, not include-path + include-method: those two match either one.
    return f"""
seed = {SEED}

[generation]
max-examples = {MAX_EXAMPLES}

[phases.stateful]
enabled = false  # it would chain created keys into revocations

[[operations]]
include-name = "DELETE /admin/v1/teams/{{team}}"
parameters = {{ team = "{doomed['team']}" }}

[[operations]]
include-name = "DELETE /admin/v1/keys/{{key_id}}"
parameters = {{ key_id = "{doomed['admin_key']}" }}

[[operations]]
include-name = "DELETE /team/v1/keys/{{key_id}}"
parameters = {{ key_id = "{doomed['team_key']}" }}
"""


def test_fuzzing_every_operation_finds_no_5xx_and_no_answer_contradicting_the_document(tmp_path):
    server = start_server(tmp_path / "server", CONFIG, key=False)
    try:
        operator = server.cli("keys", "create", "--team", "fuzz", "--role", "operator").stdout.strip()
        auth = {"Authorization": f"Bearer {operator}"}
        config_path = tmp_path / "schemathesis.toml"
        config_path.write_text(_schemathesis_config(_fixture_objects(server, auth)))
        report_path = tmp_path / "report.json"
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "fuzz_hooks",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        started = time.monotonic()
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "--config-file", str(config_path), "--no-color",
                "run", f"{server.url}/openapi.json",
                "--header", f"Authorization: Bearer {operator}",
                "--checks", CHECKS,
                "--phases", "examples,coverage,fuzzing",
                "--workers", "1",
                "--request-timeout", "60",
                "--report", "json", "--report-json-path", str(report_path),
            ],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )
        elapsed = time.monotonic() - started
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        operations, cases = report.get("operations", {}), report.get("test_cases", {})
        print(
            f"\nfuzz: {operations.get('tested')} of {operations.get('total')} operations, "
            f"{cases.get('generated')} requests, {len(report.get('failures', []))} failures in {elapsed:.0f} s"
        )
        assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
        assert operations["tested"] == operations["total"] > 0, operations
        assert not report["failures"] and not report["errors"], run.stdout[-20000:]
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()[-10000:]
