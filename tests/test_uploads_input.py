"""Uploads and files refuse bad input with a 4xx naming the problem, check datasets
line by line, keep teams apart, and speak OpenAI's files API at /compat/v1."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from llama_api_client import ConflictError, LlamaAPIClient
from openai import OpenAI

from upload_helpers import MiB, example, jsonl, upload


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from conftest import start_server

    server = start_server(tmp_path_factory.mktemp("uploads"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(srv) -> LlamaAPIClient:
    return LlamaAPIClient(api_key=srv.key, base_url=srv.base_url, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(srv):
    with httpx.Client(base_url=srv.url, headers=srv.headers(), timeout=60) as c:
        yield c


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _create(http, **overrides) -> httpx.Response:
    body = {"bytes": 10, "filename": "a.jsonl", "mime_type": "application/jsonl", "purpose": "messages_finetune"}
    return http.post("/v1/uploads", json={**body, **overrides})


def _part(http, upload_id: str, data: bytes, offset: int | None = None) -> httpx.Response:
    headers = {} if offset is None else {"X-Upload-Offset": str(offset)}
    return http.post(f"/v1/uploads/{upload_id}", files={"data": ("blob", data)}, headers=headers)


# --- the protocol ----------------------------------------------------------------------------


def test_wrong_offset_is_a_409_carrying_the_current_offset(client, http):
    session = client.uploads.create(bytes=100, filename="a.txt", mime_type="text/plain", purpose="attachment")
    assert client.uploads.part(session.id, data=("p", b"x" * 40), x_upload_offset=0).offset == 40
    with pytest.raises(ConflictError) as raised:
        client.uploads.part(session.id, data=("p", b"y" * 10), x_upload_offset=10)
    error = raised.value.body["error"] if "error" in raised.value.body else raised.value.body
    assert error["offset"] == 40 and error["code"] == "offset_mismatch" and error["param"] == "x-upload-offset"
    assert raised.value.response.headers["x-upload-offset"] == "40"
    # Without the header a part appends at the current offset.
    assert _part(http, session.id, b"z" * 60).json() == {"upload_id": session.id, "offset": 100, "file_id": http.get(
        f"/v1/uploads/{session.id}").json()["file_id"]}
    # A completed session takes no more parts.
    error = _error(_part(http, session.id, b"more", offset=100), 409)
    assert error["code"] == "upload_complete" and error["offset"] == 100


def test_a_part_overrunning_the_file_is_a_400(http):
    upload_id = _create(http, bytes=10, mime_type="text/plain", purpose="attachment").json()["id"]
    error = _error(_part(http, upload_id, b"x" * 11, offset=0), 400)
    assert error["param"] == "data" and "overruns" in error["message"]
    assert http.get(f"/v1/uploads/{upload_id}").json()["offset"] == 0  # nothing of it landed
    assert _part(http, upload_id, b"x" * 10, offset=0).json()["offset"] == 10


def test_mime_type_must_fit_the_purpose(http):
    error = _error(_create(http, mime_type="image/png"), 400)
    assert error["param"] == "mime_type" and "messages_finetune" in error["message"]
    assert _create(http, mime_type="image/png", purpose="image_generation_result").status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [("purpose", "fine-tune"), ("mime_type", "application/zip"), ("bytes", 0), ("bytes", "12"), ("filename", "")],
)
def test_create_names_the_bad_field(http, field, value):
    assert _error(_create(http, **{field: value}), 400)["param"] == field


def test_a_file_larger_than_max_bytes_is_refused_at_create(http):
    error = _error(_create(http, bytes=2 * 1024**3), 400)
    assert error["param"] == "bytes" and str(1024**3) in error["message"]


def test_part_body_errors(http):
    upload_id = _create(http, bytes=10, mime_type="text/plain", purpose="attachment").json()["id"]
    assert _error(http.post(f"/v1/uploads/{upload_id}", json={"data": "x"}), 415)["param"] == "content-type"
    assert _error(http.post(f"/v1/uploads/{upload_id}", files={"other": ("a", b"x")}), 400)["param"] == "other"
    assert _error(http.post(f"/v1/uploads/{upload_id}", data={"x": "1"}), 415)["param"] == "content-type"
    error = _error(_part(http, upload_id, b"x", offset=-1), 400)
    assert error["param"] == "x-upload-offset"
    assert _error(http.get("/v1/uploads/upload-nope"), 404)["param"] == "upload_id"


def test_multipart_parts_may_exceed_the_json_body_cap(tmp_path):
    """The server's JSON cap (here 1 MiB) does not apply to parts; the part cap does."""
    from conftest import start_server

    server = start_server(tmp_path, config="[server]\nmax_request_bytes = 1048576\n[files]\nmax_part_bytes = 3145728\n")
    try:
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
            upload_id = _create(http, bytes=8 * MiB, mime_type="text/plain", purpose="attachment").json()["id"]
            assert _part(http, upload_id, b"a" * (2 * MiB), offset=0).json()["offset"] == 2 * MiB
            error = _error(_part(http, upload_id, b"b" * (4 * MiB), offset=2 * MiB), 413)
            assert error["param"] == "data"
            assert http.get(f"/v1/uploads/{upload_id}").json()["offset"] == 2 * MiB
            big_json = http.post("/v1/uploads", content=b" " * (2 * MiB), headers={"content-type": "application/json"})
            assert big_json.status_code == 413
    finally:
        server.stop()


# --- files -------------------------------------------------------------------------------------


def test_files_list_get_content_delete(client, http):
    ids = [upload(client, f"file {i}\n".encode(), purpose="attachment", mime="text/plain", filename=f"f{i}.txt")
           for i in range(3)]
    page = http.get("/v1/files", params={"limit": 2, "purpose": "attachment"}).json()
    assert page["object"] == "list" and page["has_more"] is True and len(page["data"]) == 2
    rest = http.get("/v1/files", params={"limit": 100, "purpose": "attachment", "after": page["last_id"]}).json()
    listed = [f["id"] for f in page["data"] + rest["data"]]
    assert listed[:3] == ids[::-1]  # newest first
    one = http.get(f"/v1/files/{ids[0]}").json()
    assert one["object"] == "file" and one["filename"] == "f0.txt" and one["mime_type"] == "text/plain"
    assert one["sha256"] == hashlib.sha256(b"file 0\n").hexdigest() and one["status"] == "processed"
    assert http.get(f"/v1/files/{ids[0]}/content").content == b"file 0\n"
    assert http.delete(f"/v1/files/{ids[0]}").json() == {"id": ids[0], "object": "file", "deleted": True}
    assert _error(http.get(f"/v1/files/{ids[0]}"), 404)["param"] == "file_id"
    assert _error(http.get("/v1/files", params={"purpose": "bogus"}), 400)["param"] == "purpose"


def test_other_teams_files_and_uploads_are_404(srv, client, http):
    file_id = upload(client, b"secret\n", purpose="attachment", mime="text/plain")
    upload_id = _create(http, bytes=10, mime_type="text/plain", purpose="attachment").json()["id"]
    other = srv.cli("keys", "create", "--team", "other-team").stdout.strip()
    with httpx.Client(base_url=srv.url, headers=srv.headers(other), timeout=60) as them:
        for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content", f"/compat/v1/files/{file_id}",
                     f"/v1/uploads/{upload_id}"):
            assert them.get(path).status_code == 404, path
        assert them.delete(f"/v1/files/{file_id}").status_code == 404
        assert them.delete(f"/v1/uploads/{upload_id}").status_code == 404
        assert upload_id not in [u["upload_id"] for u in them.get("/v1/uploads").json()["data"]]
        assert _error(_part(them, upload_id, b"x", offset=0), 404)["param"] == "upload_id"
        assert file_id not in [f["id"] for f in them.get("/v1/files").json()["data"]]
    assert http.get(f"/v1/files/{file_id}/content").content == b"secret\n"


# --- datasets --------------------------------------------------------------------------------


def _good(n: int = 10) -> list:
    return [example(i) for i in range(n)]


def _broken(index: int, row) -> list:
    rows = _good()
    rows[index] = row
    return rows


def _with_messages(*messages) -> dict:
    return {"messages": list(messages)}


U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}
S = {"role": "system", "content": "be brief"}

FINETUNE_CASES = {
    "not json": (_broken(3, None), 4, "not valid JSON"),
    "not an object": (_broken(2, [U, A]), 3, "JSON object"),
    "no messages": (_broken(5, {"conversation": [U, A]}), 6, "unknown field"),
    "extra field": (_broken(5, {"messages": [U, A], "weight": 1}), 6, "unknown field 'weight'"),
    "empty messages": (_broken(0, {"messages": []}), 1, "non-empty"),
    "system not first": (_broken(1, _with_messages(U, S, A)), 2, "system message may only be the first"),
    "two users": (_broken(7, _with_messages(S, U, U, A)), 8, "alternate"),
    "assistant first": (_broken(4, _with_messages(A, U, A)), 5, "expected a user message"),
    "last not assistant": (_broken(9, _with_messages(U, A, U)), 10, "last message must be from the assistant"),
    "tool role": (_broken(6, _with_messages(U, {"role": "tool", "content": "x", "tool_call_id": "1"})), 7, "not allowed"),
    "bad message": (_broken(8, _with_messages({"role": "user", "content": 5}, A)), 9, "messages[0].content"),
    "too few": (_good(9), None, "at least 10"),
}


def _dataset_status(client, http, data: bytes, purpose: str = "messages_finetune") -> dict:
    file_id = upload(client, data, purpose=purpose)
    return http.get(f"/v1/files/{file_id}").json()


@pytest.mark.parametrize("case", sorted(FINETUNE_CASES))
def test_malformed_finetune_datasets_name_the_line(client, http, case):
    rows, line, words = FINETUNE_CASES[case]
    data = b"".join(b"{not json\n" if row is None else (json.dumps(row) + "\n").encode() for row in rows)
    info = _dataset_status(client, http, data)
    assert info["status"] == "error", info
    assert words in info["status_details"], info["status_details"]
    if line is not None:
        assert info["status_details"].startswith(f"line {line}:"), info["status_details"]


def test_valid_datasets_are_processed(client, http):
    assert _dataset_status(client, http, jsonl(_good()))["status"] == "processed"
    evals = [{"messages": [U], "expected": "hello"}, {"item": {"question": "2+2", "answer": "4"}}, _with_messages(S, U, A)]
    assert _dataset_status(client, http, jsonl(evals), "messages_eval")["status"] == "processed"
    bad_eval = _dataset_status(client, http, jsonl([evals[0], {"input": "x"}]), "messages_eval")
    assert bad_eval["status"] == "error" and bad_eval["status_details"].startswith("line 2:")


# --- OpenAI's files API at /compat/v1 -----------------------------------------------------------


def test_openai_sdk_files_create_maps_fine_tune(srv):
    openai = OpenAI(api_key=srv.key, base_url=f"{srv.url}/compat/v1", max_retries=0)
    reply = {"role": "assistant", "content": "hi", "refusal": None}  # OpenAI's own shape
    rows = [{"messages": [{"role": "developer", "content": "terse"}, U, reply]}] * 10
    data = jsonl(rows)
    created = openai.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert created.purpose == "fine-tune" and created.bytes == len(data) and created.filename == "train.jsonl"
    assert created.status == "processed", created
    assert created.id in [f.id for f in openai.files.list(purpose="fine-tune")]
    assert openai.files.retrieve(created.id).status == "processed"
    assert openai.files.content(created.id).read() == data
    evals = openai.files.create(file=("e.jsonl", jsonl([{"item": {"q": 1}}])), purpose="evals")
    assert evals.purpose == "evals" and evals.status == "processed"
    with httpx.Client(base_url=srv.url, headers=srv.headers(), timeout=60) as http:
        assert http.get(f"/v1/files/{created.id}").json()["purpose"] == "messages_finetune"
        assert http.get(f"/v1/files/{evals.id}").json()["purpose"] == "messages_eval"
        error = _error(http.post("/compat/v1/files", files={"file": ("a", b"x")}, data={"purpose": "batch"}), 400)
        assert error["param"] == "purpose"
        assert _error(http.post("/compat/v1/files", files={"file": ("a", b"x")}), 400)["param"] == "purpose"
        note = http.post("/compat/v1/files", files={"file": ("n.txt", b"note", "text/plain")}, data={"purpose": "user_data"})
        assert note.json()["purpose"] == "user_data"
        native = http.get(f"/v1/files/{note.json()['id']}").json()
        assert (native["purpose"], native["mime_type"], native["status"]) == ("attachment", "text/plain", "processed")
    assert openai.files.delete(created.id).deleted is True


def test_usage_summary_shows_stored_bytes_as_storage(client, http):
    upload(client, b"counted\n", purpose="attachment", mime="text/plain")
    files = http.get("/v1/files", params={"limit": 10000}).json()["data"]
    summary = http.get("/team/v1/usage/summary").json()
    assert summary["storage"] == {"files": len(files), "bytes": sum(f["bytes"] for f in files)}
    assert summary["storage"]["files"] >= 1


def test_open_uploads_are_listed_and_can_be_cancelled(client, http):
    upload_id = _create(http, bytes=100, filename="open.txt", mime_type="text/plain", purpose="attachment").json()["id"]
    assert _part(http, upload_id, b"x" * 30, offset=0).json()["offset"] == 30
    done = client.uploads.create(bytes=3, filename="done.txt", mime_type="text/plain", purpose="attachment")
    client.uploads.part(done.id, data=("p", b"abc"), x_upload_offset=0)
    listed = {u["upload_id"]: u for u in http.get("/v1/uploads").json()["data"]}
    assert done.id not in listed  # only unfinished uploads
    mine = listed[upload_id]
    assert (mine["filename"], mine["bytes"], mine["offset"], mine["purpose"]) == ("open.txt", 100, 30, "attachment")
    assert mine["expires_at"] - mine["created_at"] >= 24 * 3600 - 5
    assert http.delete(f"/v1/uploads/{upload_id}").json() == {"upload_id": upload_id, "object": "upload", "deleted": True}
    assert _error(http.get(f"/v1/uploads/{upload_id}"), 404)["param"] == "upload_id"
    assert _error(http.delete(f"/v1/uploads/{upload_id}"), 404)["param"] == "upload_id"


def test_an_operator_sets_a_teams_storage_quota(srv):
    """Per team (``teams set --files-quota-bytes`` or an operator's PATCH); the team's own
    admin key may not lift it."""
    team = "quota-team"
    member = srv.cli("keys", "create", "--team", team).stdout.strip()
    admin = srv.cli("keys", "create", "--team", team, "--role", "admin").stdout.strip()
    assert "files_quota_bytes = 50" in srv.cli("teams", "set", team, "--files-quota-bytes", "50").stdout
    with httpx.Client(base_url=srv.url, headers=srv.headers(member), timeout=60) as http:
        error = _error(_create(http, bytes=60, mime_type="text/plain", purpose="attachment"), 400)
        assert error["code"] == "storage_quota_exceeded" and error["param"] == "bytes"
        assert _create(http, bytes=50, mime_type="text/plain", purpose="attachment").status_code == 200
    url = f"{srv.url}/admin/v1/teams/{team}/settings"
    refused = httpx.patch(url, json={"files_quota_bytes": 10**9}, headers=srv.headers(admin), timeout=30)
    assert _error(refused, 403)["type"] == "permission_error"
    assert httpx.get(url, headers=srv.headers(admin), timeout=30).json()["files_quota_bytes"] == 50
