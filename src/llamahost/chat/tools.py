"""Request checks for tool calling and structured output, for every engine: tools,
tool_choice, the response schema and the tool turns of the history are validated (and
normalized) before any engine sees the request, each fault a 400 naming its field.

How calls are written into a prompt and constrained is the engines' business
(``engines/tool_format.py``); the JSON Schema subset a grammar can enforce is checked by
``engines/schema.py`` because it is the grammar engine's limit, not the API's.
"""

from __future__ import annotations

import json
import re

from ..engines.schema import check_schema
from ..engines.tool_format import CHOICES, NO_PARAMETERS
from ..errors import InvalidRequest
from ..types.chat import ChatMessage, ChatRequest, ToolSpec

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


# --- request checks --------------------------------------------------------------------


def check_request(request: ChatRequest) -> None:
    """Validate and normalize tools, tool_choice, json_schema and the tool turns of the
    history in place, raising a 400 naming the field for anything wrong."""
    if request.json_schema is not None:
        request.json_schema = check_schema(request.json_schema, "response_format.json_schema.schema")
    request.tools = _check_tools(request.tools)
    names = {tool.name for tool in request.tools}
    choice = request.tool_choice or ("auto" if request.tools else "none")
    if choice == "required" and not request.tools:
        raise InvalidRequest("tool_choice 'required' needs at least one tool in tools", param="tool_choice")
    if choice not in CHOICES and choice not in names:
        available = ", ".join(sorted(names)) or "none given"
        raise InvalidRequest(f"tool_choice names tool {choice!r}, which is not in tools ({available})", param="tool_choice")
    request.tool_choice = choice
    if request.stop and (request.json_schema is not None or choice not in ("none", "auto")):
        # A stop sequence would cut a schema-bound reply mid-document.
        raise InvalidRequest("stop cannot be combined with a json_schema response_format or a forced tool call", param="stop")
    _check_history(request.messages)


def _check_tools(tools: list[ToolSpec]) -> list[ToolSpec]:
    seen: set[str] = set()
    checked = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}].function"
        if not TOOL_NAME.match(tool.name):
            raise InvalidRequest(
                f"{param}.name: tool name {tool.name!r} must match ^[a-zA-Z0-9_-]{{1,64}}$", param=f"{param}.name"
            )
        if tool.name in seen:
            raise InvalidRequest(f"{param}.name: duplicate tool name {tool.name!r}", param=f"{param}.name")
        seen.add(tool.name)
        parameters = tool.parameters
        if parameters is None:
            parameters = NO_PARAMETERS
        elif not isinstance(parameters, dict) or parameters.get("type") != "object":
            raise InvalidRequest(
                f"{param}.parameters must be a JSON Schema with \"type\": \"object\"", param=f"{param}.parameters"
            )
        else:
            parameters = check_schema(parameters, f"{param}.parameters")
        checked.append(ToolSpec(tool.name, tool.description, parameters))
    return checked


def _check_history(messages: list[ChatMessage]) -> None:
    calls: set[str] = set()
    for i, message in enumerate(messages):
        for j, call in enumerate(message.tool_calls):
            try:
                arguments = json.loads(call.arguments)
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                param = f"messages[{i}].tool_calls[{j}].function.arguments"
                raise InvalidRequest(f"{param} must be a JSON object encoded as a string", param=param)
            calls.add(call.id)
        if message.role == "tool" and message.tool_call_id not in calls:
            raise InvalidRequest(
                f"messages[{i}].tool_call_id {message.tool_call_id!r} matches no tool call of an earlier assistant message",
                param=f"messages[{i}].tool_call_id",
            )
