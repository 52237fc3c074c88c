"""Tool calling and structured output as an engine writes them: how tools and tool turns
are written into a prompt, the grammar that constrains a reply, and the parser that
turns the constrained reply back into tool calls as it streams.

A *tool format* is the text layout a model writes calls in. The grammar built here
(Lark syntax as llguidance reads it, with ``%json`` for JSON Schema parts) pins that
layout exactly: a call is always a known tool name with arguments valid against its
``parameters``, so the stream parser can rely on the layout instead of guessing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..types.chat import ChatMessage, ChatRequest, ToolCallDelta, ToolSpec

NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
CHOICES = ("none", "auto", "required")
# Which side of an ``auto`` reply a grammar allows: both (the model's own choice), calls only, or the answer only.
Branch = Literal["both", "calls", "answer"]

# How JSON is laid out under a grammar: one space after ':' and ',' like the JSON a
# model has mostly seen, and no other whitespace, so a small model cannot stall in an
# endless run of blanks or newlines between tokens.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _call_names(messages: list[ChatMessage]) -> dict[str, str]:
    return {call.id: call.name for message in messages for call in message.tool_calls}


# --- grammar pieces ----------------------------------------------------------------------


def _lark_string(text: str) -> str:
    return json.dumps(text)


def _lark_json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": JSON_LAYOUT})


def _regex_escape(text: str) -> str:
    # Not re.escape: llguidance reads Rust regex syntax, where "\<" and "\>" are word
    # boundaries, so only the characters that are operators there are escaped.
    return re.sub(r"([\\.+*?()|\[\]{}^$/&~#-])", r"\\\1", text)


def json_schema_grammar(schema: dict[str, Any]) -> str:
    return f"%llguidance {{}}\nstart: {_lark_json(schema)}\n"


# --- tool formats ------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolFormat:
    """A JSON tool-call layout: ``open`` + calls joined by ``separator`` + ``close``,
    each call ``{"name": "<tool>", "<arguments_key>": {...}}``."""

    name: str
    open: str
    separator: str | None  # None: one call per turn
    close: str
    arguments_key: str
    # Text that opens a call: a free-text reply may not contain it (under ``auto``),
    # so a reply that starts writing a call is held to the call grammar throughout.
    trigger: str
    # True: the chat template renders ``tools`` and tool turns itself, natively.
    native: bool = False

    @property
    def call_prefix(self) -> str:
        return self.open + '{"name": "'

    def write_calls(self, calls) -> str:
        body = [f'{{"name": "{c.name}", "{self.arguments_key}": {_compact(c.arguments)}}}' for c in calls]
        if self.separator is None:
            return "\n".join(self.open + b + self.close for b in body)
        return self.open + self.separator.join(body) + self.close

    def grammar(self, request: ChatRequest, branch: Branch = "both") -> str | None:
        """The Lark grammar a reply to ``request`` must match, or None for free text.

        Under ``auto`` a reply is calls or an answer; ``branch`` narrows that choice to
        one side once it is made outside the grammar (``tool_decision.py``)."""
        answer = _lark_json(request.json_schema) if request.json_schema is not None else None
        choice = request.tool_choice
        if choice == "none" or not request.tools:
            return json_schema_grammar(request.json_schema) if request.json_schema is not None else None
        tools = request.tools if choice in CHOICES else [t for t in request.tools if t.name == choice]
        lines = ["%llguidance {}"]
        if choice == "auto" and branch != "calls":
            if answer is None:
                # Free text that never contains the call trigger: a reply that starts
                # a call is held to the call grammar, so no half-call passes as text.
                answer = "TEXT"
                lines.append(f"TEXT: /(?s:.+)/ & ~/(?s:.*{_regex_escape(self.trigger)}.*)/")
            lines.append(f"start: calls | {answer}" if branch == "both" else f"start: {answer}")
            if branch == "answer":
                return "\n".join(lines) + "\n"
        else:
            lines.append("start: calls")
        repeat = f" ({_lark_string(self.separator)} call)*" if self.separator is not None else ""
        lines.append(f"calls: {_lark_string(self.open)} call{repeat} {_lark_string(self.close)}")
        lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(tools))))
        for i, tool in enumerate(tools):
            head = f'{{"name": "{tool.name}", "{self.arguments_key}": '
            lines.append(f"call_{i}: {_lark_string(head)} {_lark_json(tool.parameters or NO_PARAMETERS)} \"}}\"")
        return "\n".join(lines) + "\n"

    def stream_parser(self, request: ChatRequest) -> ToolStreamParser | None:
        if request.tool_choice == "none" or not request.tools:
            return None
        return ToolStreamParser(self, decided=request.tool_choice != "auto")


def _compact(arguments: str) -> str:
    return json.dumps(json.loads(arguments), ensure_ascii=False)


# Our own layout, for chat templates that do not render tools (SmolLM2's plain ChatML
# among them): one <tool_call> block holding a JSON list of calls, the layout of the
# function-calling data small instruct models such as SmolLM2 are tuned on.
OWN_FORMAT = ToolFormat(
    "own", open="<tool_call>[", separator=", ", close="]</tool_call>", arguments_key="arguments", trigger="<tool_call>"
)
# Llama 3.1-3.3 JSON tool calls, as their templates ask for them (one call per turn).
LLAMA3_JSON_FORMAT = ToolFormat(
    "llama3-json", open="", separator=None, close="", arguments_key="parameters", trigger='{"name": "', native=True
)


def format_for_template(template: str) -> ToolFormat:
    """Pick the tool format for a chat template: its own if it renders ``tools`` in a
    layout we can constrain, else ours."""
    renders_tools = re.search(r"\btools\b", template) is not None
    llama3 = "<|start_header_id|>" in template and "<|python_start|>" not in template
    if renders_tools and llama3:
        return LLAMA3_JSON_FORMAT
    # Llama 4 templates ask for pythonic calls, which a JSON Schema grammar cannot
    # express; they and unknown tool templates get our own prompt and layout.
    return OWN_FORMAT


# --- prompt rendering ----------------------------------------------------------------------

_OWN_INSTRUCTIONS = (
    'To call tools, reply with only <tool_call>[{"name": ..., "arguments": {...}}]</tool_call>. '
    "When the question needs a tool, call it. When a tool result is given, answer the user in plain text."
)
# A worked example in front of the conversation: a 135M model follows a demonstrated
# exchange far more reliably than a description of one. Its tool is not offered.
_DEMO = (
    ("user", "What time is it in Tokyo?"),
    ("assistant", '<tool_call>[{"name": "get_time", "arguments": {"city": "Tokyo"}}]</tool_call>'),
    ("user", "get_time returned: 10:42 PM"),
    ("assistant", "It is 10:42 PM in Tokyo."),
)


def render_messages(request: ChatRequest, fmt: ToolFormat) -> tuple[list[dict[str, Any]], list[dict] | None]:
    """The conversation as chat-template messages, plus the ``tools`` to hand the
    template (None when the format writes tools into the messages itself)."""
    offered = request.tools if request.tool_choice != "none" else []
    if fmt.native:
        tools = [_tool_dict(t) for t in offered] or None
        return [_native_message(m) for m in request.messages], tools
    names = _call_names(request.messages)
    messages: list[dict[str, Any]] = []
    previous_role = None
    for message in request.messages:
        if message.role == "tool":
            # Templates without tool support know no "tool" role: results go back as
            # a user turn, consecutive results together.
            line = f"{names.get(message.tool_call_id or '', 'the tool')} returned: {message.content}"
            if previous_role == "tool":
                messages[-1]["content"] += "\n" + line
            else:
                messages.append({"role": "user", "content": line})
        elif message.tool_calls:
            calls = fmt.write_calls(message.tool_calls)
            messages.append({"role": "assistant", "content": f"{message.content}\n{calls}" if message.content else calls})
        else:
            messages.append({"role": message.role, "content": message.content})
        previous_role = message.role
    if offered:
        tool_lines = "\n".join(json.dumps(_tool_dict(t)["function"]) for t in offered)
        system = f"You can call these tools:\n<tools>\n{tool_lines}\n</tools>\n" + _OWN_INSTRUCTIONS
        demo = [{"role": role, "content": content} for role, content in _DEMO]
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{system}"}
            messages[1:1] = demo
        else:
            messages[0:0] = [{"role": "system", "content": system}, *demo]
    return messages, None


def _tool_dict(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters or NO_PARAMETERS
    return {"type": "function", "function": function}


def _native_message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        # Llama templates serialize arguments with `| tojson`: they want objects.
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


# --- streaming parser ----------------------------------------------------------------------


@dataclass
class ToolStreamParser:
    """Turns a reply generated under ``ToolFormat.grammar`` into text and tool-call
    deltas as it streams: argument fragments go out as soon as they are generated.

    Hand-written because the input is partial JSON inside a fixed layout; the grammar
    guarantees the layout, so a tiny state machine suffices where a JSON parser would
    need the whole document first. A reply that breaks the layout can only come from
    an engine that did not apply the grammar, and raises ValueError.
    """

    fmt: ToolFormat
    decided: bool  # True: the reply is calls from the first byte (required / named)
    _buffer: str = ""
    _state: str = "undecided"
    _index: int = -1
    _name: str = ""
    _depth: int = 0
    _in_string: bool = False
    _escape: bool = False
    _out: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.decided:
            self._state = "prefix"

    def feed(self, text: str) -> list[str | ToolCallDelta]:
        self._buffer += text
        self._out = []
        self._run()
        return self._out

    def finish(self) -> list[str | ToolCallDelta]:
        """Flush at the end of generation (a reply cut short keeps what it had)."""
        self._out = []
        if self._state in ("undecided", "text") and self._buffer:
            self._out.append(self._buffer)
        self._buffer = ""
        return self._out

    def _run(self) -> None:
        while True:
            state = self._state
            if state == "undecided":
                trigger = self.fmt.trigger
                if self._buffer.startswith(trigger):
                    self._state = "prefix"
                elif trigger.startswith(self._buffer):
                    return  # might still become a call: hold it back
                else:
                    self._state = "text"
            elif state == "text":
                if self._buffer:
                    self._out.append(self._buffer)
                    self._buffer = ""
                return
            elif state == "prefix":
                if not self._expect(self.fmt.call_prefix):
                    return
                self._start_call()
            elif state == "name":
                end = self._buffer.find('"')
                if end < 0:
                    return
                self._name, self._buffer = self._buffer[:end], self._buffer[end:]
                self._out.append(ToolCallDelta(index=self._index, name=self._name))
                self._state = "arguments_key"
            elif state == "arguments_key":
                if not self._expect(f'", "{self.fmt.arguments_key}": '):
                    return
                self._state = "arguments"
            elif state == "arguments":
                if not self._scan_arguments():
                    return
                self._state = "call_end"
            elif state == "call_end":
                if not self._expect("}"):
                    return
                self._state = "between"
            elif state == "between":
                next_call = (self.fmt.separator or "\n" + self.fmt.open) + '{"name": "'
                close = self.fmt.close
                if close and self._buffer.startswith(close):
                    self._buffer = self._buffer[len(close) :]
                    self._state = "done"
                elif self._buffer.startswith(next_call):
                    self._buffer = self._buffer[len(next_call) :]
                    self._start_call()
                elif (close and close.startswith(self._buffer)) or next_call.startswith(self._buffer):
                    return
                else:
                    raise ValueError(f"tool call reply broke its layout at {self._buffer[:40]!r}")
            elif state == "done":
                if self._buffer.strip():
                    raise ValueError(f"text after the tool calls: {self._buffer[:40]!r}")
                self._buffer = ""
                return

    def _start_call(self) -> None:
        self._index += 1
        self._state = "name"

    def _expect(self, literal: str) -> bool:
        if len(self._buffer) < len(literal):
            if not literal.startswith(self._buffer):
                raise ValueError(f"tool call reply broke its layout: expected {literal!r}, got {self._buffer!r}")
            return False
        if not self._buffer.startswith(literal):
            raise ValueError(f"tool call reply broke its layout: expected {literal!r}, got {self._buffer[:40]!r}")
        self._buffer = self._buffer[len(literal) :]
        return True

    def _scan_arguments(self) -> bool:
        """Emit argument text up to the end of the arguments object; True once it closed."""
        for i, char in enumerate(self._buffer):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif char == "\\":
                    self._escape = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._out.append(ToolCallDelta(index=self._index, arguments=self._buffer[: i + 1]))
                    self._buffer = self._buffer[i + 1 :]
                    return True
        if self._buffer:
            self._out.append(ToolCallDelta(index=self._index, arguments=self._buffer))
            self._buffer = ""
        return False


@dataclass
class RepeatedCallCutter:
    """Ends a reply's list of tool calls at the first call identical (same name, same
    arguments) to an earlier call of the same reply: a small model caught in a loop
    repeats one call until its budget runs out, and no client wants the copies.

    Takes the ``ToolStreamParser``'s output. The first call streams as it comes; a later
    call is held only while it can still turn out a repeat (an earlier call has its name
    and begins with its arguments so far), and released as the deltas it was generated
    as once it diverges, so deltas keep their shape. Arguments compare as text: under
    the grammar, equal arguments are written identically.
    """

    repeated: bool = False  # a repeat was found: the caller stops generating
    _calls: list[tuple[str, str]] = field(default_factory=list)
    _name: str | None = None
    _arguments: str = ""
    _held: list[ToolCallDelta] = field(default_factory=list)

    def feed(self, pieces: list[str | ToolCallDelta]) -> list[str | ToolCallDelta]:
        out: list[str | ToolCallDelta] = []
        for piece in pieces:
            if self.repeated:
                break
            if not isinstance(piece, ToolCallDelta):
                out.append(piece)
                continue
            if piece.name is not None:  # a new call: the previous one is complete
                out.extend(self._close())
                if self.repeated:
                    break
                self._name, self._arguments = piece.name, ""
            self._arguments += piece.arguments
            if self._held or self._could_repeat():
                self._held.append(piece)
                if not self._could_repeat():
                    out.extend(self._held)
                    self._held = []
            else:
                out.append(piece)
        return out

    def finish(self) -> list[str | ToolCallDelta]:
        return [] if self.repeated else [*self._close()]

    def _could_repeat(self) -> bool:
        return any(name == self._name and arguments.startswith(self._arguments) for name, arguments in self._calls)

    def _close(self) -> list[ToolCallDelta]:
        held, self._held = self._held, []
        if self._name is None:
            return held
        call, self._name = (self._name, self._arguments), None
        if call in self._calls:
            self.repeated = True
            return []
        self._calls.append(call)
        return held
