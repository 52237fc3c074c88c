"""HTTP routes of uploads and files, native (``/v1``) and OpenAI-compatible (``/compat/v1``).

Upload parts and OpenAI's one-shot ``files.create`` are multipart bodies read as a
stream: each piece is handed to the service as it arrives, sealed and stored chunk by
chunk, so neither the whole part nor any of its plaintext is ever spooled anywhere.
Those routes are exempt from the server's JSON body cap (``max_request_bytes``) and
enforce their own: ``[files] max_part_bytes`` per part, ``max_bytes`` per file.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import APIError, InvalidRequest
from ..http_common import ClientDisconnected, authenticate, parse_body, streamed_multipart
from ..http_docs import error_responses, operation
from ..tenancy.keys import Principal
from .multipart import MAX_FIELD_BYTES, PartData, PartEnd, PartStart, form_events
from .protocol import (
    DATASET_PURPOSES,
    MIMES_FOR_PURPOSE,
    NATIVE_TO_OPENAI,
    OPENAI_PURPOSES,
    PURPOSES,
    FileDeleted,
    FileList,
    FileObject,
    OpenAIFileObject,
    OpenUpload,
    OpenUploadList,
    UploadCancelled,
    UploadCreate,
    UploadCreated,
    UploadPartResult,
    UploadStatus,
)
from .service import FileService, FileView, PartWriter

# Multipart framing around a part's bytes (boundaries, part headers) is small; this
# allowance lets a part of exactly max_part_bytes through.
MULTIPART_OVERHEAD = 64 * 1024
MAX_LIST_LIMIT = 10_000

native = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], responses=error_responses(401))
compat = APIRouter(prefix="/compat/v1", dependencies=[Depends(authenticate)], responses=error_responses(401))

_OFFSET_HEADER = {
    "name": "X-Upload-Offset", "in": "header", "required": False,
    "description": "Where this part starts in the file (the upload's offset); a mismatch is a 409",
    "schema": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
}


def _files(request: Request) -> FileService:
    return request.app.state.services.files


def _principal(request: Request) -> Principal:
    return request.state.principal


class _Body:
    """The request body straight from the ASGI ``receive``: consumed piece by piece, and
    drained (bounded) when a part is refused before it was read, so the client, still
    sending, gets the error instead of a reset connection."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while not self.done:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                self.done = True
                raise ClientDisconnected()
            body = message.get("body", b"")
            self.done = not message.get("more_body", False)
            if body:
                yield body

    async def drain(self, limit: int) -> None:
        drained = 0
        try:
            async for chunk in self.chunks():
                drained += len(chunk)
                if drained > limit:
                    return
        except ClientDisconnected:
            return


async def _refusing(body: _Body, limit: int, call):
    """Run ``call``; on an API error, drain the body before the error is sent."""
    try:
        return await call
    except APIError:
        await body.drain(limit)
        raise


async def _receive_file(
    request: Request,
    body: _Body,
    writer: PartWriter,
    *,
    file_field: str,
    max_body: int,
    fields: dict[str, str],
    check_field: Callable[[str, str], object] | None = None,
) -> tuple[str | None, str | None]:
    """Stream the multipart body: ``file_field``'s bytes into ``writer``, small form
    fields into ``fields`` (each passed to ``check_field`` as soon as it is complete, so a
    bad one is refused before the file is read). Returns the file part's filename and
    content type."""
    filename: str | None = None
    content_type: str | None = None
    seen = False
    current: str | None = None
    small = bytearray()
    async for event in form_events(body.chunks(), request.headers.get("content-type"), max_body):
        if isinstance(event, PartStart):
            current = event.name
            if current == file_field:
                if seen:
                    raise InvalidRequest(f"{file_field}: sent twice; a request carries one", param=file_field)
                seen, filename, content_type = True, event.filename, event.content_type
            elif current not in fields:
                raise InvalidRequest(f"unknown form field {current!r}", param=current)
            small.clear()
        elif isinstance(event, PartData):
            if current == file_field:
                for chunk in writer.feed(event.data):
                    await run_in_threadpool(writer.store, chunk)
            else:
                small.extend(event.data)
                if len(small) > MAX_FIELD_BYTES:
                    raise InvalidRequest(f"{current}: longer than {MAX_FIELD_BYTES} bytes", param=current)
        elif isinstance(event, PartEnd):
            if current != file_field and current is not None:
                fields[current] = small.decode("utf-8", "replace")
                if check_field is not None:
                    check_field(current, fields[current])
            current = None
    if not seen:
        raise InvalidRequest(f"{file_field}: field required (a multipart file part)", param=file_field)
    await run_in_threadpool(writer.finish)
    return filename, content_type


def _offset_header(request: Request) -> int | None:
    raw = request.headers.get("x-upload-offset")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise InvalidRequest(f"X-Upload-Offset must be a byte offset (an integer >= 0), got {raw!r}", param="x-upload-offset")
    return int(raw)


# --- uploads (native) -------------------------------------------------------------------------


@native.post("/uploads", **operation(body=UploadCreate, response=UploadCreated))
async def create_upload(request: Request) -> UploadCreated:
    body = await parse_body(request, UploadCreate)
    principal = _principal(request)
    session = await run_in_threadpool(_files(request).create_session, principal.team_id, principal.key_id, body)
    return UploadCreated(
        id=session.id, bytes=session.bytes, filename=session.filename, mime_type=session.mime_type, purpose=session.purpose
    )


@native.get("/uploads", **operation(response=OpenUploadList))
async def list_open_uploads(request: Request) -> OpenUploadList:
    """Our extension: the team's unfinished uploads, to resume or cancel (the dashboard)."""
    sessions = await run_in_threadpool(_files(request).open_sessions, _principal(request).team_id)
    return OpenUploadList(
        data=[
            OpenUpload(
                upload_id=v.id, filename=v.filename, bytes=v.bytes, offset=v.offset, mime_type=v.mime_type,
                purpose=v.purpose, created_at=int(created.timestamp()), expires_at=int(expires.timestamp()),
            )
            for v, created, expires in sessions
        ]
    )


@native.delete("/uploads/{upload_id}", **operation(response=UploadCancelled, errors=(404,)))
async def cancel_upload(upload_id: str, request: Request) -> UploadCancelled:
    await run_in_threadpool(_files(request).cancel_session, _principal(request).team_id, upload_id)
    return UploadCancelled(upload_id=upload_id)


@native.get("/uploads/{upload_id}", **operation(response=UploadPartResult, errors=(404,)), response_model_exclude_none=True)
async def get_upload(upload_id: str, request: Request) -> dict[str, Any]:
    session = await run_in_threadpool(_files(request).session, _principal(request).team_id, upload_id)
    status = UploadStatus(upload_id=session.id, offset=session.offset).model_dump()
    if session.completed:
        status["file_id"] = session.file_id
    return status


@native.post(
    "/uploads/{upload_id}",
    **operation(
        multipart={"type": "object", "properties": {"data": {"type": "string", "format": "binary"}}, "required": ["data"]},
        headers=[_OFFSET_HEADER], response=UploadPartResult, errors=(404, 409),
    ),
    response_model_exclude_none=True,
)
async def upload_part(upload_id: str, request: Request) -> UploadPartResult | Response:
    files = _files(request)
    body = _Body(request)
    cap = files.config.max_part_bytes + MULTIPART_OVERHEAD
    session, writer = await _refusing(
        body, cap,
        _start_part(request, files, upload_id),
    )
    try:
        await _receive_file(request, body, writer, file_field="data", max_body=cap, fields={})
        outcome = await run_in_threadpool(files.commit_part, session, writer)
    except ClientDisconnected:  # the client resumes from GET /v1/uploads/{id}; nothing of this part counts
        await run_in_threadpool(writer.abort)
        return Response(status_code=499)
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    return UploadPartResult(upload_id=outcome.upload_id, offset=outcome.offset, file_id=outcome.file_id)


async def _start_part(request: Request, files: FileService, upload_id: str):
    offset = _offset_header(request)
    return await run_in_threadpool(files.begin_part, _principal(request).team_id, upload_id, offset)


# --- files (both surfaces) -----------------------------------------------------------------------


def _native_view(view: FileView) -> FileObject:
    return FileObject(
        id=view.id, bytes=view.bytes, created_at=int(view.created_at.timestamp()), filename=view.filename,
        purpose=view.purpose, mime_type=view.mime_type, sha256=view.sha256, status=view.status,
        status_details=view.status_details,
    )


def _openai_view(view: FileView) -> OpenAIFileObject:
    return OpenAIFileObject(
        id=view.id, bytes=view.bytes, created_at=int(view.created_at.timestamp()), filename=view.filename,
        purpose=NATIVE_TO_OPENAI.get(view.purpose, view.purpose),
        status="uploaded" if view.status == "processing" else view.status,
        status_details=view.status_details, sha256=view.sha256,
    )


def _content_disposition(filename: str) -> str:
    # An ASCII fallback for old clients and the exact name in RFC 5987 form for the rest.
    fallback = re.sub(r'[^A-Za-z0-9._ -]', "_", filename) or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def _list(request: Request, purposes: tuple[str, ...] | None, limit: int, after: str | None, order: str, render):
    views, has_more = await run_in_threadpool(
        lambda: _files(request).list(_principal(request).team_id, purposes=purposes, limit=limit, after=after, order=order)
    )
    data = [render(v) for v in views]
    return FileList(
        data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )


def _check_order(order: str) -> str:
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}", param="order")
    return order


@native.get("/files", **operation(response=FileList, errors=(404,)))  # 404: `after` names no file
async def list_files(
    request: Request,
    purpose: str | None = None,
    limit: int = Query(default=100, ge=1, le=MAX_LIST_LIMIT),
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    if purpose is not None and purpose not in PURPOSES:
        raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}", param="purpose")
    return await _list(request, (purpose,) if purpose else None, limit, after, _check_order(order), _native_view)


@compat.get("/files", **operation(response=FileList, errors=(404,)))
async def list_files_compat(
    request: Request,
    purpose: str | None = None,
    limit: int = Query(default=10_000, ge=1, le=MAX_LIST_LIMIT),
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    purposes = None
    if purpose is not None:
        native_purpose = OPENAI_PURPOSES.get(purpose, purpose if purpose in PURPOSES else None)
        if native_purpose is None:
            raise InvalidRequest(
                f"purpose must be one of {', '.join(OPENAI_PURPOSES)}; got {purpose!r}", param="purpose"
            )
        purposes = (native_purpose,)
    return await _list(request, purposes, limit, after, _check_order(order), _openai_view)


@native.get("/files/{file_id}", **operation(response=FileObject, errors=(404,)))
async def get_file(file_id: str, request: Request) -> FileObject:
    return _native_view(await run_in_threadpool(_files(request).get, _principal(request).team_id, file_id))


@compat.get("/files/{file_id}", **operation(response=OpenAIFileObject, errors=(404,)))
async def get_file_compat(file_id: str, request: Request) -> OpenAIFileObject:
    return _openai_view(await run_in_threadpool(_files(request).get, _principal(request).team_id, file_id))


# 500: stored chunks that do not decrypt or do not add up to the file.
@native.get("/files/{file_id}/content", **operation(binary=True, errors=(404, 500)))
@compat.get("/files/{file_id}/content", **operation(binary=True, errors=(404, 500)))
async def file_content(file_id: str, request: Request) -> StreamingResponse:
    view, stream = await run_in_threadpool(_files(request).content, _principal(request).team_id, file_id)
    headers = {
        "Content-Disposition": _content_disposition(view.filename),
        "X-Content-Type-Options": "nosniff",
        # Opened in a browser anyway, the file may run nothing and load nothing.
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Length": str(view.bytes),
        "Cache-Control": "no-store",
    }
    # Starlette iterates a sync iterator in its threadpool: each chunk is fetched and
    # decrypted off the event loop, one at a time, as the client reads.
    return StreamingResponse(stream, media_type=view.mime_type, headers=headers)


@native.delete("/files/{file_id}", **operation(response=FileDeleted, errors=(404,)))
@compat.delete("/files/{file_id}", **operation(response=FileDeleted, errors=(404,)))
async def delete_file(file_id: str, request: Request) -> FileDeleted:
    await run_in_threadpool(_files(request).delete, _principal(request).team_id, file_id)
    return FileDeleted(id=file_id)


@compat.post(
    "/files",
    **operation(
        multipart={
            "type": "object",
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "purpose": {"type": "string", "enum": list(OPENAI_PURPOSES)},
            },
            "required": ["file", "purpose"],
        },
        response=OpenAIFileObject,
    ),
)
async def create_file_compat(request: Request) -> OpenAIFileObject | Response:
    """OpenAI's one-shot upload: multipart ``file`` and ``purpose`` (fine-tune, evals, user_data)."""
    files = _files(request)
    principal = _principal(request)
    body = _Body(request)
    writer = await _refusing(body, MULTIPART_OVERHEAD, run_in_threadpool(files.begin_oneshot, principal.team_id))
    fields: dict[str, str] = {"purpose": ""}
    try:
        try:
            filename, part_type = await _receive_file(
                request, body, writer, file_field="file", max_body=writer.limit + MULTIPART_OVERHEAD, fields=fields,
                check_field=lambda name, value: _openai_purpose(value) if name == "purpose" else None,
            )
        except InvalidRequest as exc:
            if exc.code == "upload_overrun":
                raise files.oneshot_too_large(writer) from None
            raise
        if not fields["purpose"]:
            raise InvalidRequest("purpose: field required", param="purpose")
        native_purpose = _openai_purpose(fields["purpose"])
        mime_type = _oneshot_mime(native_purpose, part_type)
        view = await run_in_threadpool(
            lambda: files.commit_oneshot(
                writer, key_id=principal.key_id, filename=filename or "file", mime_type=mime_type,
                purpose=native_purpose, surface="compat",
            )
        )
    except ClientDisconnected:
        await run_in_threadpool(writer.abort)
        return Response(status_code=499)
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    return _openai_view(view)


def _openai_purpose(purpose: str) -> str:
    native_purpose = OPENAI_PURPOSES.get(purpose)
    if native_purpose is None:
        raise InvalidRequest(f"purpose must be one of {', '.join(OPENAI_PURPOSES)}; got {purpose!r}", param="purpose")
    return native_purpose


def _oneshot_mime(purpose: str, part_type: str | None) -> str:
    """OpenAI's SDK sends whatever type the file's name suggests (often
    application/octet-stream for .jsonl): a dataset is JSON Lines by its purpose, and an
    attachment keeps a type it declared when it is one the API knows."""
    allowed = MIMES_FOR_PURPOSE[purpose]
    if part_type in allowed:
        return part_type
    return "application/jsonl" if "application/jsonl" in allowed and purpose in DATASET_PURPOSES else "text/plain"


# The routes whose multipart bodies are read as a stream under their own caps.
MULTIPART_PATHS = (re.compile(r"^/v1/uploads/[^/]+$"), re.compile(r"^/compat/v1/files$"))


def attach(app: FastAPI, services: Any) -> None:
    streamed_multipart(app, *MULTIPART_PATHS)
    app.include_router(native)
    app.include_router(compat)
