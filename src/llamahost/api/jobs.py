"""The jobs slice of the admin API: ``GET /admin/v1/jobs``, ``GET /admin/v1/jobs/{id}``,
``POST /admin/v1/jobs/{id}/cancel``. An operator sees every job; a team admin sees its
own team's (the server's own jobs and other teams' are "not found")."""

from __future__ import annotations

from typing import Literal, cast

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from ..http_docs import error_responses, operation
from ..jobs.queue import JobInfo
from ..protocol import jobs as wire
from ..tenancy.scope import Scope
from ..tenancy.teams import TeamStore
from .common import require_admin
from .services import Services

router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_admin)], responses=error_responses(401, 403))


def _services(request: Request) -> Services:
    return request.app.state.services


def _scope(request: Request) -> Scope:
    return request.state.principal.scope


def job_view(teams: TeamStore, job: JobInfo) -> wire.Job:
    team = teams.name(job.team_id) if job.team_id is not None else None
    return wire.Job(
        id=job.id, kind=job.kind, status=cast(wire.JobStatus, job.status), team=team, attempts=job.attempts,
        max_attempts=job.max_attempts, error=job.error, result=job.result, cancel_requested=job.cancel_requested,
        worker=job.worker_id, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        updated_at=job.updated_at, leased_until=job.leased_until,
    )


@router.get("/jobs", **operation(response=wire.JobList, errors=(404,)))
async def list_jobs(
    request: Request,
    team: str | None = None,
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
    kind: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=100, ge=1, le=1000),
) -> wire.JobList:
    services = _services(request)
    jobs = await run_in_threadpool(
        lambda: services.jobs.queue.list(_scope(request), team=team, status=status, kind=kind, limit=limit)
    )
    return wire.JobList(data=[job_view(services.teams, job) for job in jobs])


@router.get("/jobs/{job_id}", **operation(response=wire.Job, errors=(404,)))
async def get_job(request: Request, job_id: str) -> wire.Job:
    services = _services(request)
    job = await run_in_threadpool(services.jobs.queue.get, _scope(request), job_id)
    return job_view(services.teams, job)


# 400: the job has already finished.
@router.post("/jobs/{job_id}/cancel", **operation(response=wire.Job, errors=(400, 404)))
async def cancel_job(request: Request, job_id: str) -> wire.Job:
    services = _services(request)
    job = await run_in_threadpool(services.jobs.queue.cancel, _scope(request), job_id)
    return job_view(services.teams, job)


def attach(app: FastAPI, services: Services) -> None:
    app.include_router(router)
