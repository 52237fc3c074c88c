"""The admin API (``/admin/v1``): teams, keys, limits and usage, for admin keys only
(member keys get 403). An admin key administers the whole server, not just its team."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..protocol import admin as wire
from ..tenancy.limits import LimitRow, limits_model_id
from .common import parse_body, require_admin
from .tenancy_views import effective_limits, key_view, usage_list, usage_summary

router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_admin)])


def _services(request: Request):
    return request.app.state.services


def _limit(row: LimitRow) -> wire.Limit:
    return wire.Limit(team=row.team, model=row.model, rpm=row.rpm, tpm=row.tpm, updated_at=row.updated_at)


# --- teams ---------------------------------------------------------------------------


@router.get("/teams")
async def list_teams(request: Request) -> dict[str, list[wire.Team]]:
    teams = await run_in_threadpool(_services(request).keys.list_teams)
    return {"data": [wire.Team(name=n, created_at=c, active_keys=k) for n, c, k in teams]}


@router.post("/teams", response_model=wire.Team, status_code=201)
async def create_team(request: Request) -> Response:
    body = await parse_body(request, wire.TeamCreate)
    keys = _services(request).keys
    _, created = await run_in_threadpool(keys.ensure_team, body.name)
    team = next(t for t in await run_in_threadpool(keys.list_teams) if t[0] == body.name.strip())
    payload = wire.Team(name=team[0], created_at=team[1], active_keys=team[2]).model_dump(mode="json")
    return JSONResponse(payload, status_code=201 if created else 200)


# --- keys ----------------------------------------------------------------------------


@router.get("/keys")
async def list_keys(request: Request, team: str | None = None) -> dict[str, list[wire.Key]]:
    infos = await run_in_threadpool(_services(request).keys.list_keys, team)
    return {"data": [key_view(i) for i in infos]}


@router.post("/keys", response_model=wire.KeyCreated, status_code=201)
async def create_key(request: Request) -> wire.KeyCreated:
    body = await parse_body(request, wire.KeyCreate)
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days is not None else None
    secret, info = await run_in_threadpool(
        lambda: _services(request).keys.create_key(body.team, name=body.name, role=body.role, expires_in=expires)
    )
    return wire.KeyCreated(key=secret, **key_view(info).model_dump())


@router.delete("/keys/{key_id}", response_model=wire.Key)
async def revoke_key(key_id: str, request: Request) -> wire.Key:
    return key_view(await run_in_threadpool(_services(request).keys.revoke_key, key_id))


# --- limits --------------------------------------------------------------------------


@router.get("/limits", response_model=wire.LimitList)
async def list_limits(request: Request, team: str | None = None) -> wire.LimitList:
    services = _services(request)
    rows = await run_in_threadpool(services.limits.list, team)
    defaults = services.config.limits
    return wire.LimitList(
        data=[_limit(r) for r in rows],
        defaults=wire.LimitDefaults(rpm=defaults.rpm, tpm=defaults.tpm),
        enabled=defaults.enabled,
    )


@router.get("/limits/effective", response_model=wire.EffectiveLimits)
async def team_effective_limits(request: Request, team: str) -> wire.EffectiveLimits:
    return await effective_limits(request, team)


@router.put("/limits", response_model=wire.Limit)
async def set_limits(request: Request) -> wire.Limit:
    body = await parse_body(request, wire.LimitSet)
    services = _services(request)
    model = limits_model_id(services.config, body.model)
    row = await run_in_threadpool(lambda: services.limits.set(body.team, model, rpm=body.rpm, tpm=body.tpm))
    return _limit(row)


@router.delete("/limits", status_code=204)
async def clear_limits(request: Request, team: str, model: str | None = None) -> Response:
    services = _services(request)
    await run_in_threadpool(services.limits.clear, team, limits_model_id(services.config, model))
    return Response(status_code=204)


# --- usage ---------------------------------------------------------------------------


@router.get("/usage", response_model=wire.UsageList)
async def query_usage(
    request: Request,
    team: str | None = None,
    user: str | None = None,
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
) -> wire.UsageList:
    return await usage_list(request, team=team, user=user, model=model, since=since, until=until, limit=limit)


@router.get("/usage/summary", response_model=wire.UsageSummary)
async def summarize_usage(
    request: Request,
    team: str | None = None,
    since: str | None = None,
    until: str | None = None,
    bucket: str | None = None,
    top_users: int = Query(default=10, ge=0, le=100),
) -> wire.UsageSummary:
    return await usage_summary(request, team=team, since=since, until=until, bucket=bucket, top_users=top_users)
