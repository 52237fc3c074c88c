"""The interface every engine implements: the embedded llama.cpp engine and remote
OpenAI-compatible engines (vLLM, SGLang, TGI, llama-server, Ollama, ...).

An engine takes an internal ``ChatRequest`` (never a wire model), reports how many
prompt tokens it costs, and streams ``EngineEvent``s ending in exactly one ``Finished``.

A request with ``tools`` or a ``json_schema`` (checked and normalized by the chat
service) must be answered within them: the embedded engine constrains decoding with a
grammar; a remote engine passes them on to a server that does. Tool calls stream out
as ``ToolCallDelta``s (name first, then argument fragments), whatever the model's own
call syntax, so surfaces never see an engine's format.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest
from ..types.chat import ChatMessage, ChatRequest, StopReason, ToolCallDelta
from ..types.tuned import TunedModel, TunedModelSource


@dataclass(frozen=True)
class TextOut:
    text: str


@dataclass(frozen=True)
class Finished:
    stop_reason: StopReason
    prompt_tokens: int
    completion_tokens: int


EngineEvent = TextOut | ToolCallDelta | Finished


def openai_message(message: ChatMessage) -> dict[str, Any]:
    """A message in the OpenAI chat shape that chat templates and OpenAI-compatible
    servers both take: role, text content, tool calls, tool_call_id."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


@dataclass
class PreparedPrompt:
    """An engine's rendering of a request, ready to generate from."""

    request: ChatRequest
    prompt_tokens: int
    engine_data: Any = None


class Engine(abc.ABC):
    """One loaded model. Engines are shared by every alias that points at them."""

    description: str = ""
    # Request features this engine can serve at all ("vision", "tools", "json_schema"),
    # and those it serves unless the model's config says otherwise.
    capabilities: frozenset[str] = frozenset()
    default_capabilities: frozenset[str] = frozenset()
    # Where this model's tuned models' adapters come from (set by the registry).
    tuned_source: TunedModelSource | None = None

    @property
    @abc.abstractmethod
    def ready(self) -> bool: ...

    @abc.abstractmethod
    async def load(self) -> None:
        """Load the model; ``ready`` is true afterwards. Runs off the event loop."""

    @abc.abstractmethod
    async def prepare(self, request: ChatRequest) -> PreparedPrompt:
        """Render and count the prompt, raising APIError for what the engine cannot serve."""

    @abc.abstractmethod
    def generate(self, prepared: PreparedPrompt, max_tokens: int) -> AsyncGenerator[EngineEvent, None]:
        """Stream the completion. Closing the iterator early cancels the generation."""

    async def ensure_adapter(self, model: TunedModel) -> None:
        """Make ``model``'s LoRA adapter servable, loading it if this process has not yet;
        afterwards a request with ``adapter = model.id`` runs with it. Engines that cannot
        serve tuned models refuse."""
        raise InvalidRequest(f"model {model.id!r}: its base model's engine cannot serve LoRA adapters", param="model")

    async def close(self) -> None:  # noqa: B027 - optional hook
        return None
