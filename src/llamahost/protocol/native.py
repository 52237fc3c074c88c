"""Wire models of the native Llama API surface (``/v1``).

Shapes follow the official ``llama-api-client`` SDK's types. Requests are parsed
strictly (no type coercion, no unknown fields) so a client's mistake is a 400
naming the field rather than a silently different request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..types.chat import MAX_TOKENS_LIMIT

# Model names are stored with each usage record (up to 128 characters, also for an
# unknown model's 404): a longer name is refused here rather than failing the write.
MAX_MODEL_NAME = 128


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- content items -----------------------------------------------------------


class TextItem(_Request):
    type: Literal["text"]
    text: str


class ImageURL(_Request):
    url: str


class ImageItem(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


UserContentItem = Annotated[TextItem | ImageItem, Field(discriminator="type")]


# --- messages ------------------------------------------------------------------


class ToolCallFunction(_Request):
    name: str
    arguments: str


class ToolCall(_Request):
    id: str
    function: ToolCallFunction
    type: Literal["function"] | None = None


class SystemMessage(_Request):
    role: Literal["system"]
    content: str | list[TextItem]


class UserMessage(_Request):
    role: Literal["user"]
    content: str | list[UserContentItem]


class AssistantMessage(_Request):
    role: Literal["assistant"]
    # Clients send the previous `completion_message` back verbatim: content is a
    # single text item there, a string or a list elsewhere.
    content: str | TextItem | list[TextItem] | None = None
    stop_reason: Literal["stop", "tool_calls", "length"] | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(_Request):
    role: Literal["tool"]
    content: str | list[TextItem]
    tool_call_id: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


# --- tools and formats -----------------------------------------------------------


class FunctionDefinition(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoiceFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedToolChoiceFunction


class JSONSchemaSpec(_Request):
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class JSONSchemaFormat(_Request):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


class TextFormat(_Request):
    type: Literal["text"]


ResponseFormat = Annotated[JSONSchemaFormat | TextFormat, Field(discriminator="type")]


class ChatCompletionRequest(_Request):
    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME)
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=100_000)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    stream: bool = False
    user: str | None = Field(default=None, max_length=256)


class ModerationRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL_NAME)


# --- responses ---------------------------------------------------------------------


class Metric(_Response):
    metric: str
    value: int | float
    unit: str = "tokens"


class TextContent(_Response):
    type: Literal["text"] = "text"
    text: str


class CompletionMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: TextContent
    stop_reason: Literal["stop", "tool_calls", "length"]
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class ChatCompletionResponse(_Response):
    id: str
    completion_message: CompletionMessage
    metrics: list[Metric]


class TextDelta(_Response):
    type: Literal["text"] = "text"
    text: str = ""


class ToolCallDelta(_Response):
    type: Literal["tool_call"] = "tool_call"
    id: str | None = None
    function: dict[str, str]


class StreamEvent(_Response):
    event_type: Literal["start", "progress", "complete", "metrics"]
    delta: TextDelta | ToolCallDelta = Field(default_factory=TextDelta)
    stop_reason: Literal["stop", "tool_calls", "length"] | None = None
    metrics: list[Metric] | None = None


class StreamChunk(_Response):
    id: str
    event: StreamEvent


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(_Response):
    data: list[ModelCard]


class ModelDeleted(_Response):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


class ModerationResult(_Response):
    flagged: bool
    flagged_categories: list[str]


class ModerationResponse(_Response):
    model: str
    results: list[ModerationResult]
