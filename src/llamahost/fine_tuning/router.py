"""The fine-tuning routes, on the native (``/v1``) and OpenAI-compatible (``/compat/v1``)
surfaces alike (OpenAI's wire shape on both): jobs, their events, checkpoints and
artifacts. Any key of a team reads the team's jobs; creating and cancelling one needs an
admin (or operator) key."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidRequest
from ..http_common import authenticate, parse_body
from ..http_docs import error_responses, operation
from . import protocol as wire
from .service import FineTuningService

ARCHIVE_CHUNK = 1024 * 1024


def _service(request: Request) -> FineTuningService:
    return request.app.state.services.fine_tuning


def _team(request: Request) -> int:
    return request.state.principal.team_id


def _role(request: Request) -> str:
    return request.state.principal.role


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """OpenAI's ``metadata[key]=value`` query parameters."""
    found = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]") and len(name) > len("metadata[]"):
            found[name[len("metadata["):-1]] = value
        elif name == "metadata":
            raise InvalidRequest("metadata: filter as metadata[key]=value", param="metadata")
    return found or None


def build_router(prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, dependencies=[Depends(authenticate)], responses=error_responses(401))

    @router.post("/fine_tuning/jobs", **operation(body=wire.JobCreate, documented_response=wire.JobObject,
                                                   errors=(403, 429)))
    async def create_job(request: Request) -> dict:
        body = await parse_body(request, wire.JobCreate)
        principal = request.state.principal
        return await run_in_threadpool(_service(request).create_job, principal.team_id, principal.key_id,
                                       principal.role, body)

    @router.get("/fine_tuning/jobs", **operation(documented_response=wire.JobList, errors=(400, 404)))
    async def list_jobs(request: Request, after: str | None = None, limit: int = Query(default=20, ge=1, le=100)) -> dict:
        metadata = _metadata_filter(request)
        return await run_in_threadpool(
            lambda: _service(request).list_jobs(_team(request), after=after, limit=limit, metadata=metadata)
        )

    @router.get("/fine_tuning/jobs/{fine_tuning_job_id}", **operation(documented_response=wire.JobObject, errors=(404,)))
    async def get_job(request: Request, fine_tuning_job_id: str) -> dict:
        return await run_in_threadpool(_service(request).get_job, _team(request), fine_tuning_job_id)

    @router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
                 **operation(documented_response=wire.JobObject, errors=(400, 403, 404)))
    async def cancel_job(request: Request, fine_tuning_job_id: str) -> dict:
        return await run_in_threadpool(_service(request).cancel_job, _team(request), _role(request), fine_tuning_job_id)

    @router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events",
                **operation(documented_response=wire.EventList, errors=(404,)))
    async def list_events(request: Request, fine_tuning_job_id: str, after: str | None = None,
                          limit: int = Query(default=20, ge=1, le=1000)) -> dict:
        return await run_in_threadpool(
            lambda: _service(request).list_events(_team(request), fine_tuning_job_id, after=after, limit=limit)
        )

    @router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
                **operation(documented_response=wire.CheckpointList, errors=(404,)))
    async def list_checkpoints(request: Request, fine_tuning_job_id: str, after: str | None = None,
                               limit: int = Query(default=10, ge=1, le=100)) -> dict:
        return await run_in_threadpool(
            lambda: _service(request).list_checkpoints(_team(request), fine_tuning_job_id, after=after, limit=limit)
        )

    @router.get("/fine_tuning/jobs/{fine_tuning_job_id}/artifacts",
                **operation(binary=True, errors=(400, 404)))
    async def artifacts(request: Request, fine_tuning_job_id: str) -> StreamingResponse:
        """The final adapter as one .tar.gz: ``adapter.gguf`` (llama.cpp LoRA), ``adapter/``
        (the PEFT folder) and ``checkpoint.json``."""
        name, archive = await run_in_threadpool(_service(request).artifacts, _team(request), fine_tuning_job_id)

        def chunks():
            with archive:
                while piece := archive.read(ARCHIVE_CHUNK):
                    yield piece

        return StreamingResponse(chunks(), media_type="application/gzip",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    return router


def attach(app: FastAPI, services) -> None:
    for prefix in ("/v1", "/compat/v1"):
        app.include_router(build_router(prefix))
