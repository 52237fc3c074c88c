"""The admin API (``/admin/v1``): teams, keys, limits and usage. Operator keys
administer every team; a team's admin key its own team only (``tenancy/scope.py``);
member keys get 403. Team settings and stored content are in ``admin_teams.py``."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..http_docs import DECRYPTING_ERRORS, error_responses, operation
from ..protocol import admin as wire
from ..tenancy.limits import LimitRow, limits_model_id
from ..tenancy.scope import OPERATOR, Scope
from ..tenancy.teams import TeamInfo
from .common import parse_body, require_admin
from .services import Services
from .tenancy_views import effective_limits, key_view, usage_list, usage_summary

router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_admin)], responses=error_responses(401, 403))


def services(request: Request):
    return request.app.state.services


def scope(request: Request) -> Scope:
    """The caller's scope: every handler reading team data passes it to the store."""
    return request.state.principal.scope


def _limit(row: LimitRow) -> wire.Limit:
    return wire.Limit(team=row.team, model=row.model, rpm=row.rpm, tpm=row.tpm, updated_at=row.updated_at)


def _team(info: TeamInfo) -> wire.Team:
    return wire.Team(name=info.name, created_at=info.created_at, active_keys=info.active_keys)


# --- teams ---------------------------------------------------------------------------


@router.get("/teams", **operation(response=wire.TeamList))
async def list_teams(request: Request) -> wire.TeamList:
    teams = await run_in_threadpool(services(request).keys.list_teams, scope(request))
    return wire.TeamList(data=[_team(t) for t in teams])


@router.post(
    "/teams",
    **operation(
        body=wire.TeamCreate, response=wire.Team, status=201, other_success={200: (wire.Team, "The team already existed")}
    ),
)
async def create_team(request: Request) -> Response:
    body = await parse_body(request, wire.TeamCreate)
    scope(request).require_operator("creating a team")
    keys = services(request).keys
    team_id, created = await run_in_threadpool(keys.ensure_team, body.name)
    team = next(t for t in await run_in_threadpool(keys.list_teams, Scope(team_id)))
    return JSONResponse(_team(team).model_dump(mode="json"), status_code=201 if created else 200)


# --- keys ----------------------------------------------------------------------------


@router.get("/keys", **operation(response=wire.KeyList, errors=(404,)))
async def list_keys(request: Request, team: str | None = None) -> wire.KeyList:
    infos = await run_in_threadpool(services(request).keys.list_keys, scope(request), team)
    return wire.KeyList(data=[key_view(i) for i in infos])


@router.post("/keys", **operation(body=wire.KeyCreate, response=wire.KeyCreated, status=201, errors=(404,)))
async def create_key(request: Request) -> wire.KeyCreated:
    body = await parse_body(request, wire.KeyCreate)
    caller = scope(request)
    if body.role == OPERATOR:
        caller.require_operator("creating an operator key")
    keys = services(request).keys
    if not caller.is_operator:
        # A team admin makes keys for its own team only (an operator may also create teams).
        await run_in_threadpool(caller.team, keys.teams, body.team)
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days is not None else None
    secret, info = await run_in_threadpool(
        lambda: keys.create_key(body.team, name=body.name, role=body.role, expires_in=expires)
    )
    return wire.KeyCreated(key=secret, **key_view(info).model_dump())


@router.delete("/keys/{key_id}", **operation(response=wire.Key, errors=(404,)))
async def revoke_key(key_id: str, request: Request) -> wire.Key:
    keys, principal = services(request).keys, request.state.principal
    return key_view(await run_in_threadpool(
        lambda: keys.revoke_key(key_id, principal.scope, caller_role=principal.role)
    ))


# --- limits --------------------------------------------------------------------------


@router.get("/limits", **operation(response=wire.LimitList, errors=(404,)))
async def list_limits(request: Request, team: str | None = None) -> wire.LimitList:
    rows = await run_in_threadpool(services(request).limits.list, scope(request), team)
    defaults = services(request).config.limits
    return wire.LimitList(
        data=[_limit(r) for r in rows],
        defaults=wire.LimitDefaults(rpm=defaults.rpm, tpm=defaults.tpm),
        enabled=defaults.enabled,
    )


@router.get("/limits/effective", **operation(response=wire.EffectiveLimits, errors=(404,)))
async def team_effective_limits(request: Request, team: str) -> wire.EffectiveLimits:
    return await effective_limits(request, scope(request), team)


@router.put("/limits", **operation(body=wire.LimitSet, response=wire.Limit, errors=(404,)))
async def set_limits(request: Request) -> wire.Limit:
    body = await parse_body(request, wire.LimitSet)
    store = services(request).limits
    model = limits_model_id(services(request).config, body.model)
    row = await run_in_threadpool(
        lambda: store.set(scope(request), body.team, model, rpm=body.rpm, tpm=body.tpm)
    )
    return _limit(row)


@router.delete("/limits", **operation(status=204, errors=(404,)))
async def clear_limits(request: Request, team: str, model: str | None = None) -> Response:
    store = services(request).limits
    model_id = limits_model_id(services(request).config, model)
    await run_in_threadpool(store.clear, scope(request), team, model_id)
    return Response(status_code=204)


# --- usage ---------------------------------------------------------------------------


@router.get("/usage", **operation(response=wire.UsageList, errors=(404, *DECRYPTING_ERRORS)))
async def query_usage(
    request: Request,
    team: str | None = None,
    user: str | None = None,
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
) -> wire.UsageList:
    return await usage_list(
        request, scope(request), team=team, user=user, model=model, since=since, until=until, limit=limit
    )


@router.get("/usage/summary", **operation(response=wire.UsageSummary, errors=(404, *DECRYPTING_ERRORS)))
async def summarize_usage(
    request: Request,
    team: str | None = None,
    since: str | None = None,
    until: str | None = None,
    bucket: str | None = None,
    top_users: int = Query(default=10, ge=0, le=100),
) -> wire.UsageSummary:
    return await usage_summary(
        request, scope(request), team=team, since=since, until=until, bucket=bucket, top_users=top_users
    )


def attach(app: FastAPI, services: Services) -> None:
    app.include_router(router)
