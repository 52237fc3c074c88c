"""Wire models of uploads and files.

Uploads follow the official ``llama-api-client`` SDK (``client.uploads.create / get /
part``); file objects are OpenAI-shaped (``object: "file"``), with the native purpose
and MIME type on ``/v1`` and OpenAI's purposes on ``/compat/v1``.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Purpose = Literal[
    "attachment", "ephemeral_attachment", "image_generation_result", "messages_finetune", "messages_eval", "metadata"
]
MimeType = Literal[
    "image/jpeg", "image/jpg", "image/png", "image/gif", "image/webp", "image/x-icon",
    "audio/mp3", "audio/mpeg", "audio/wav", "audio/x-wav",
    "application/jsonl", "application/json", "text/plain", "video/mp4", "application/pdf",
]
PURPOSES: tuple[str, ...] = get_args(Purpose)
MIME_TYPES: tuple[str, ...] = get_args(MimeType)
DATASET_PURPOSES = ("messages_finetune", "messages_eval")

_IMAGES = tuple(m for m in MIME_TYPES if m.startswith("image/"))
# Which MIME types each purpose takes: datasets are JSON Lines, a generated image is an
# image, metadata is text; attachments may be any supported type.
MIMES_FOR_PURPOSE: dict[str, tuple[str, ...]] = {
    "attachment": MIME_TYPES,
    "ephemeral_attachment": MIME_TYPES,
    "image_generation_result": _IMAGES,
    "messages_finetune": ("application/jsonl",),
    "messages_eval": ("application/jsonl",),
    "metadata": ("application/json", "application/jsonl", "text/plain"),
}

# OpenAI's purposes (``client.files.create(purpose=...)``) and the native ones they become.
OPENAI_PURPOSES: dict[str, str] = {"fine-tune": "messages_finetune", "evals": "messages_eval", "user_data": "attachment"}
NATIVE_TO_OPENAI: dict[str, str] = {native: openai for openai, native in OPENAI_PURPOSES.items()}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class UploadCreate(_Request):
    # Bounded for the document; the server's [files] max_bytes (and a team quota) refuse less.
    bytes: int = Field(ge=1, le=2**53 - 1)
    filename: str = Field(min_length=1, max_length=1024)
    mime_type: MimeType
    purpose: Purpose


class UploadCreated(BaseModel):
    id: str
    bytes: int
    filename: str
    mime_type: str
    purpose: str


class UploadStatus(BaseModel):
    upload_id: str
    offset: int


class UploadPartResult(BaseModel):
    upload_id: str
    offset: int
    file_id: str | None = None


class OpenUpload(BaseModel):
    """An unfinished upload of the key's team (``GET /v1/uploads``, our extension)."""

    upload_id: str
    object: Literal["upload"] = "upload"
    filename: str
    bytes: int
    offset: int
    mime_type: str
    purpose: str
    created_at: int
    expires_at: int  # purged then if no part arrives meanwhile ([files] session_ttl_hours)


class OpenUploadList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenUpload]


class UploadCancelled(BaseModel):
    upload_id: str
    object: Literal["upload"] = "upload"
    deleted: bool = True


class FileObject(BaseModel):
    """A file on ``/v1``: OpenAI's shape, with the native purpose, MIME type and sha256."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    mime_type: str
    sha256: str | None
    # processing: just completed, being hashed and checked; processed: ready;
    # error: a dataset that failed validation (status_details says which line and why).
    status: str
    status_details: str | None = None


class OpenAIFileObject(BaseModel):
    """A file on ``/compat/v1``, as OpenAI's SDK reads it (``openai.types.FileObject``)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str  # uploaded (being processed) | processed | error
    status_details: str | None = None
    expires_at: int | None = None
    sha256: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject] | list[OpenAIFileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
