"""Wire models of the OpenAI-compatible surface (``/compat/v1``).

Shapes follow OpenAI's Chat Completions API as the ``openai`` SDK, LangChain's
``ChatOpenAI`` and promptfoo send and read it. Parsing is strict, like the native
surface: an unknown field or a wrong type is a 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..types.chat import MAX_TOKENS_LIMIT

# Tools and tool_choice have the same shape on both surfaces.
from .native import MAX_MODEL_NAME, NamedToolChoice, Tool


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImageURL(_Request):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


UserPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Request):
    name: str
    arguments: str


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Request):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Request):
    role: Literal["user"]
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessage(_Request):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None
    refusal: str | None = None


class ToolMessage(_Request):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class JSONSchemaSpec(_Request):
    name: str
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class JSONSchemaFormat(_Request):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


class JSONObjectFormat(_Request):
    type: Literal["json_object"]


class TextFormat(_Request):
    type: Literal["text"]


ResponseFormat = Annotated[JSONSchemaFormat | JSONObjectFormat | TextFormat, Field(discriminator="type")]


class StreamOptions(_Request):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


_AT_MOST_4_SEQUENCES = {"maxItems": 4, "items": {"type": "string", "minLength": 1}}


class ChatCompletionRequest(_Request):
    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # Documented as served (at most 4 non-empty sequences); the handler says so in its 400.
    stop: (
        Annotated[str, Field(json_schema_extra={"minLength": 1})]
        | Annotated[list[str], Field(json_schema_extra=_AT_MOST_4_SEQUENCES)]
        | None
    ) = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI's range (int64)
    # Accepted up to 128 so that the 400 can explain; the document tells what is served: 1.
    n: Annotated[int, Field(ge=1, le=128, json_schema_extra={"maximum": 1})] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(default=None, max_length=256)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # Not served: only their off values are documented (others are a 400 saying so).
    logprobs: Annotated[bool, Field(json_schema_extra={"enum": [False]})] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20, json_schema_extra={"maximum": 0})] | None = None
    # Accepted because clients send them; they do not change what is generated.
    store: bool | None = None
    metadata: dict[str, str] | None = None


# --- responses -----------------------------------------------------------------------


class FunctionCallOut(_Response):
    name: str
    arguments: str


class ToolCallOut(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantOut(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None


class Choice(_Response):
    index: int = 0
    message: AssistantOut
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: None = None


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class ToolCallDeltaFunction(_Response):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Response):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallDeltaFunction


class Delta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(_Response):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class Model(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[Model]


class ModelDeleted(_Response):
    id: str
    object: Literal["model"] = "model"
    deleted: bool
