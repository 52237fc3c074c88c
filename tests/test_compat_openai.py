"""The OpenAI SDK and LangChain against /compat/v1 of a live server."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

MODEL = "Llama-3.3-70B-Instruct"
MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "List three fruits."},
]


@pytest.fixture
def client(server):
    return OpenAI(base_url=server.url + "/compat/v1", api_key=server.key, max_retries=0)


@pytest.fixture
def async_client(server):
    return AsyncOpenAI(base_url=server.url + "/compat/v1", api_key=server.key, max_retries=0)


def test_plain_chat(client):
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=32, temperature=0)
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 32
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_joined_equals_non_streaming(client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_completion_tokens=32, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)


def test_include_usage_adds_a_usage_chunk(client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == whole.usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens"}
    )


def test_stream_ends_with_done_sentinel(server):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.url + "/compat/v1/chat/completions", json=body, headers=server.headers(), timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_max_tokens_gives_finish_reason_length(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long poem about the sea."}], max_tokens=3, temperature=0
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_stop_sequences_cut_the_text(client):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 20, separated by commas."}], max_tokens=60, temperature=0)
    free = client.chat.completions.create(**kwargs).choices[0].message.content
    assert "5" in free, free
    stop = "5"
    stopped = client.chat.completions.create(stop=[stop], **kwargs)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == free[: free.index(stop)]
    # Streaming never shows any part of the stop sequence either.
    chunks = client.chat.completions.create(stop=stop, stream=True, **kwargs)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == free[: free.index(stop)]


def test_seeded_sampling_is_reproducible(client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=1.0, seed=1234)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first == second


def test_native_and_compat_give_identical_text(server, client):
    native = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_completion_tokens": 32, "temperature": 0},
        headers=server.headers(),
        timeout=60,
    ).json()
    compat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=32, temperature=0)
    assert native["completion_message"]["content"]["text"] == compat.choices[0].message.content


def test_models_in_openai_list_shape(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids and "SmolLM2-135M-Instruct" in ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_errors_are_sdk_exception_classes(server, client):
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server.url + "/compat/v1", api_key="llh_bad_bad", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-17", messages=MESSAGES)
    assert not_found.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=3)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    assert bad.value.param == "n"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, logprobs=True)
    assert bad.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stop=["a", "b", "c", "d", "e"])
    assert bad.value.param == "stop"


def test_developer_role_and_part_list_content(client):
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "Answer in one word."},
            {"role": "user", "content": [{"type": "text", "text": "Colour of the sky?"}]},
        ],
        max_tokens=8,
    )
    assert completion.choices[0].message.content is not None


@pytest.mark.anyio
async def test_async_client(async_client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0)
    whole = await async_client.chat.completions.create(**kwargs)
    stream = await async_client.chat.completions.create(stream=True, **kwargs)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == whole.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        await async_client.models.retrieve("nope")


def test_langchain_chat_openai_invoke_and_stream(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server.url + "/compat/v1", api_key=server.key, model=MODEL, temperature=0, max_tokens=24, max_retries=0)
    answer = llm.invoke("Say hello.")
    assert answer.content.strip()
    streamed = "".join(chunk.content for chunk in llm.stream("Say hello."))
    assert streamed == answer.content


class City(__import__("pydantic").BaseModel):
    # Bounded fields: the grammar then closes them, where a 135M model left to itself can
    # repeat inside a string or a number until the token budget runs out (README).
    name: str = __import__("pydantic").Field(max_length=40)
    country: str = __import__("pydantic").Field(max_length=40)
    population: int = __import__("pydantic").Field(ge=0, le=100_000_000)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}


def test_structured_output_parse_with_pydantic(client):
    parsed = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Paris: give its name, country and population."}],
        response_format=City,
        max_tokens=400,
        temperature=0,
    )
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City)
    City.model_validate_json(parsed.choices[0].message.content)


def test_json_object_mode_returns_an_object(client):
    import json

    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object describing a cat."}],
        response_format={"type": "json_object"},
        max_tokens=60,
        temperature=0,
    )
    if completion.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_tool_call_round_trip_streaming_and_not(client):
    import json

    messages = [{"role": "user", "content": "What is the weather in Lisbon?"}]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=60, temperature=0
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)

    # The same call, streamed: index-ed tool-call deltas that join to the same arguments.
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=60, temperature=0, stream=True
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    answer = client.chat.completions.create(
        model=MODEL,
        messages=[
            *messages,
            choice.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"}),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "unit": "celsius"}'},
        ],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_tokens=40,
        temperature=0,
    )
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content


def test_langchain_bind_tools_and_structured_output(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server.url + "/compat/v1", api_key=server.key, model=MODEL, temperature=0, max_tokens=80, max_retries=0)
    reply = llm.bind_tools([WEATHER_TOOL], tool_choice="required").invoke("What is the weather in Oslo?")
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"
    city = llm.with_structured_output(City).invoke("Describe Rome.")
    assert isinstance(city, City)
