"""The official llama-api-client SDK, sync and async, against a live server."""

from __future__ import annotations

import pytest
from llama_api_client import (
    AsyncLlamaAPIClient,
    AuthenticationError,
    BadRequestError,
    LlamaAPIClient,
    NotFoundError,
)

MODEL = "Llama-4-Maverick-17B-128E-Instruct-FP8"
MESSAGES = [
    {"role": "system", "content": "You are a friendly assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]


@pytest.fixture
def client(server):
    return LlamaAPIClient(api_key=server.key, base_url=server.base_url, max_retries=0)


@pytest.fixture
async def async_client(server):
    # Closed on the test's own event loop: left open, it is garbage-collected during a
    # later test and closes its connections on that test's loop, failing it.
    client = AsyncLlamaAPIClient(api_key=server.key, base_url=server.base_url, max_retries=0)
    yield client
    await client.close()


def _metrics(metrics) -> dict[str, float]:
    return {m.metric: m.value for m in metrics}


def test_sdk_reads_base_url_and_key_from_environment(server, monkeypatch):
    monkeypatch.setenv("LLAMA_API_CLIENT_BASE_URL", server.base_url)
    monkeypatch.setenv("LLAMA_API_KEY", server.key)
    response = LlamaAPIClient(max_retries=0).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello, world!"}], max_completion_tokens=16
    )
    assert response.completion_message.role == "assistant"


def test_non_streaming_chat(client):
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=48, temperature=0)
    message = response.completion_message
    assert message.role == "assistant"
    assert message.content.type == "text" and message.content.text.strip()
    assert message.stop_reason in ("stop", "length")
    assert message.tool_calls == []
    metrics = _metrics(response.metrics)
    assert metrics["num_prompt_tokens"] > 10
    assert 1 <= metrics["num_completion_tokens"] <= 48
    assert metrics["num_total_tokens"] == metrics["num_prompt_tokens"] + metrics["num_completion_tokens"]


def test_budget_exhaustion_reports_length(client):
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long essay about the history of Rome."}],
        max_completion_tokens=5,
        temperature=0,
    )
    assert response.completion_message.stop_reason == "length"
    assert _metrics(response.metrics)["num_completion_tokens"] == 5


def test_streaming_text_equals_non_streaming_at_temperature_zero(client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_completion_tokens=40, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    events = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = "".join(event.event.delta.text for event in events)
    assert streamed == whole.completion_message.content.text
    kinds = [event.event.event_type for event in events]
    assert kinds[0] == "start" and kinds[-2:] == ["complete", "metrics"]
    assert set(kinds[1:-2]) <= {"progress"}
    assert events[-2].event.stop_reason == whole.completion_message.stop_reason
    assert _metrics(events[-1].event.metrics) == _metrics(whole.metrics)


def test_second_turn_sends_completion_message_back(client):
    first = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "My name is Ada."}], max_completion_tokens=24, temperature=0
    )
    second = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "My name is Ada."},
            first.completion_message,
            {"role": "user", "content": "What is my name?"},
        ],
        max_completion_tokens=24,
        temperature=0,
    )
    assert second.completion_message.content.text.strip()
    # The history (with the first reply) is really in the prompt.
    assert _metrics(second.metrics)["num_prompt_tokens"] > _metrics(first.metrics)["num_prompt_tokens"] + _metrics(
        first.metrics
    )["num_completion_tokens"]


def test_models_list_and_retrieve(client):
    models = client.models.list()
    ids = [m.id for m in models]
    assert "SmolLM2-135M-Instruct" in ids
    for hosted in (
        "Llama-4-Maverick-17B-128E-Instruct-FP8",
        "Llama-4-Scout-17B-16E-Instruct-FP8",
        "Llama-3.3-70B-Instruct",
        "Llama-3.3-8B-Instruct",
    ):
        assert hosted in ids
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    # What backs the alias is visible.
    assert model.to_dict()["root"] == "SmolLM2-135M-Instruct"


def test_wrong_key_is_authentication_error(server):
    bad = LlamaAPIClient(api_key="llh_nope_nope", base_url=server.base_url, max_retries=0)
    with pytest.raises(AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(AuthenticationError):
        bad.models.list()


def test_unknown_model_is_not_found(client):
    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(NotFoundError):
        client.models.retrieve("no-such-model")


def test_bad_input_is_bad_request(client):
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=7)
    assert info.value.body["error"]["param"] == "temperature"


def test_user_field_is_accepted_and_logged_hashed(client, server):
    # The default [server] log_users = "hashed": the log names the user by a keyed hash
    # that the operator can look up, never by the value sent.
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=4, user="user_12345")
    label = server.cli("log-user", "user_12345").stdout.strip()
    assert label.startswith("h:") and label != server.cli("log-user", "user_54321").stdout.strip()
    log = server.log()
    assert f"user={label}" in log and "user_12345" not in log


@pytest.mark.anyio
async def test_async_client_streaming_matches_non_streaming(async_client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_completion_tokens=32, temperature=0)
    whole = await async_client.chat.completions.create(**kwargs)
    stream = await async_client.chat.completions.create(stream=True, **kwargs)
    text = "".join([event.event.delta.text async for event in stream])
    assert text == whole.completion_message.content.text
    models = await async_client.models.list()
    assert MODEL in [m.id for m in models]
    with pytest.raises(NotFoundError):
        await async_client.models.retrieve("nope")
