"""Parsers for the tool-call formats Llama 3.x and 4 models write on their own, for
engines that hand back raw model text (no constrained decoding):

- Llama 3.1-3.3 JSON: ``{"name": "f", "parameters": {...}}``, optionally after
  ``<|python_tag|>``, several separated by ``;`` or newlines;
- Llama 3.1 built-in tools: ``<|python_tag|>brave_search.call(query="...")``, and raw
  code after ``<|python_tag|>`` (the ``code_interpreter`` tool);
- pythonic lists (Llama 3.2+, Llama 4): ``[f(a=1, b="x"), g()]``;
- Llama 4 tags: ``<|python_start|>...<|python_end|>`` around either of the above.

Each returns the text before the calls and the calls, with fresh ids and arguments as
a JSON string, or None when the text holds no call in that format. Pythonic calls are
read with ``ast`` (literals only, nothing is evaluated).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass

from ..types.chat import ToolCall, new_call_id

PYTHON_TAG = "<|python_tag|>"
PYTHON_START = "<|python_start|>"
PYTHON_END = "<|python_end|>"
EOM = "<|eom_id|>"


@dataclass(frozen=True)
class ParsedReply:
    content: str
    tool_calls: list[ToolCall]


def _call(name: str, arguments: dict) -> ToolCall:
    return ToolCall(id=new_call_id(), name=name, arguments=json.dumps(arguments, ensure_ascii=False))


def parse_json_calls(text: str) -> list[ToolCall] | None:
    """One or more JSON call objects, separated by ';', newlines or nothing."""
    decoder = json.JSONDecoder()
    calls = []
    rest = text.strip()
    while rest:
        try:
            obj, end = decoder.raw_decode(rest)
        except ValueError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        arguments = obj.get("parameters", obj.get("arguments", {}))
        if isinstance(arguments, str):  # some fine-tunes double-encode
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append(_call(obj["name"], arguments))
        rest = rest[end:].lstrip().lstrip(";").lstrip()
    return calls or None


def parse_pythonic_calls(text: str) -> list[ToolCall] | None:
    """``[f(a=1), g(b="x")]`` (a bare ``f(a=1)`` is accepted too)."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError):
        return None
    items = tree.elts if isinstance(tree, ast.List) else [tree]
    calls = []
    for item in items:
        if not isinstance(item, ast.Call) or item.args:
            return None
        name = _dotted_name(item.func)
        if name is None:
            return None
        try:
            arguments = {kw.arg: ast.literal_eval(kw.value) for kw in item.keywords if kw.arg is not None}
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return None
        if len(arguments) != len(item.keywords):
            return None  # **kwargs
        calls.append(_call(name, arguments))
    return calls or None


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    # Llama 3.1 built-ins are written `brave_search.call(...)`: the tool is the object.
    if isinstance(node, ast.Attribute) and node.attr == "call" and isinstance(node.value, ast.Name):
        return node.value.id
    return None


def parse_python_tag(text: str) -> ParsedReply | None:
    """Llama 3.1: ``<|python_tag|>`` then JSON calls, a built-in ``tool.call(...)``,
    or code for ``code_interpreter``."""
    if PYTHON_TAG not in text:
        return None
    content, _, body = text.partition(PYTHON_TAG)
    body = body.replace(EOM, "").strip()
    calls = parse_json_calls(body) or parse_pythonic_calls(body)
    if calls is None:
        calls = [_call("code_interpreter", {"code": body})]
    return ParsedReply(content.strip(), calls)


def parse_python_start(text: str) -> ParsedReply | None:
    """Llama 4: ``<|python_start|>[f(a=1)]<|python_end|>`` (pythonic or JSON inside)."""
    if PYTHON_START not in text:
        return None
    content, _, rest = text.partition(PYTHON_START)
    body, _, _ = rest.partition(PYTHON_END)
    calls = parse_pythonic_calls(body) or parse_json_calls(body)
    return ParsedReply(content.strip(), calls) if calls else None


def parse_llama_reply(text: str) -> ParsedReply:
    """Whatever Llama 3.x/4 format ``text`` uses; plain text gives no calls."""
    for parse in (parse_python_start, parse_python_tag):
        parsed = parse(text)
        if parsed is not None:
            return parsed
    stripped = text.strip()
    if stripped.startswith("{"):
        calls = parse_json_calls(stripped)
        if calls:
            return ParsedReply("", calls)
    if stripped.startswith("[") and stripped.endswith(")]"):
        calls = parse_pythonic_calls(stripped)
        if calls:
            return ParsedReply("", calls)
    return ParsedReply(text, [])
