"""The internal chat request and result, shared by every wire surface and engine.

Native ``/v1`` and compat ``/compat/v1`` each translate their wire model into a
``ChatRequest`` and a ``ChatResult``/``ChatEvent`` stream back into their own shapes;
generation logic never sees a wire format.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from .images import LoadedImage

# Upper bound accepted for a token budget field on the wire; the model's context
# window is the real limit and is checked per request.
MAX_TOKENS_LIMIT = 1_048_576

Role = Literal["system", "user", "assistant", "tool"]
StopReason = Literal["stop", "tool_calls", "length"]


@dataclass(frozen=True)
class ImageInput:
    url: str  # as the client sent it: a data URL or an http(s) URL
    # Where the item came from, e.g. "messages[1].content[2]", for error messages.
    param: str
    # Set by the chat service once the image is fetched and validated; engines use
    # only this (never ``url``, so no engine ever fetches a client's URL).
    loaded: LoadedImage | None = None


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON document, as the wire carries it


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str = ""
    images: tuple[ImageInput, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str | None
    parameters: dict[str, Any] | None


@dataclass(frozen=True)
class SamplingParams:
    # Llama 3/4's published generation defaults.
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


@dataclass
class ChatRequest:
    model: str
    messages: list[ChatMessage]
    max_tokens: int | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    user: str | None = None
    stream: bool = False
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: str | None = None  # "none" | "auto" | "required" | a tool name
    parallel_tool_calls: bool = True
    json_schema: dict[str, Any] | None = None
    # The calling team, for per-team policies (guardrails); None for internal calls.
    team: str | None = None
    team_id: int | None = None
    # A prompt already rendered for the model (e.g. the Llama Guard template): the
    # embedded engine tokenizes it as is instead of applying the model's chat template
    # (upstream engines, which only take messages, use ``messages``).
    raw_prompt: str | None = None
    # A LoRA adapter of the model (its config's lora_adapters, or a tuned model's id) to
    # run this request with; None: the base model. Set by whoever routes to a tuned
    # model (the chat service, from the registry's entry), never by the wire.
    adapter: str | None = None
    # What the guardrails' moderation found in this request (stage, categories, blocked),
    # for its stored record.
    moderation_flags: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images(self) -> list[ImageInput]:
        return [image for message in self.messages for image in message.images]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ChatResult:
    id: str
    model: str
    created: int
    text: str
    stop_reason: StopReason
    usage: Usage
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass(frozen=True)
class TextChunk:
    """A piece of generated text, in order."""

    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call being generated, in order.

    The first delta of call ``index`` carries its ``name`` (and, once it reaches a
    surface, its ``id``); the following ones append ``arguments`` fragments. Engines
    leave ``id`` unset: the chat service gives every call a fresh id.
    """

    index: int
    name: str | None = None
    arguments: str = ""
    id: str | None = None


ChatEvent = TextChunk | ToolCallDelta


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class Outcome:
    """How a request ended, for the meter. Tokens are those really processed: a request
    refused or failed before generation started processed none."""

    status: str  # "ok", "cancelled" (the caller went away), or the APIError type that ended it
    model: str  # as requested
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str | None
    latency_ms: float
    # What the model produced, also when it was cut short (stored content, if kept).
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
