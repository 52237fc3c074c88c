"""Dataset checks at upload completion, as the hosted service made them.

``messages_finetune``: JSON Lines, one ``{"messages": [...]}`` per line in the chat
completion message format (the native one; OpenAI's too for files uploaded through
``/compat``), an optional system message first, then user and assistant alternating,
the last from the assistant; at least ``MIN_FINETUNE_EXAMPLES`` lines.
``messages_eval``: ``{"messages": [...], ...extra fields}`` (the same alternation, any
last role) or OpenAI Evals' ``{"item": {...}}``.

The file is read as a stream of decrypted chunks, one line at a time: a dataset is
never whole in memory. The first failure is reported with its line number; messages
name the line and the field, never the content (the status is not encrypted).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..protocol import compat as compat_wire
from ..protocol import native as native_wire

MIN_FINETUNE_EXAMPLES = 10
MAX_LINE_BYTES = 16 * 1024 * 1024

_MESSAGES: dict[str, TypeAdapter[Any]] = {
    "native": TypeAdapter(list[native_wire.Message]),
    "compat": TypeAdapter(list[compat_wire.Message]),
}


class DatasetError(Exception):
    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(f"line {line}: {reason}" if line is not None else reason)
        self.line = line


@dataclass(frozen=True)
class DatasetReport:
    ok: bool
    examples: int
    details: str | None  # why not, naming the line


def lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its end of line), across chunk boundaries."""
    pending = bytearray()
    number = 0
    for chunk in chunks:
        pending.extend(chunk)
        start = 0
        while True:
            end = pending.find(b"\n", start)
            if end < 0:
                break
            number += 1
            yield number, bytes(pending[start:end]).rstrip(b"\r")
            start = end + 1
        del pending[:start]
        if len(pending) > MAX_LINE_BYTES:
            raise DatasetError(number + 1, f"is longer than {MAX_LINE_BYTES} bytes")
    if pending:
        yield number + 1, bytes(pending).rstrip(b"\r")


def _where(loc: tuple) -> str:
    path = "messages"
    for segment in loc:
        if isinstance(segment, int):
            path += f"[{segment}]"
        elif segment in ("system", "user", "assistant", "tool", "developer") or "[" in segment or segment[:1].isupper():
            continue  # a union member's tag or label, not a field
        elif segment in ("str", "list", "dict", "none"):
            continue
        else:
            path += f".{segment}"
    return path


def _check_messages(number: int, messages: Any, dialect: str, last_assistant: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise DatasetError(number, '"messages" must be a non-empty list of messages')
    try:
        parsed = _MESSAGES[dialect].validate_python(messages)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise DatasetError(number, f"{_where(error['loc'])}: {error['msg']}") from None
    roles = ["system" if m.role == "developer" else m.role for m in parsed]
    first = 1 if roles[0] == "system" else 0
    if first == len(roles):
        raise DatasetError(number, "has a system message and no user message")
    expected = "user"
    for index in range(first, len(roles)):
        role = roles[index]
        if role == "system":
            raise DatasetError(number, f"messages[{index}]: a system message may only be the first message")
        if role not in ("user", "assistant"):
            raise DatasetError(number, f"messages[{index}]: role {role!r} is not allowed (system, user, assistant)")
        if role != expected:
            raise DatasetError(
                number, f"messages[{index}]: expected a {expected} message (user and assistant alternate), got {role}"
            )
        expected = "assistant" if role == "user" else "user"
    if last_assistant and roles[-1] != "assistant":
        raise DatasetError(number, f"messages[{len(roles) - 1}]: the last message must be from the assistant")


def _row(number: int, line: bytes) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except UnicodeDecodeError:
        raise DatasetError(number, "is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(number, f"is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise DatasetError(number, "must be a JSON object")
    return row


def check_dataset(chunks: Iterable[bytes], purpose: str, dialect: str = "native") -> DatasetReport:
    """Check a ``messages_finetune`` or ``messages_eval`` file; ``dialect`` is the message
    format its lines may use ("native", or "compat" for OpenAI's)."""
    examples = 0
    try:
        for number, line in lines(chunks):
            if not line.strip():
                continue  # blank lines (a trailing newline, an editor's) carry no example
            row = _row(number, line)
            if purpose == "messages_finetune":
                if set(row) != {"messages"}:
                    extra = sorted(set(row) - {"messages"})
                    raise DatasetError(
                        number, f"unknown field {extra[0]!r} (a line is {{\"messages\": [...]}})" if extra
                        else 'missing "messages"'
                    )
                _check_messages(number, row["messages"], dialect, last_assistant=True)
            elif "messages" in row:
                _check_messages(number, row["messages"], dialect, last_assistant=False)
            elif "item" in row:
                if not isinstance(row["item"], dict):
                    raise DatasetError(number, '"item" must be a JSON object')
            else:
                raise DatasetError(number, 'needs "messages" (a conversation) or "item" (an OpenAI Evals row)')
            examples += 1
    except DatasetError as exc:
        return DatasetReport(False, examples, str(exc))
    minimum = MIN_FINETUNE_EXAMPLES if purpose == "messages_finetune" else 1
    if examples < minimum:
        return DatasetReport(False, examples, f"has {examples} examples; at least {minimum} are needed")
    return DatasetReport(True, examples, None)
