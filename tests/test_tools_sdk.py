"""Tool calling through the official SDK against a live server, following the SDK's own
tool example (examples/tool_call.py in llama-api-python): the call is made, its
arguments parse and validate, the tool result goes back, the model answers in text."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from llama_api_client import LlamaAPIClient

MODEL = "Llama-4-Maverick-17B-128E-Instruct-FP8"
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"location": {"type": "string", "description": "City and country e.g. Bogotá, Colombia"}},
    "required": ["location"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get current weather for a given location.",
            "parameters": WEATHER_PARAMETERS,
            "strict": True,
        },
    }
]
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone.",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["tz"]},
    },
}
# Under tool_choice "auto" the bundled model calls for this question (p(call) 0.51, far
# above its auto_tool_threshold; see README, "Tool calling").
QUESTION = "What's the weather like in Paris today?"


def get_weather(location: str) -> str:
    return f"The weather in {location} is sunny."


@pytest.fixture
def client(server):
    return LlamaAPIClient(api_key=server.key, base_url=server.base_url, max_retries=0)


def create(client, messages, **kw):
    kw.setdefault("tools", TOOLS)
    kw.setdefault("max_completion_tokens", 64)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, messages=messages, **kw)


def answer_tool_calls(messages: list, tool_calls: list[dict]) -> None:
    assert tool_calls
    for tool_call in tool_calls:
        assert tool_call["function"]["name"] == "get_weather"
        args = json.loads(tool_call["function"]["arguments"])
        jsonschema.validate(args, WEATHER_PARAMETERS)
        messages.append({"role": "tool", "tool_call_id": tool_call["id"], "content": get_weather(**args)})


def test_sdk_tool_example_non_streaming(client):
    messages = [{"role": "user", "content": QUESTION}]
    response = create(client, messages)
    message = response.completion_message
    assert message.stop_reason == "tool_calls"
    assert message.tool_calls[0].id.startswith("call_")
    completion_message = message.model_dump()
    messages.append(completion_message)
    answer_tool_calls(messages, completion_message["tool_calls"])

    response = create(client, messages)
    message = response.completion_message
    assert message.tool_calls == []
    assert message.stop_reason in ("stop", "length")
    assert message.content.text.strip()


def test_sdk_tool_example_streaming(client):
    messages = [{"role": "user", "content": QUESTION}]
    tool_call: dict = {"function": {"arguments": ""}}
    stop_reason = None
    kinds = []
    for chunk in create(client, messages, stream=True):
        delta = chunk.event.delta
        kinds.append(delta.type)
        if delta.type == "tool_call":
            if delta.id:
                tool_call["id"] = delta.id
            if delta.function.name:
                tool_call["function"]["name"] = delta.function.name
            elif delta.function.arguments:
                tool_call["function"]["arguments"] += delta.function.arguments
        if chunk.event.stop_reason:
            stop_reason = chunk.event.stop_reason
    assert stop_reason == "tool_calls"
    assert kinds.count("tool_call") >= 2  # the id + name delta, then argument fragments
    completion_message = {
        "role": "assistant",
        "content": {"type": "text", "text": ""},
        "tool_calls": [tool_call],
        "stop_reason": stop_reason,
    }
    messages.append(completion_message)
    answer_tool_calls(messages, [tool_call])

    text = ""
    for chunk in create(client, messages, stream=True):
        text += chunk.event.delta.text  # the example prints every delta's text
    assert text.strip()


# --- the SDK's example as it is: tool_choice unset ("auto"), temperature 0.6 ---------------
# Its question, tool and parameters (examples/tool_call.py). Under auto the bundled model
# calls when its probability of opening a call passes auto_tool_threshold (probed greedily
# before the reply, so the choice does not depend on sampling); the call's arguments are
# sampled at 0.6 but held to the tool's schema by the grammar, so every assertion below
# holds whatever the seed.
EXAMPLE_QUESTION = "Is it raining in Bellevue?"
EXAMPLE = {"max_completion_tokens": 2048, "temperature": 0.6}


def example_create(client, messages, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, **{**EXAMPLE, **kw})


def test_sdk_example_under_auto_non_streaming(client):
    messages = [{"role": "user", "content": EXAMPLE_QUESTION}]
    message = example_create(client, messages).completion_message
    assert message.stop_reason == "tool_calls"
    completion_message = message.model_dump()
    messages.append(completion_message)
    answer_tool_calls(messages, completion_message["tool_calls"])
    assert json.loads(completion_message["tool_calls"][0]["function"]["arguments"])["location"]

    message = example_create(client, messages).completion_message
    assert message.tool_calls == [] and message.content.text.strip()  # after the result: the answer


def test_sdk_example_under_auto_streaming(client):
    messages = [{"role": "user", "content": EXAMPLE_QUESTION}]
    tool_call: dict = {"function": {"arguments": ""}}
    stop_reason = None
    for chunk in example_create(client, messages, stream=True):  # read exactly as the example reads it
        if chunk.event.delta.type == "tool_call":
            if chunk.event.delta.id:
                tool_call["id"] = chunk.event.delta.id
            if chunk.event.delta.function.name:
                tool_call["function"]["name"] = chunk.event.delta.function.name
            if chunk.event.delta.function.arguments:
                tool_call["function"]["arguments"] += chunk.event.delta.function.arguments
        if chunk.event.stop_reason is not None:
            stop_reason = chunk.event.stop_reason
    assert stop_reason == "tool_calls"
    completion_message = {
        "role": "assistant",
        "content": {"type": "text", "text": ""},
        "tool_calls": [tool_call],
        "stop_reason": stop_reason,
    }
    messages.append(completion_message)
    answer_tool_calls(messages, [tool_call])

    text = ""
    for chunk in example_create(client, messages, stream=True):
        text += chunk.event.delta.text  # the example prints every delta's text: no tool_call deltas here
    assert text.strip()


@pytest.mark.parametrize("stream", [False, True])
def test_auto_answers_in_text_when_no_tool_is_needed(client, stream):
    # Far under the threshold (the probe gives the call opening no visible probability).
    messages = [{"role": "user", "content": "Tell me a joke."}]
    if not stream:
        message = example_create(client, messages, max_completion_tokens=48).completion_message
        assert message.tool_calls == [] and message.stop_reason != "tool_calls" and message.content.text.strip()
    else:
        chunks = list(example_create(client, messages, stream=True, max_completion_tokens=48))
        assert all(c.event.delta.type == "text" for c in chunks)
        assert "".join(c.event.delta.text for c in chunks).strip()


def test_tool_choice_none_never_calls(client):
    for question in (QUESTION, "Call get_weather for Berlin now."):
        response = create(client, [{"role": "user", "content": question}], tool_choice="none", max_completion_tokens=24)
        assert response.completion_message.tool_calls == []
        assert response.completion_message.stop_reason != "tool_calls"
    chunks = list(create(client, [{"role": "user", "content": QUESTION}], tool_choice="none", stream=True, max_completion_tokens=24))
    assert all(c.event.delta.type == "text" for c in chunks)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_required_always_calls(client, stream):
    for question in ("Hello, how are you?", "Tell me a joke."):
        kw = {"tool_choice": "required", "temperature": 0.8, "max_completion_tokens": 96}
        if not stream:
            message = create(client, [{"role": "user", "content": question}], **kw).completion_message
            assert message.stop_reason == "tool_calls"
            calls = [c.model_dump() for c in message.tool_calls]
        else:
            calls, stop_reason = [], None
            for chunk in create(client, [{"role": "user", "content": question}], stream=True, **kw):
                delta = chunk.event.delta
                if delta.type == "tool_call" and delta.function.name:
                    calls.append({"id": delta.id, "function": {"name": delta.function.name, "arguments": ""}})
                elif delta.type == "tool_call":
                    calls[-1]["function"]["arguments"] += delta.function.arguments
                stop_reason = chunk.event.stop_reason or stop_reason
            assert stop_reason == "tool_calls"
        answer_tool_calls([], calls)


def test_named_tool_choice_forces_that_tool(client):
    response = create(
        client,
        [{"role": "user", "content": QUESTION}],
        tools=[*TOOLS, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = response.completion_message.tool_calls
    assert calls and {c.function.name for c in calls} == {"get_time"}
    for call in calls:
        assert json.loads(call.function.arguments)["tz"] in ("UTC", "CET")


def test_several_calls_round_trip(client):
    calls = [
        {"id": "call_a", "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
        {"id": "call_b", "function": {"name": "get_weather", "arguments": '{"location": "Rome"}'}},
    ]
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": calls, "stop_reason": "tool_calls"},
        {"role": "tool", "tool_call_id": "call_a", "content": "Sunny."},
        {"role": "tool", "tool_call_id": "call_b", "content": "Rainy."},
    ]
    message = create(client, messages, tool_choice="none", max_completion_tokens=24).completion_message
    assert message.content.text.strip() and message.tool_calls == []


# --- bad input over the wire ----------------------------------------------------------------


def post(server, **fields):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 4, **fields}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=server.headers(), timeout=60)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name"),
        ({"tools": [TIME_TOOL, TIME_TOOL]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}, "tools[0].function.parameters"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}}}},
            "response_format.json_schema.schema.properties.a.uniqueItems",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(?<=a)b"}}}},
            "response_format",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "call_2", "content": "x"},
                ]
            },
            "messages[2].tool_call_id",
        ),
    ],
)
def test_bad_tools_and_schemas_are_400_naming_the_field(server, fields, param):
    response = post(server, **fields)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
