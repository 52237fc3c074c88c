"""Tool and schema logic below the HTTP layer: request checks, the grammars (compiled by
llguidance against the bundled model's real vocabulary, read by llama-cpp-python, which
the test extra installs), the streaming call parser and prompt rendering."""

from __future__ import annotations

import json

import llama_cpp
import pytest

from llamahost.chat.tools import check_request
from llamahost.config import BUNDLED_AUTO_TOOL_THRESHOLD, ModelConfig
from llamahost.engines.grammar import check_grammar
from llamahost.engines.llamacpp import bundled_model_path
from llamahost.engines.schema import check_schema
from llamahost.engines.tool_format import (
    LLAMA3_JSON_FORMAT,
    OWN_FORMAT,
    RepeatedCallCutter,
    ToolStreamParser,
    format_for_template,
    render_messages,
)
from llamahost.engines.tool_decision import opening_probability, probe_body, tool_decision
from llamahost.errors import InvalidRequest
from llamahost.types.chat import ChatMessage, ChatRequest, ToolCall, ToolCallDelta, ToolSpec

WEATHER = ToolSpec(
    "get_weather",
    "Get the weather",
    {"type": "object", "properties": {"location": {"type": "string"}, "days": {"type": "integer"}}, "required": ["location"]},
)
TIME = ToolSpec("get_time", None, None)


def request(**kw) -> ChatRequest:
    kw.setdefault("messages", [ChatMessage("user", "hi")])
    return ChatRequest(model="m", **kw)


def checked(**kw) -> ChatRequest:
    req = request(**kw)
    check_request(req)  # as the chat service does: tool_choice defaults to auto with tools
    return req


def error_of(req: ChatRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check_request(req)
    return info.value


# --- schema subset ---------------------------------------------------------------------


def test_schema_tightens_open_objects_and_keeps_the_original():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}}
    out = check_schema(schema, "p")
    assert out["additionalProperties"] is False and out["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in schema
    assert check_schema({"type": "object"}, "p") == {"type": "object"}  # a free-form object stays free


@pytest.mark.parametrize(
    ("schema", "param"),
    [
        ({"type": "array", "uniqueItems": True}, "p.uniqueItems"),
        ({"type": "object", "properties": {"a": {"type": "string", "foo": 1}}}, "p.properties.a.foo"),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "p.oneOf"),
        ({"type": "integer", "multipleOf": 5}, "p.multipleOf"),
        ({"anyOf": [{"type": "string"}, {"not": {"type": "null"}}]}, "p.anyOf[1].not"),
        ({"type": "string", "format": "idn-email"}, "p.format"),
        ({"$ref": "https://example.com/s.json"}, "p.$ref"),
        ({"$ref": "#/$defs/Missing", "$defs": {}}, "p.$ref"),
        ({"type": "object", "properties": {"a": {"type": 5}}}, "p.properties.a.type"),
        ({"type": "object", "required": "a"}, "p.required"),
        ({"$defs": {"A": {"type": "string", "if": {}}}, "$ref": "#/$defs/A"}, "p.$defs.A.if"),
    ],
)
def test_schema_outside_the_subset_is_refused_naming_the_keyword(schema, param):
    with pytest.raises(InvalidRequest) as info:
        check_schema(schema, "p")
    assert info.value.param == param, info.value.message


def test_pydantic_schemas_are_in_the_subset():
    from typing import Literal

    from pydantic import BaseModel, Field

    class Address(BaseModel):
        street: str
        zip: str = Field(pattern=r"^[0-9]{5}$", description="5 digits")

    class Person(BaseModel):
        name: str = Field(min_length=1, max_length=20)
        age: int = Field(ge=0, le=130)
        kind: Literal["a", "b"] = "a"
        home: Address
        past: list[Address] = Field(default_factory=list, max_length=3)
        nick: str | None = None

    check_schema(Person.model_json_schema(), "p")


# --- request checks ----------------------------------------------------------------------


def test_tool_checks_name_the_field():
    assert error_of(request(tools=[ToolSpec("bad name", None, None)])).param == "tools[0].function.name"
    assert error_of(request(tools=[ToolSpec("x" * 65, None, None)])).param == "tools[0].function.name"
    assert error_of(request(tools=[TIME, TIME])).param == "tools[1].function.name"
    assert error_of(request(tools=[ToolSpec("f", None, {"type": "string"})])).param == "tools[0].function.parameters"
    bad_keyword = ToolSpec("f", None, {"type": "object", "properties": {"a": {"type": "string", "pattern": "a", "x": 1}}})
    assert error_of(request(tools=[bad_keyword])).param == "tools[0].function.parameters.properties.a.x"
    assert error_of(request(tools=[TIME], tool_choice="nope")).param == "tool_choice"
    assert error_of(request(tool_choice="required")).param == "tool_choice"
    assert error_of(request(tools=[TIME], tool_choice="required", stop=["x"])).param == "stop"


def test_tool_choice_defaults_and_parameterless_tools():
    req = request(tools=[TIME])
    check_request(req)
    assert req.tool_choice == "auto"
    assert req.tools[0].parameters == {"type": "object", "properties": {}, "additionalProperties": False}
    req = request()
    check_request(req)
    assert req.tool_choice == "none"


def test_history_tool_call_ids_must_match_an_earlier_call():
    call = ToolCall("call_1", "get_time", "{}")
    good = [ChatMessage("user", "t?"), ChatMessage("assistant", tool_calls=(call,)), ChatMessage("tool", "noon", tool_call_id="call_1")]
    check_request(request(messages=good, tools=[TIME]))
    orphan = [ChatMessage("user", "t?"), ChatMessage("tool", "noon", tool_call_id="call_1")]
    assert error_of(request(messages=orphan)).param == "messages[1].tool_call_id"
    wrong = [*good[:2], ChatMessage("tool", "noon", tool_call_id="call_2")]
    assert error_of(request(messages=wrong)).param == "messages[2].tool_call_id"
    broken = [ChatMessage("assistant", tool_calls=(ToolCall("c", "f", "{nope"),))]
    assert error_of(request(messages=broken)).param == "messages[0].tool_calls[0].function.arguments"


# --- grammars, against the real vocabulary ------------------------------------------------


@pytest.fixture(scope="module")
def compiler():
    import warnings

    import llguidance.llamacpp

    llm = llama_cpp.Llama(model_path=str(bundled_model_path()), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    n_vocab = llm.n_vocab()
    eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(vocab, n_vocab=n_vocab, eos_token=eog)
    yield tokenizer, llm


def accepts(compiler, req: ChatRequest, text: str, fmt=OWN_FORMAT, branch="both") -> bool:
    from llguidance import LLMatcher

    tokenizer, llm = compiler
    check_request(req)
    grammar = fmt.grammar(req, branch)
    check_grammar(grammar, "tools")
    matcher = LLMatcher(tokenizer, LLMatcher.grammar_from_lark(grammar), log_level=0)
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
    return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()


def test_required_grammar_allows_only_known_tools_with_valid_arguments(compiler):
    def req():
        return request(tools=[WEATHER, TIME], tool_choice="required")

    ok = '<tool_call>[{"name": "get_weather", "arguments": {"location": "Oslo", "days": 2}}]</tool_call>'
    assert accepts(compiler, req(), ok)
    two = '<tool_call>[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"location": "X"}}]</tool_call>'
    assert accepts(compiler, req(), two)
    assert not accepts(compiler, req(), '<tool_call>[{"name": "get_wether", "arguments": {}}]</tool_call>')
    assert not accepts(compiler, req(), '<tool_call>[{"name": "get_weather", "arguments": {"days": 2}}]</tool_call>')
    assert not accepts(compiler, req(), '<tool_call>[{"name": "get_weather", "arguments": {"location": 1}}]</tool_call>')
    assert not accepts(compiler, req(), "Sure!")


def test_named_and_auto_grammars(compiler):
    named = '<tool_call>[{"name": "get_time", "arguments": {}}]</tool_call>'
    assert accepts(compiler, request(tools=[WEATHER, TIME], tool_choice="get_time"), named)
    weather = '<tool_call>[{"name": "get_weather", "arguments": {"location": "X"}}]</tool_call>'
    assert not accepts(compiler, request(tools=[WEATHER, TIME], tool_choice="get_time"), weather)
    assert accepts(compiler, request(tools=[WEATHER, TIME]), "It is sunny.")
    assert accepts(compiler, request(tools=[WEATHER, TIME]), weather)
    # A reply that starts a call is held to the call grammar: no half-calls as text.
    assert not accepts(compiler, request(tools=[WEATHER, TIME]), '<tool_call>[{"name": {"x": 1}}]')
    assert not accepts(compiler, request(tools=[WEATHER, TIME]), "Calling <tool_call> now")


def test_auto_with_json_schema_answers_in_the_schema_or_calls(compiler):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    assert accepts(compiler, request(tools=[TIME], json_schema=schema), '{"answer": "noon"}')
    assert not accepts(compiler, request(tools=[TIME], json_schema=schema), "noon")
    assert accepts(compiler, request(tools=[TIME], json_schema=schema), '<tool_call>[{"name": "get_time", "arguments": {}}]</tool_call>')


def test_auto_branches_once_decided(compiler):
    # After the auto decision (tool_decision.py) the reply is held to one side.
    weather = '<tool_call>[{"name": "get_weather", "arguments": {"location": "X"}}]</tool_call>'
    auto = request(tools=[WEATHER, TIME])
    assert accepts(compiler, auto, weather, branch="calls")
    assert not accepts(compiler, auto, "It is sunny.", branch="calls")
    assert accepts(compiler, auto, "It is sunny.", branch="answer")
    assert not accepts(compiler, auto, weather, branch="answer")
    assert not accepts(compiler, auto, "Calling <tool_call> now", branch="answer")
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    with_schema = request(tools=[TIME], json_schema=schema)
    assert accepts(compiler, with_schema, '{"answer": "noon"}', branch="answer")
    assert not accepts(compiler, with_schema, '<tool_call>[{"name": "get_time", "arguments": {}}]</tool_call>', branch="answer")
    # Outside auto the branch changes nothing.
    required = request(tools=[WEATHER], tool_choice="required")
    assert OWN_FORMAT.grammar(required, "answer") == OWN_FORMAT.grammar(required)


def test_auto_decision_reads_the_openings_first_token():
    opening = OWN_FORMAT.call_prefix
    top = [("Yes", 0.3), ("<", 0.09), ("<tool", 0.01), ("<tool_call>[{\"name\": \"get", 0.02), ("<b>", 0.2), ("", 0.1)]
    # Tokens that start the opening or span all of it count; "<b>" starts something else.
    assert opening_probability(top, opening) == pytest.approx(0.12)
    config = ModelConfig(id="m", auto_tool_threshold=0.1)
    decision = tool_decision(checked(tools=[WEATHER]), OWN_FORMAT, config)
    assert decision is not None and decision.opening == opening
    assert decision.grammar_for(0.12) == decision.calls_grammar and decision.grammar_for(0.1) == decision.answer_grammar
    # Only auto with tools is decided, and not where the model's threshold is "off".
    assert tool_decision(checked(tools=[WEATHER], tool_choice="required"), OWN_FORMAT, config) is None
    assert tool_decision(checked(), OWN_FORMAT, config) is None
    assert tool_decision(checked(tools=[WEATHER]), OWN_FORMAT, ModelConfig(id="m", auto_tool_threshold="off")) is None
    # Llama 3 calls open with "{" like a JSON answer does: the first token tells nothing.
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert tool_decision(checked(tools=[WEATHER], json_schema=schema), LLAMA3_JSON_FORMAT, config) is None
    assert tool_decision(checked(tools=[WEATHER], json_schema=schema), OWN_FORMAT, config) is not None


def test_probe_is_one_greedy_unconstrained_step_on_the_same_prompt():
    body = {"prompt": [1, 2, 3], "max_tokens": 300, "temperature": 0.6, "grammar": "x", "cache_prompt": True, "stream_options": {}}
    probe = probe_body(body)
    assert probe["prompt"] == [1, 2, 3] and probe["cache_prompt"] is True  # the reply reuses its prefix
    assert probe["max_tokens"] == 1 and probe["temperature"] == 0.0 and probe["n_probs"] > 0
    assert "grammar" not in probe  # the model's own distribution, not the grammar's


def test_auto_tool_threshold_config():
    assert ModelConfig(id="m").resolved_auto_tool_threshold == BUNDLED_AUTO_TOOL_THRESHOLD
    assert ModelConfig(id="m", path="/models/other.gguf").resolved_auto_tool_threshold is None  # calibrated per model
    assert ModelConfig(id="m", auto_tool_threshold=0.3).resolved_auto_tool_threshold == 0.3
    assert ModelConfig(id="m", auto_tool_threshold="off").resolved_auto_tool_threshold is None
    with pytest.raises(ValueError, match="auto_tool_threshold"):
        ModelConfig(id="m", auto_tool_threshold=1.5)
    with pytest.raises(ValueError, match="auto_tool_threshold"):
        ModelConfig(id="m", engine="openai", replicas=["http://x/v1"], auto_tool_threshold=0.2)


def test_llama3_json_grammar(compiler):
    ok = '{"name": "get_weather", "parameters": {"location": "Oslo"}}'
    assert accepts(compiler, request(tools=[WEATHER], tool_choice="required"), ok, LLAMA3_JSON_FORMAT)
    assert not accepts(compiler, request(tools=[WEATHER], tool_choice="required"), '{"name": "x", "parameters": {}}', LLAMA3_JSON_FORMAT)


def test_schema_llguidance_cannot_enforce_is_a_400():
    req = request(json_schema={"type": "string", "pattern": "(?=a)b"})
    check_request(req)
    with pytest.raises(InvalidRequest) as info:
        check_grammar(OWN_FORMAT.grammar(req), "response_format")
    assert info.value.param == "response_format" and "look-around" in info.value.message


# --- streaming parser ----------------------------------------------------------------------


def feed_chunks(parser: ToolStreamParser, text: str, size: int) -> list:
    out = []
    for i in range(0, len(text), size):
        out += parser.feed(text[i : i + size])
    return out + parser.finish()


def merge(events: list) -> tuple[str, list[tuple[str, str]]]:
    text = "".join(e for e in events if isinstance(e, str))
    calls: list[list[str]] = []
    for e in events:
        if isinstance(e, ToolCallDelta):
            if e.name is not None:
                assert e.index == len(calls)
                calls.append([e.name, ""])
            calls[e.index][1] += e.arguments
    return text, [(n, a) for n, a in calls]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_parser_streams_several_calls_in_any_chunking(size):
    args1 = '{"q": "a \\"}\\" b", "n": [1, {"x": []}]}'
    text = f'<tool_call>[{{"name": "search", "arguments": {args1}}}, {{"name": "get_time", "arguments": {{}}}}]</tool_call>'
    events = feed_chunks(ToolStreamParser(OWN_FORMAT, decided=False), text, size)
    assert merge(events) == ("", [("search", args1), ("get_time", "{}")])
    assert json.loads(args1)


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_parser_passes_text_through_under_auto(size):
    events = feed_chunks(ToolStreamParser(OWN_FORMAT, decided=False), "<tool is a word> here", size)
    assert merge(events) == ("<tool is a word> here", [])
    assert merge(feed_chunks(ToolStreamParser(OWN_FORMAT, decided=False), "<tool_c", size)) == ("<tool_c", [])


def test_parser_llama3_layout_and_broken_layout():
    text = '{"name": "f", "parameters": {"a": 1}}'
    assert merge(feed_chunks(ToolStreamParser(LLAMA3_JSON_FORMAT, decided=True), text, 2)) == ("", [("f", '{"a": 1}')])
    with pytest.raises(ValueError):
        ToolStreamParser(OWN_FORMAT, decided=True).feed('<tool_call>[{"nome": ')


# --- prompt rendering --------------------------------------------------------------------


def test_own_format_renders_tools_calls_and_results():
    call = ToolCall("call_1", "get_weather", '{"location":"Oslo"}')
    req = request(
        messages=[
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Weather in Oslo?"),
            ChatMessage("assistant", tool_calls=(call,)),
            ChatMessage("tool", "sunny", tool_call_id="call_1"),
        ],
        tools=[WEATHER],
    )
    check_request(req)
    messages, tools = render_messages(req, OWN_FORMAT)
    assert tools is None
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("Be brief.\n\n")
    assert '"name": "get_weather"' in messages[0]["content"]
    assert messages[-2] == {
        "role": "assistant",
        "content": '<tool_call>[{"name": "get_weather", "arguments": {"location": "Oslo"}}]</tool_call>',
    }
    assert messages[-1] == {"role": "user", "content": "get_weather returned: sunny"}
    req.tool_choice = "none"  # no tools offered, the history still renders
    messages, _ = render_messages(req, OWN_FORMAT)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[-1] == {"role": "user", "content": "get_weather returned: sunny"}


def test_template_detection():
    smol = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']}}{% endfor %}"
    assert format_for_template(smol) is OWN_FORMAT
    llama3 = "{% if tools %}{{ tools | tojson }}{% endif %}<|start_header_id|>{{ '<|python_tag|>' }}"
    assert format_for_template(llama3) is LLAMA3_JSON_FORMAT
    llama4 = "{% if tools %}{% endif %}<|header_start|><|python_start|>"
    assert format_for_template(llama4) is OWN_FORMAT


def test_llama3_format_hands_tools_to_the_template():
    call = ToolCall("c1", "get_weather", '{"location": "Oslo"}')
    req = request(
        messages=[ChatMessage("user", "w?"), ChatMessage("assistant", tool_calls=(call,)), ChatMessage("tool", "sunny", tool_call_id="c1")],
        tools=[WEATHER],
    )
    check_request(req)
    messages, tools = render_messages(req, LLAMA3_JSON_FORMAT)
    assert tools[0]["function"]["name"] == "get_weather"
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"location": "Oslo"}
    assert messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}


# --- a repeated call ends the list --------------------------------------------------------


def assemble(pieces) -> list[tuple[str, str]]:
    calls: dict[int, list[str]] = {}
    for piece in pieces:
        if isinstance(piece, ToolCallDelta):
            call = calls.setdefault(piece.index, [piece.name or "", ""])
            call[1] += piece.arguments
    return [(name, arguments) for name, arguments in (calls[i] for i in sorted(calls))]


def cut(reply: str, size: int) -> tuple[list, RepeatedCallCutter]:
    parser, cutter = ToolStreamParser(OWN_FORMAT, decided=True), RepeatedCallCutter()
    pieces: list = []
    for i in range(0, len(reply), size):
        if cutter.repeated:
            break  # the engine stops generating here
        pieces += cutter.feed(parser.feed(reply[i : i + size]))
    if not cutter.repeated:
        pieces += cutter.feed(parser.finish()) + cutter.finish()
    return pieces, cutter


OSLO = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
BERGEN = '{"name": "get_weather", "arguments": {"city": "Bergen"}}'
CLOCK = '{"name": "get_time", "arguments": {}}'


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_a_repeated_call_ends_the_list_of_calls(size):
    pieces, cutter = cut(f"<tool_call>[{OSLO}, {BERGEN}, {OSLO}, {CLOCK}]</tool_call>", size)
    assert cutter.repeated
    assert assemble(pieces) == [("get_weather", '{"city": "Oslo"}'), ("get_weather", '{"city": "Bergen"}')]
    # Nothing of the repeat, nor of what followed it, went out.
    assert max(p.index for p in pieces if isinstance(p, ToolCallDelta)) == 1
    # The repeat as the last call: cut when the reply ends.
    pieces, cutter = cut(f"<tool_call>[{CLOCK}, {CLOCK}]</tool_call>", size)
    assert cutter.repeated and assemble(pieces) == [("get_time", "{}")]


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_distinct_calls_stream_with_their_deltas_unchanged(size):
    reply = f"<tool_call>[{OSLO}, {CLOCK}, {BERGEN}]</tool_call>"
    pieces, cutter = cut(reply, size)
    parser = ToolStreamParser(OWN_FORMAT, decided=True)
    plain = [p for i in range(0, len(reply), size) for p in parser.feed(reply[i : i + size])] + parser.finish()
    assert not cutter.repeated and pieces == plain and len(assemble(pieces)) == 3
