"""Structured output through the official SDK against a live server: the SDK's own
example (examples/structured.py in llama-api-python), and a property test over random
schemas in the supported subset whose every output must validate."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_api_client import LlamaAPIClient
from pydantic import BaseModel, Field

MODEL = "Llama-4-Maverick-17B-128E-Instruct-FP8"


class Address(BaseModel):
    street: str
    city: str
    state: str
    zip: str


ADDRESS_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Summarize the address in a JSON object."},
    {"role": "user", "content": "123 Main St, Anytown, USA"},
]
ADDRESS_FORMAT = {"type": "json_schema", "json_schema": {"name": "Address", "schema": Address.model_json_schema()}}


@pytest.fixture
def client(server):
    return LlamaAPIClient(api_key=server.key, base_url=server.base_url, max_retries=0)


def test_sdk_structured_example_non_streaming(client):
    response = client.chat.completions.create(
        model=MODEL, messages=ADDRESS_MESSAGES, temperature=0.1, response_format=ADDRESS_FORMAT
    )
    assert response.completion_message.stop_reason == "stop"
    address = Address.model_validate_json(response.completion_message.content.text)
    assert address.street


def test_sdk_structured_example_streaming(client):
    maybe_json = ""
    for chunk in client.chat.completions.create(
        model=MODEL, messages=ADDRESS_MESSAGES, temperature=0.1, response_format=ADDRESS_FORMAT, stream=True
    ):
        maybe_json += chunk.event.delta.text
    address = Address.model_validate_json(maybe_json)
    assert address.city


def test_nested_pydantic_model_with_refs_and_bounds(client):
    class Item(BaseModel):
        name: str
        quantity: int

    class Order(BaseModel):
        id: int
        items: list[Item]
        note: str | None = None

    schema = Order.model_json_schema()
    assert "$defs" in schema
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Order 7: two apples and one pear."}],
        response_format={"type": "json_schema", "json_schema": {"name": "Order", "schema": schema}},
        max_completion_tokens=96,
        temperature=0,
    )
    if response.completion_message.stop_reason == "stop":
        Order.model_validate_json(response.completion_message.content.text)


# --- property test -------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "id", "name", "tags", "value"])
SHORT = st.text(alphabet="abcxyz -", min_size=1, max_size=6)


@st.composite
def string_schemas(draw):
    schema: dict = {"type": "string"}
    kind = draw(st.sampled_from(["plain", "bounded", "bounded", "enum", "format", "pattern"]))
    if kind == "bounded":
        low = draw(st.integers(0, 3))
        schema.update(minLength=low, maxLength=low + draw(st.integers(0, 10)))
    elif kind == "enum":
        schema["enum"] = draw(st.lists(SHORT, min_size=1, max_size=4, unique=True))
    elif kind == "format":
        schema["format"] = draw(st.sampled_from(["date", "time", "email", "uuid", "ipv4"]))
    elif kind == "pattern":
        schema["pattern"] = draw(st.sampled_from(["^[a-z]{2,5}$", "^[0-9]{3}-[0-9]{4}$", "^(yes|no)$"]))
    return schema


@st.composite
def number_schemas(draw):
    low = draw(st.integers(-50, 50))
    width = draw(st.integers(10, 200))
    if draw(st.booleans()):
        return {"type": "integer", "minimum": low, "maximum": low + width}
    schema = {"type": "number", "maximum": low + width}
    schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    return schema


LEAVES = st.one_of(
    string_schemas(),
    number_schemas(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(st.one_of(SHORT, st.integers(-9, 9), st.booleans(), st.none()), min_size=1, max_size=4, unique=True).map(
        lambda values: {"enum": values}
    ),
    st.one_of(SHORT, st.integers(-9, 9)).map(lambda value: {"const": value}),
    st.sampled_from(["string", "integer", "boolean"]).map(lambda t: {"type": [t, "null"]}),
)


@st.composite
def objects(draw, children):
    properties = draw(st.dictionaries(KEYS, children, min_size=1, max_size=3))
    required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True))
    return {"type": "object", "properties": properties, "required": required}


@st.composite
def arrays(draw, children):
    low = draw(st.integers(0, 2))
    return {"type": "array", "items": draw(children), "minItems": low, "maxItems": low + draw(st.integers(0, 2))}


SCHEMAS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        objects(children),
        arrays(children),
        st.lists(children, min_size=2, max_size=3).map(lambda options: {"anyOf": options}),
    ),
    max_leaves=4,
)


@st.composite
def root_schemas(draw):
    """Mostly objects, as structured output is used; some with pydantic-style $defs."""
    shape = draw(st.sampled_from(["object", "any", "defs"]))
    if shape == "object":
        return draw(objects(SCHEMAS))
    if shape == "any":
        return draw(SCHEMAS)
    shared = draw(objects(SCHEMAS))
    return {
        "type": "object",
        "properties": {"first": {"$ref": "#/$defs/Shared"}, "more": {"type": "array", "items": {"$ref": "#/$defs/Shared"}, "maxItems": 1}},
        "required": ["first", "more"],
        "$defs": {"Shared": shared},
    }


def test_random_schemas_always_validate(client):
    """200 random schemas in the supported subset, each decoded under its grammar with a
    short budget: every completed output validates. A generation that runs out of
    budget (stop_reason "length") cannot be complete JSON; those are counted and must
    stay rare, which the bounded strings/arrays of the generated schemas ensure."""
    outcomes: list[str] = []

    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(schema=root_schemas(), stream=st.booleans())
    def check(schema, stream):
        kwargs = dict(
            model=MODEL,
            messages=[{"role": "user", "content": "Give an example."}],
            max_completion_tokens=64,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
        if stream:
            text, stop_reason = "", None
            for chunk in client.chat.completions.create(stream=True, **kwargs):
                text += chunk.event.delta.text
                stop_reason = chunk.event.stop_reason or stop_reason
        else:
            message = client.chat.completions.create(**kwargs).completion_message
            text, stop_reason = message.content.text, message.stop_reason
        if stop_reason == "length":
            outcomes.append("length")
            return
        assert stop_reason == "stop"
        validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        validator.validate(json.loads(text))
        outcomes.append("valid")

    check()
    assert len(outcomes) == 200
    assert outcomes.count("length") <= 40, f"{outcomes.count('length')} of 200 ran out of budget"


# --- closing within budget at temperature 0 (the bundled model's sampling defaults) ----------


class Joke(BaseModel):
    setup: str = Field(description="The setup of the joke")
    punchline: str = Field(description="The punchline")


class Recipe(BaseModel):
    dish: str
    ingredients: list[str]


# Greedy replies that, without the bundled model's DRY default, repeat one sentence or one
# list item inside a JSON string until max_tokens 512 runs out (bench/structured.py --close
# measures the same on 50 pairs).
CLOSING = [
    (Joke, "Tell me a joke about cats."),
    (Recipe, "Give me a recipe for pancakes."),
    (Recipe, "How do I make a salad?"),
]


def structured(url: str, key: str, schema: type[BaseModel], prompt: str):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=url + "/compat/v1", api_key=key, model=MODEL, temperature=0, max_tokens=512, max_retries=0)
    return llm.with_structured_output(schema, include_raw=True).invoke(prompt)


@pytest.mark.parametrize(("schema", "prompt"), CLOSING)
def test_langchain_structured_output_closes_within_budget(server, schema, prompt):
    result = structured(server.url, server.key, schema, prompt)
    assert result["raw"].response_metadata["finish_reason"] == "stop"
    assert result["parsing_error"] is None and isinstance(result["parsed"], schema)


def test_sampling_defaults_are_the_models_and_overridable(server_factory):
    # The same request on a server whose config turns the bundled model's DRY default off:
    # the greedy reply repeats a list item until the budget ends, and the JSON is cut.
    off = server_factory('[[models]]\nid = "SmolLM2-135M-Instruct"\naliases = ["' + MODEL + '"]\nsampling = { dry_multiplier = 0.0 }\n')
    schema = {**Recipe.model_json_schema(), "additionalProperties": False}
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": "Give me a recipe for pancakes."}], "temperature": 0, "max_tokens": 512,
        "response_format": {"type": "json_schema", "json_schema": {"name": "Recipe", "strict": True, "schema": schema}},
    }
    response = httpx.post(off.url + "/compat/v1/chat/completions", json=body, headers=off.headers(), timeout=600)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "length"
