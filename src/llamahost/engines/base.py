"""The interface every engine implements: the embedded llama.cpp engine now,
remote OpenAI-compatible engines (vLLM, llama-server, Ollama, ...) later.

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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..chat.types import ChatRequest, StopReason, ToolCallDelta


@dataclass(frozen=True)
class TextOut:
    text: str


@dataclass(frozen=True)
class Finished:
    stop_reason: StopReason
    prompt_tokens: int
    completion_tokens: int


EngineEvent = TextOut | ToolCallDelta | Finished


@dataclass
class PreparedPrompt:
    """An engine's rendering of a request, ready to generate from."""

    request: ChatRequest
    prompt_tokens: int
    engine_data: Any = None


class Engine(abc.ABC):
    """One loaded model. Engines are shared by every alias that points at them."""

    description: str = ""

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
    def generate(self, prepared: PreparedPrompt, max_tokens: int) -> AsyncIterator[EngineEvent]:
        """Stream the completion. Closing the iterator early cancels the generation."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        return None
