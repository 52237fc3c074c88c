"""The served OpenAPI document tells the truth: request bodies, parameters, success and
error responses, bounds on every number; and real answers validate against it."""

from __future__ import annotations

import httpx
import pytest
from jsonschema import Draft202012Validator

MODEL = "SmolLM2-135M-Instruct"
WRITE_METHODS = ("post", "put", "patch")
# Operations that take no body at all (their handlers read none).
BODILESS = {("post", "/admin/v1/teams/{team}/rotate-data-key"), ("post", "/admin/v1/jobs/{job_id}/cancel")} | {
    ("post", f"{prefix}/evals/{{eval_id}}/runs/{{run_id}}{cancel}")
    for prefix in ("/v1", "/compat/v1")
    for cancel in ("", "/cancel")
} | {("post", f"{prefix}/fine_tuning/jobs/{{fine_tuning_job_id}}/cancel") for prefix in ("/v1", "/compat/v1")}


@pytest.fixture(scope="module")
def document(server) -> dict:
    response = httpx.get(server.url + "/openapi.json", timeout=30)
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def operator(server) -> dict[str, str]:
    key = server.cli("keys", "create", "--team", "openapi-ops", "--role", "operator").stdout.strip()
    return {"Authorization": f"Bearer {key}"}


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, op in item.items():
            yield method, path, op


def resolve(document: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = document["components"]["schemas"][name]
    return schema


def validator(document: dict, schema: dict) -> Draft202012Validator:
    # The document's components ride along so that "#/components/schemas/..." resolves.
    root = {"allOf": [schema], "components": document["components"]}
    return Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)


def assert_matches(document: dict, method: str, path: str, response: httpx.Response) -> None:
    """The response's status is documented for the operation, and its JSON body validates
    against the documented schema of that status."""
    op = document["paths"][path][method]
    status = str(response.status_code)
    assert status in op["responses"], f"{method.upper()} {path} answered {status}, documented {sorted(op['responses'])}"
    if response.status_code == 204:
        return
    content = op["responses"][status]["content"]
    if "application/json" not in content:  # a file's bytes: documented as any media type
        assert "*/*" in content, f"{method.upper()} {path} {status} has no schema for {response.headers['content-type']}"
        return
    errors = sorted(validator(document, content["application/json"]["schema"]).iter_errors(response.json()), key=str)
    assert not errors, f"{method.upper()} {path} {status}: {errors[0].message} in {response.text[:500]}"


def test_the_document_is_served_with_docs(server, document):
    assert document["openapi"].startswith("3.")
    docs = httpx.get(server.url + "/docs", timeout=30)
    assert docs.status_code == 200 and "/openapi.json" in docs.text


def test_every_write_operation_documents_its_json_body(document):
    schemas = document["components"]["schemas"]
    checked = 0
    for method, path, op in operations(document):
        if method not in WRITE_METHODS or (method, path) in BODILESS:
            continue
        body = op.get("requestBody")
        assert body and body["required"], f"{method.upper()} {path} documents no request body"
        if "multipart/form-data" in body["content"]:  # an upload: its fields, the file among them
            form = body["content"]["multipart/form-data"]["schema"]
            assert form["required"] and set(form["required"]) <= set(form["properties"])
        else:
            schema = body["content"]["application/json"]["schema"]
            assert schema["$ref"].removeprefix("#/components/schemas/") in schemas
        for status in ("400", "413", "415"):
            assert status in op["responses"], f"{method.upper()} {path} does not document {status}"
        checked += 1
    assert checked >= 8


def test_every_operation_documents_auth_errors_and_the_error_shape(document):
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in document["components"]["schemas"]
    error = resolve(document, {"$ref": "#/components/schemas/ErrorResponse"})
    detail = resolve(document, error["properties"]["error"])
    assert set(detail["required"]) == {"type", "message", "param"}
    for method, path, op in operations(document):
        name = f"{method.upper()} {path}"
        assert op.get("security") == [{"HTTPBearer": []}], name
        assert "422" not in op["responses"], f"{name}: FastAPI's 422 is never sent (bad input is 400)"
        assert "401" in op["responses"], name
        assert any(status.startswith("2") for status in op["responses"]), name
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, f"{name} {status}"
        if op.get("parameters"):
            assert "400" in op["responses"], f"{name} has parameters: a bad one is a 400"


def _numbers(document: dict, schema: dict, where: str, seen: set[str]):
    """Every numeric leaf of a schema, with where it is."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        if name in seen:
            return
        seen = seen | {name}
        yield from _numbers(document, document["components"]["schemas"][name], f"{where}", seen)
        return
    if schema.get("type") in ("integer", "number"):
        yield where, schema
    for key in ("anyOf", "oneOf", "allOf"):
        for member in schema.get(key, []):
            yield from _numbers(document, member, where, seen)
    for name, prop in schema.get("properties", {}).items():
        yield from _numbers(document, prop, f"{where}.{name}", seen)
    if isinstance(schema.get("items"), dict):
        yield from _numbers(document, schema["items"], f"{where}[]", seen)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _numbers(document, schema["additionalProperties"], f"{where}{{}}", seen)


def test_every_numeric_input_has_documented_bounds(document):
    unbounded = []
    inputs = 0
    for method, path, op in operations(document):
        sources = [(f"{method.upper()} {path} ?{p['name']}", p["schema"]) for p in op.get("parameters", [])]
        for media, content in op.get("requestBody", {}).get("content", {}).items():
            sources.append((f"{method.upper()} {path} {media} body", content["schema"]))
        for where, schema in sources:
            for field, number in _numbers(document, schema, where, set()):
                inputs += 1
                low = "minimum" in number or "exclusiveMinimum" in number
                high = "maximum" in number or "exclusiveMaximum" in number
                if not (low and high):
                    unbounded.append(field)
    assert inputs > 20
    assert not unbounded, f"numeric inputs without both bounds: {sorted(set(unbounded))}"


def test_out_of_range_numbers_are_400_naming_the_field(server, operator):
    cases = [
        ("post", "/admin/v1/keys", {"team": "openapi-ops", "expires_in_days": 10**9}, "expires_in_days"),
        ("post", "/team/v1/keys", {"expires_in_days": 1e308}, "expires_in_days"),
        ("put", "/admin/v1/limits", {"team": "openapi-ops", "rpm": 10**20}, "rpm"),
        ("put", "/admin/v1/limits", {"team": "openapi-ops", "tpm": 10**30}, "tpm"),
        ("post", "/compat/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "seed": 2**64},
         "seed"),
    ]
    for method, path, body, param in cases:
        response = httpx.request(method, server.url + path, json=body, headers=operator, timeout=60)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["param"] == param
    for query, param in [("since=99999999999d", "since"), ("bucket=99999999999999999999d", "bucket"),
                         ("since=0001-01-01T00:00:00%2B05:00", "since"), ("top_users=101", "top_users")]:
        response = httpx.get(f"{server.url}/admin/v1/usage/summary?{query}", headers=operator, timeout=30)
        assert response.status_code == 400, (query, response.text)
        assert response.json()["error"]["param"] == param


def test_real_answers_validate_against_the_document(server, document, operator):
    """A representative call of every kind of operation, successes and errors, each
    validated with jsonschema against the schema the served document gives its status."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_completion_tokens": 4}

    def call(method: str, path: str, *, body=None, params=None, headers=operator, template=None):
        response = httpx.request(method, server.url + path, json=body, params=params, headers=headers, timeout=120)
        assert_matches(document, method, template or path, response)
        return response

    call("get", "/v1/models")
    call("get", f"/v1/models/{MODEL}", template="/v1/models/{model_id}")
    call("get", "/v1/models/no-such-model", template="/v1/models/{model_id}")
    call("get", "/compat/v1/models")
    call("get", f"/compat/v1/models/{MODEL}", template="/compat/v1/models/{model_id}")
    assert call("post", "/v1/chat/completions", body=chat).status_code == 200
    call("post", "/v1/chat/completions", body={**chat, "temperature": 9})
    call("post", "/v1/chat/completions", body={**chat, "model": "no-such-model"})
    call("post", "/v1/chat/completions", body=chat, headers={"Authorization": "Bearer nope"})
    compat = {**chat, "max_completion_tokens": None, "max_tokens": 4}
    assert call("post", "/compat/v1/chat/completions", body=compat).status_code == 200
    assert call("post", "/v1/moderations", body={"messages": chat["messages"]}).status_code == 200

    assert call("post", "/admin/v1/teams", body={"name": "openapi-team"}).status_code == 201
    assert call("post", "/admin/v1/teams", body={"name": "openapi-team"}).status_code == 200
    call("get", "/admin/v1/teams")
    created = call("post", "/admin/v1/keys", body={"team": "openapi-team", "expires_in_days": 1.5}).json()
    call("get", "/admin/v1/keys", params={"team": "openapi-team"})
    call("get", "/admin/v1/keys", params={"team": "no-such-team"})
    call("delete", f"/admin/v1/keys/{created['id']}", template="/admin/v1/keys/{key_id}")
    call("put", "/admin/v1/limits", body={"team": "openapi-team", "rpm": 100, "tpm": 10_000})
    call("get", "/admin/v1/limits")
    call("get", "/admin/v1/limits/effective", params={"team": "openapi-team"})
    call("delete", "/admin/v1/limits", params={"team": "openapi-team"})
    call("get", "/admin/v1/usage", params={"since": "1h"})
    call("get", "/admin/v1/usage/summary", params={"bucket": "5m"})
    team = "/admin/v1/teams/{team}"
    call("get", "/admin/v1/teams/openapi-ops/settings", template=f"{team}/settings")
    call("patch", "/admin/v1/teams/openapi-ops/settings", body={"retention_days": 7}, template=f"{team}/settings")
    call("post", "/admin/v1/teams/openapi-ops/rotate-data-key", template=f"{team}/rotate-data-key")
    stored = call("get", "/admin/v1/teams/openapi-ops/requests", template=f"{team}/requests").json()["data"]
    assert stored, "the chat above was stored (content is kept by default)"
    call("get", f"/admin/v1/teams/openapi-ops/requests/{stored[0]['id']}", template=f"{team}/requests/{{record_id}}")
    call("delete", "/admin/v1/teams/openapi-team", template=team)

    member = {"Authorization": f"Bearer {server.key}"}
    call("get", "/admin/v1/teams", headers=member)  # 403
    call("get", "/team/v1/me", headers=member)
    call("get", "/team/v1/keys", headers=member)
    own = call("post", "/team/v1/keys", body={"name": "openapi"}, headers=member).json()
    call("delete", f"/team/v1/keys/{own['id']}", headers=member, template="/team/v1/keys/{key_id}")
    call("get", "/team/v1/usage", headers=member)
    call("get", "/team/v1/usage/summary", headers=member)
    call("get", "/team/v1/limits", headers=member)
    call("get", "/team/v1/limits", params={"team": "other"}, headers=member)  # 400


def test_answers_of_files_jobs_and_evals_validate_against_the_document(server, document, operator):
    """The slices added after the first document: uploads and files, jobs, evals."""

    def call(method: str, path: str, template: str | None = None, **kwargs):
        kwargs["headers"] = {**operator, **kwargs.get("headers", {})}
        response = httpx.request(method, server.url + path, timeout=120, **kwargs)
        assert_matches(document, method, template or path, response)
        return response

    content = b'{"item": {"question": "2+2?", "answer": "4"}}\n'
    upload = call("post", "/v1/uploads", json={
        "bytes": len(content), "filename": "rows.jsonl", "mime_type": "application/jsonl", "purpose": "attachment",
    }).json()
    call("get", f"/v1/uploads/{upload['id']}", "/v1/uploads/{upload_id}")
    part = call("post", f"/v1/uploads/{upload['id']}", "/v1/uploads/{upload_id}",
                files={"data": ("rows.jsonl", content)}, headers={"X-Upload-Offset": "0"}).json()
    call("post", f"/v1/uploads/{upload['id']}", "/v1/uploads/{upload_id}",  # a stale offset: 409 with its details
         files={"data": ("rows.jsonl", content)}, headers={"X-Upload-Offset": "0"})
    file_id = part["file_id"]
    call("get", "/v1/files")
    call("get", "/compat/v1/files", params={"purpose": "user_data"})
    call("get", f"/v1/files/{file_id}", "/v1/files/{file_id}")
    call("get", f"/compat/v1/files/{file_id}", "/compat/v1/files/{file_id}")
    assert call("get", f"/v1/files/{file_id}/content", "/v1/files/{file_id}/content").content == content
    call("delete", f"/compat/v1/files/{file_id}", "/compat/v1/files/{file_id}")
    call("get", f"/v1/files/{file_id}", "/v1/files/{file_id}")  # 404
    call("post", "/compat/v1/files", files={"file": ("notes.txt", b"hello")}, data={"purpose": "user_data"})

    jobs = call("get", "/admin/v1/jobs").json()["data"]
    if jobs:
        call("get", f"/admin/v1/jobs/{jobs[0]['id']}", "/admin/v1/jobs/{job_id}")
    call("post", "/admin/v1/jobs/no-such-job/cancel", "/admin/v1/jobs/{job_id}/cancel")  # 404

    ev = call("post", "/v1/evals", json={
        "name": "openapi", "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
        "testing_criteria": [{"type": "string_check", "name": "exact", "operation": "eq",
                              "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}],
    }).json()
    call("get", "/compat/v1/evals")
    call("get", f"/v1/evals/{ev['id']}", "/v1/evals/{eval_id}")
    call("post", f"/v1/evals/{ev['id']}", "/v1/evals/{eval_id}", json={"name": "renamed"})
    call("get", f"/v1/evals/{ev['id']}/runs", "/v1/evals/{eval_id}/runs")
    call("post", f"/v1/evals/{ev['id']}/runs", "/v1/evals/{eval_id}/runs", json={"data_source": {"type": "nope"}})  # 400
    call("delete", f"/v1/evals/{ev['id']}", "/v1/evals/{eval_id}")
