"""``[server] log_users``: how request logs name the end user of a request's ``user``
field. The default, ``hashed``, is covered in test_native_sdk.py; here ``plain`` (text
log lines) and ``off`` (JSON log lines), each on a server of its own."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

MODEL = "SmolLM2-135M-Instruct"


def _chat(server, user: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 2, "user": user}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, headers=server.headers(), timeout=120)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("mode", ["plain", "off"])
def test_log_users_plain_or_off(server_factory, mode):
    log_format = "text" if mode == "plain" else "json"
    server = server_factory(config=f'[server]\nlog_users = "{mode}"\nlog_format = "{log_format}"\n')
    user = f"person-{uuid.uuid4().hex[:8]}"
    _chat(server, user)
    log = server.log()
    if mode == "plain":
        assert f"user={user}" in log
        return
    assert user not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    chats = [line for line in lines if line.get("event") == "chat_completion"]
    assert chats and all("user" not in line for line in chats), chats
    assert all(" user=" not in line["message"] for line in chats)
