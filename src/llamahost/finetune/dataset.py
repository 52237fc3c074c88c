"""The `messages` fine-tuning format (OpenAI's chat fine-tuning JSONL), checked without torch
so the API can validate an upload before any job exists."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: str
    content: str
    # OpenAI's per-message `weight`: 0 keeps an assistant turn as context but out of the loss.
    trained: bool = True


@dataclass
class Example:
    line: int
    messages: list[Message]


def _text(content: Any, where: str, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        # The native (Llama API) message format lets an assistant message's content be one
        # text item rather than a list: a dataset uploaded on /v1 passed its check with it.
        content = [content]
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise InvalidRequest(f"{where}: only text content parts can be trained on", param=param)
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequest(f"{where}: content must be a string or a list of text parts", param=param)


def parse_example(obj: Any, line: int, param: str = "training_file") -> Example:
    where = f"line {line}"
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        raise InvalidRequest(f"{where}: expected an object with a non-empty `messages` list", param=param)
    messages = []
    for i, raw in enumerate(obj["messages"]):
        here = f"{where}, message {i}"
        if not isinstance(raw, dict):
            raise InvalidRequest(f"{here}: expected an object", param=param)
        role = raw.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"{here}: role must be one of {', '.join(ROLES)} (got {role!r})", param=param)
        if raw.get("tool_calls") or raw.get("function_call"):
            raise InvalidRequest(f"{here}: tool calls cannot be trained on yet", param=param)
        weight = raw.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise InvalidRequest(f"{here}: weight must be 0 or 1", param=param)
        if weight == 0 and role != "assistant":
            raise InvalidRequest(f"{here}: weight applies to assistant messages only", param=param)
        content = _text(raw.get("content"), here, param)
        if role == "assistant" and not content:
            raise InvalidRequest(f"{here}: an assistant message needs content", param=param)
        messages.append(Message(role, content, trained=role == "assistant" and weight == 1))
    if not any(m.trained for m in messages):
        raise InvalidRequest(f"{where}: no assistant message to learn from", param=param)
    return Example(line, messages)


def read_examples(path: Path, param: str = "training_file") -> list[Example]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read {path.name}: {exc}", param=param) from None
    examples = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise InvalidRequest(f"line {number}: not JSON ({exc})", param=param) from None
        examples.append(parse_example(obj, number, param))
    if not examples:
        raise InvalidRequest(f"{path.name} holds no examples", param=param)
    return examples
