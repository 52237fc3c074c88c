"""Admin API for one team's data: its settings, its stored requests (abuse review), its
data key, and deleting it. Every route resolves ``{team}`` through the caller's scope:
a team admin key reaches its own team only, any other is 404."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from ..http_docs import DECRYPTING_ERRORS, error_responses, operation
from ..protocol import admin as wire
from ..tenancy.content import StoredEntry
from ..tenancy.settings import SettingsView
from ..tenancy.usage import parse_time
from .admin import scope, services
from .common import parse_body, require_admin
from .services import Services

# Every route resolves {team}: a team the caller may not see is 404.
router = APIRouter(
    prefix="/admin/v1/teams/{team}", dependencies=[Depends(require_admin)], responses=error_responses(401, 403, 404)
)


def _settings(team: str, view: SettingsView) -> wire.TeamSettings:
    inherited = [name for name in type(view.settings).model_fields if name not in view.overridden]
    return wire.TeamSettings(team=team, **view.settings.model_dump(), inherited=inherited, updated_at=view.updated_at)


def _stored(entry: StoredEntry) -> wire.StoredRequest:
    return wire.StoredRequest(**entry.__dict__)


@router.get("/settings", **operation(response=wire.TeamSettings))
async def get_settings(team: str, request: Request) -> wire.TeamSettings:
    s = services(request)
    team_id = await run_in_threadpool(scope(request).team, s.teams, team)
    return _settings(team, await run_in_threadpool(s.settings.view, team_id))


@router.patch("/settings", **operation(body=wire.TeamSettingsUpdate, response=wire.TeamSettings))
async def update_settings(team: str, request: Request) -> wire.TeamSettings:
    body = await parse_body(request, wire.TeamSettingsUpdate)
    s = services(request)
    team_id = await run_in_threadpool(scope(request).team, s.teams, team)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if "files_quota_bytes" in changes:  # a limit on the team: its own admin may not lift it
        scope(request).require_operator("setting a team's storage quota (files_quota_bytes)")
    return _settings(team, await run_in_threadpool(s.settings.update, team_id, changes))


@router.delete("", **operation(response=wire.TeamDeleted))
async def delete_team(team: str, request: Request) -> wire.TeamDeleted:
    caller = scope(request)
    caller.require_operator("deleting a team")
    deleted = await run_in_threadpool(services(request).teams.delete, team)
    return wire.TeamDeleted(**deleted.__dict__)


@router.post("/rotate-data-key", **operation(response=wire.DataKeyRotated, errors=DECRYPTING_ERRORS))
async def rotate_data_key(team: str, request: Request) -> wire.DataKeyRotated:
    s = services(request)
    team_id = await run_in_threadpool(scope(request).team, s.teams, team)
    version = await run_in_threadpool(s.keyring.rotate_team_key, team_id)
    return wire.DataKeyRotated(team=team, version=version)


@router.get("/requests", **operation(response=wire.StoredRequestList, errors=DECRYPTING_ERRORS))
async def list_stored_requests(
    team: str,
    request: Request,
    user: str | None = None,
    since: str | None = None,
    until: str | None = None,
    flagged: bool | None = None,
    kind: Literal["chat", "moderation"] | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> wire.StoredRequestList:
    since_at = parse_time(since, "since") if since else None
    until_at = parse_time(until, "until") if until else None
    s = services(request)
    await s.metering.usage_writer.flush()  # what this process has queued is readable
    entries = await run_in_threadpool(
        lambda: s.content.query(
            scope(request), team, user=user, since=since_at, until=until_at, flagged=flagged, kind=kind, limit=limit
        )
    )
    return wire.StoredRequestList(data=[_stored(e) for e in entries])


@router.get("/requests/{record_id}", **operation(response=wire.StoredRequest, errors=DECRYPTING_ERRORS))
async def get_stored_request(team: str, record_id: str, request: Request) -> wire.StoredRequest:
    s = services(request)
    await s.metering.usage_writer.flush()
    return _stored(await run_in_threadpool(s.content.get, scope(request), team, record_id))


def attach(app: FastAPI, services: Services) -> None:
    app.include_router(router)
