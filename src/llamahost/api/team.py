"""The team API (``/team/v1``): any valid key, admin or member, sees and manages its own
team only: who it is, the team's keys, usage and effective limits. The team comes from
the key, never from the request, so a member cannot reach another team's data. This is
what the dashboard uses when signed in with a member key; admin keys also have
``/admin/v1`` (their own team), operator keys ``/admin/v1`` for every team."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidRequest
from ..http_docs import DECRYPTING_ERRORS, error_responses, operation
from ..protocol import admin as wire
from ..protocol import team as team_wire
from ..tenancy.keys import KEY_PREFIX, Principal
from ..tenancy.scope import Scope
from .common import authenticate, parse_body
from .services import Services
from .tenancy_views import effective_limits, key_view, usage_list, usage_summary


async def _no_team_parameter(request: Request) -> None:
    # Ignoring it would silently answer about the caller's team to a script that asked
    # about another: refuse it, naming the parameter.
    if "team" in request.query_params:
        raise InvalidRequest(
            "team: the team API answers for the key's own team only; use /admin/v1 with an admin key "
            "for other teams",
            param="team",
        )


# 400 on every route: a `team` query parameter is refused.
router = APIRouter(
    prefix="/team/v1",
    dependencies=[Depends(authenticate), Depends(_no_team_parameter)],
    responses=error_responses(400, 401),
)


def _principal(request: Request) -> Principal:
    return request.state.principal


def _own_team(request: Request) -> Scope:
    """Whatever the key's role (an operator's too), this API is about its own team."""
    return Scope(_principal(request).team_id)


@router.get("/me", **operation(response=team_wire.Me))
async def who_am_i(request: Request) -> team_wire.Me:
    principal = _principal(request)
    return team_wire.Me(
        team=principal.team_name, role=principal.role, key_id=principal.key_id, prefix=f"{KEY_PREFIX}{principal.key_id}"
    )


@router.get("/keys", **operation(response=wire.KeyList))
async def list_team_keys(request: Request) -> wire.KeyList:
    keys = request.app.state.services.keys
    infos = await run_in_threadpool(keys.list_keys, _own_team(request))
    return wire.KeyList(data=[key_view(i) for i in infos])


@router.post("/keys", **operation(body=team_wire.TeamKeyCreate, response=wire.KeyCreated, status=201))
async def create_team_key(request: Request) -> wire.KeyCreated:
    body = await parse_body(request, team_wire.TeamKeyCreate)
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days is not None else None
    keys, team = request.app.state.services.keys, _principal(request).team_name
    secret, info = await run_in_threadpool(
        lambda: keys.create_key(team, name=body.name, role="member", expires_in=expires)
    )
    return wire.KeyCreated(key=secret, **key_view(info).model_dump())


@router.delete("/keys/{key_id}", **operation(response=wire.Key, errors=(403, 404)))
async def revoke_team_key(key_id: str, request: Request) -> wire.Key:
    principal = _principal(request)
    keys = request.app.state.services.keys
    info = await run_in_threadpool(
        lambda: keys.revoke_key(key_id, _own_team(request), caller_role=principal.role)
    )
    return key_view(info)


@router.get("/usage", **operation(response=wire.UsageList, errors=DECRYPTING_ERRORS))
async def query_team_usage(
    request: Request,
    user: str | None = None,
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
) -> wire.UsageList:
    return await usage_list(
        request, _own_team(request), team=None, user=user, model=model, since=since, until=until, limit=limit
    )


@router.get("/usage/summary", **operation(response=wire.UsageSummary, errors=DECRYPTING_ERRORS))
async def summarize_team_usage(
    request: Request,
    since: str | None = None,
    until: str | None = None,
    bucket: str | None = None,
    top_users: int = Query(default=10, ge=0, le=100),
) -> wire.UsageSummary:
    return await usage_summary(
        request, _own_team(request), team=None, since=since, until=until, bucket=bucket, top_users=top_users
    )


@router.get("/limits", **operation(response=wire.EffectiveLimits))
async def team_limits(request: Request) -> wire.EffectiveLimits:
    return await effective_limits(request, _own_team(request), _principal(request).team_name)


def attach(app: FastAPI, services: Services) -> None:
    app.include_router(router)
