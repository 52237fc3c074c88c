"""Every kind of bad input is a 4xx JSON error naming the problem, never a 500."""

from __future__ import annotations

import httpx
import pytest

MODEL = "SmolLM2-135M-Instruct"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def post(server, body=None, *, content=None, headers=None, path="/v1/chat/completions"):
    all_headers = {**server.headers(), **(headers or {})}
    if body is not None:
        return httpx.post(server.url + path, json=body, headers=all_headers, timeout=60)
    return httpx.post(server.url + path, content=content, headers=all_headers, timeout=60)


def assert_error(response, status, param):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"type", "message", "param"}
    assert error["param"] == param, error
    assert error["message"]
    return error


def chat(**fields):
    return {"model": MODEL, "messages": OK_MESSAGES, "max_completion_tokens": 4, **fields}


@pytest.mark.parametrize(
    "body, param",
    [
        (chat(temperature="hot"), "temperature"),
        (chat(temperature=5), "temperature"),
        (chat(temperature=-0.1), "temperature"),
        (chat(top_p=0), "top_p"),
        (chat(top_p=1.5), "top_p"),
        (chat(top_k=-1), "top_k"),
        (chat(repetition_penalty=0), "repetition_penalty"),
        (chat(max_completion_tokens=-5), "max_completion_tokens"),
        (chat(max_completion_tokens=0), "max_completion_tokens"),
        (chat(max_completion_tokens=10**12), "max_completion_tokens"),
        (chat(max_completion_tokens="12"), "max_completion_tokens"),
        (chat(max_completion_tokens=True), "max_completion_tokens"),
        (chat(stream="yes"), "stream"),
        (chat(user=123), "user"),
        (chat(messages=[]), "messages"),
        (chat(messages="hello"), "messages"),
        (chat(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
        (chat(messages=[{"content": "hi"}]), "messages[0].role"),
        (chat(messages=[{"role": "user"}]), "messages[0].content"),
        (chat(messages=[{"role": "user", "content": 42}]), "messages[0].content"),
        (chat(messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]), "messages[0].content[0].type"),
        (chat(messages=[{"role": "tool", "content": "42"}]), "messages[0].tool_call_id"),
        (chat(model=7), "model"),
        (chat(model="m" * 129), "model"),  # longer than a usage record stores
        (chat(surprise=True), "surprise"),
        ({"messages": OK_MESSAGES}, "model"),
        ({"model": MODEL}, "messages"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(server, body, param):
    assert_error(post(server, body), 400, param)


def test_malformed_json(server):
    response = post(server, content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"})
    assert_error(response, 400, "body")


def test_json_that_is_not_an_object(server):
    assert_error(post(server, content=b"[1, 2]", headers={"content-type": "application/json"}), 400, "body")


def test_form_urlencoded_body_is_refused(server):
    response = httpx.post(
        server.url + "/v1/chat/completions", data={"model": MODEL}, headers=server.headers(), timeout=30
    )
    assert_error(response, 415, "content-type")


def test_unknown_model_is_404(server):
    error = assert_error(post(server, chat(model="Llama-9-Imaginary")), 404, "model")
    assert "Llama-9-Imaginary" in error["message"]


def test_missing_and_wrong_keys_are_401(server):
    url = server.url + "/v1/chat/completions"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer llh_x_y"}):
        response = httpx.post(url, json=chat(), headers=headers, timeout=30)
        assert_error(response, 401, "authorization")
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401


def test_prompt_plus_budget_over_context_window_names_both_numbers(server):
    error = assert_error(post(server, chat(max_completion_tokens=9000)), 400, "max_completion_tokens")
    assert "9000" in error["message"] and "8192" in error["message"]


def test_prompt_alone_over_context_window(server):
    long_text = "word " * 9000
    error = assert_error(
        post(server, {"model": MODEL, "messages": [{"role": "user", "content": long_text}]}), 400, "messages"
    )
    assert "8192" in error["message"]


@pytest.mark.parametrize(
    "fields, param",
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
            "messages[0].content[1]",
        ),
    ],
)
def test_features_not_yet_served_are_refused_not_ignored(server, fields, param):
    assert_error(post(server, chat(**fields)), 400, param)


def test_text_response_format_is_accepted(server):
    response = post(server, chat(response_format={"type": "text"}))
    assert response.status_code == 200, response.text


def test_unknown_route_and_method_are_json(server):
    response = httpx.get(server.url + "/v1/nothing-here", headers=server.headers(), timeout=30)
    assert response.status_code == 404 and "error" in response.json()
    response = httpx.get(server.url + "/v1/chat/completions", headers=server.headers(), timeout=30)
    assert response.status_code == 405 and "error" in response.json()


def test_oversized_body_is_413(server_factory):
    small = server_factory(config="[server]\nmax_request_bytes = 4096\n")
    body = chat(messages=[{"role": "user", "content": "x" * 10_000}])
    assert_error(post(small, body), 413, "body")
    # Chunked upload without a Content-Length is counted too.
    def chunks():
        yield b'{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'
    response = httpx.post(
        small.url + "/v1/chat/completions",
        content=chunks(),
        headers={**small.headers(), "content-type": "application/json"},
        timeout=30,
    )
    assert_error(response, 413, "body")
