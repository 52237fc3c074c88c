"""The Llama 3.x / 4 tool-call parsers (chat/toolparse.py), on the texts those models write."""

from __future__ import annotations

import json

from llamahost.engines.toolparse import (
    parse_json_calls,
    parse_llama_reply,
    parse_python_start,
    parse_python_tag,
    parse_pythonic_calls,
)


def calls_of(parsed):
    return [(c.name, json.loads(c.arguments)) for c in parsed]


def test_llama3_json_call():
    reply = parse_llama_reply('{"name": "get_weather", "parameters": {"location": "Paris", "days": 2}}')
    assert reply.content == ""
    assert calls_of(reply.tool_calls) == [("get_weather", {"location": "Paris", "days": 2})]
    assert reply.tool_calls[0].id.startswith("call_")


def test_llama3_json_after_python_tag_with_several_calls():
    text = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "arguments": {}}<|eom_id|>'
    reply = parse_python_tag(text)
    assert reply is not None
    assert calls_of(reply.tool_calls) == [("a", {"x": 1}), ("b", {})]
    ids = {c.id for c in reply.tool_calls}
    assert len(ids) == 2  # fresh id per call


def test_json_calls_accept_double_encoded_arguments_and_refuse_non_calls():
    assert calls_of(parse_json_calls('{"name": "f", "parameters": "{\\"q\\": \\"x\\"}"}')) == [("f", {"q": "x"})]
    assert parse_json_calls('{"title": "not a call"}') is None
    assert parse_json_calls('{"name": "f", "parameters": [1]}') is None
    assert parse_json_calls("not json") is None


def test_llama31_builtin_and_code_interpreter():
    reply = parse_python_tag('<|python_tag|>brave_search.call(query="llama 4 release")')
    assert calls_of(reply.tool_calls) == [("brave_search", {"query": "llama 4 release"})]
    reply = parse_python_tag("Let me compute.<|python_tag|>print(2 + 2)")
    assert reply.content == "Let me compute."
    assert calls_of(reply.tool_calls) == [("code_interpreter", {"code": "print(2 + 2)"})]


def test_pythonic_list():
    calls = parse_pythonic_calls('[get_weather(location="San Francisco, CA", unit="celsius"), get_time(tz=None, ok=True)]')
    assert calls_of(calls) == [
        ("get_weather", {"location": "San Francisco, CA", "unit": "celsius"}),
        ("get_time", {"tz": None, "ok": True}),
    ]
    assert calls_of(parse_pythonic_calls("[f(a=[1, 2], b={'k': 1.5})]")) == [("f", {"a": [1, 2], "b": {"k": 1.5}})]


def test_pythonic_refuses_anything_but_literal_keyword_calls():
    assert parse_pythonic_calls("[f(1)]") is None  # positional
    assert parse_pythonic_calls("[f(a=os.system('x'))]") is None  # not a literal: never evaluated
    assert parse_pythonic_calls("[f(**kw)]") is None
    assert parse_pythonic_calls("[1, 2]") is None
    assert parse_pythonic_calls("[f(a=1)") is None


def test_llama4_python_start():
    reply = parse_python_start('Checking.<|python_start|>[get_weather(location="Oslo")]<|python_end|>')
    assert reply.content == "Checking."
    assert calls_of(reply.tool_calls) == [("get_weather", {"location": "Oslo"})]
    reply = parse_llama_reply('<|python_start|>{"name": "f", "parameters": {"a": 1}}<|python_end|>')
    assert calls_of(reply.tool_calls) == [("f", {"a": 1})]


def test_bare_pythonic_list_reply_and_plain_text():
    assert calls_of(parse_llama_reply('[lookup(term="x")]').tool_calls) == [("lookup", {"term": "x"})]
    plain = parse_llama_reply("The answer is [not a call].")
    assert plain.tool_calls == [] and plain.content == "The answer is [not a call]."
    assert parse_llama_reply("{not json at all").tool_calls == []
