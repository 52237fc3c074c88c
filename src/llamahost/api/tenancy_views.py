"""Tenancy data as the wire shows it, shared by the admin API and the team API: the
routers differ only in the scope they pass (``tenancy/scope.py``): the caller's scope on
``/admin/v1``, the caller's own team on ``/team/v1``."""

from __future__ import annotations

from datetime import datetime

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..protocol import admin as wire
from ..tenancy.keys import KeyInfo
from ..tenancy.scope import Scope
from ..tenancy.usage import parse_time
from ..tenancy.usage_summary import DEFAULT_BUCKET_SECONDS, Counts, parse_bucket


def key_view(info: KeyInfo) -> wire.Key:
    return wire.Key(
        id=info.key_id,
        prefix=info.prefix,
        team=info.team,
        name=info.name,
        role=info.role,
        created_at=info.created_at,
        last_used_at=info.last_used_at,
        expires_at=info.expires_at,
        revoked_at=info.revoked_at,
    )


def _time(value: str | None, param: str) -> datetime | None:
    return parse_time(value, param) if value else None


async def usage_list(
    request: Request, scope: Scope, *, team: str | None, user: str | None, model: str | None,
    since: str | None, until: str | None, limit: int,
) -> wire.UsageList:
    services = request.app.state.services
    since_at, until_at = _time(since, "since"), _time(until, "until")
    await services.metering.usage_writer.flush()  # this process's records are all counted
    entries, totals = await run_in_threadpool(
        lambda: services.usage.query(
            scope, team=team, user=user, model=model, since=since_at, until=until_at, limit=limit
        )
    )
    return wire.UsageList(
        data=[wire.UsageRecord(**e.__dict__, total_tokens=e.total_tokens) for e in entries],
        totals=wire.UsageTotals(**totals.__dict__, total_tokens=totals.total_tokens),
    )


def _counts(counts: Counts) -> dict:
    return {**counts.__dict__, "total_tokens": counts.total_tokens}


async def usage_summary(
    request: Request, scope: Scope, *, team: str | None, since: str | None, until: str | None,
    bucket: str | None, top_users: int,
) -> wire.UsageSummary:
    services = request.app.state.services
    since_at, until_at = _time(since, "since"), _time(until, "until")
    bucket_seconds = parse_bucket(bucket) if bucket is not None else DEFAULT_BUCKET_SECONDS
    await services.metering.usage_writer.flush()
    summary = await run_in_threadpool(
        lambda: services.usage.summary(
            scope,
            team=team, since=since_at, until=until_at, bucket_seconds=bucket_seconds, top_users=top_users
        )
    )
    return wire.UsageSummary(
        since=summary.since,
        until=summary.until,
        bucket_seconds=summary.bucket_seconds,
        buckets=[wire.UsageBucket(start=b.start, model=b.model, **_counts(b.counts)) for b in summary.buckets],
        models=[wire.ModelUsage(model=m, **_counts(c)) for m, c in summary.models],
        users=[wire.EndUserUsage(user=u, team=t, **_counts(c)) for u, t, c in summary.users],
        totals=wire.UsageCounts(**_counts(summary.totals)),
        storage=wire.StorageUsage(files=summary.storage.files, bytes=summary.storage.bytes),
    )


async def effective_limits(request: Request, scope: Scope, team: str) -> wire.EffectiveLimits:
    services = request.app.state.services
    model_ids = [model.id for model in services.config.models]
    rows = await run_in_threadpool(services.limits.effective_for_team, scope, team, model_ids)
    return wire.EffectiveLimits(
        team=team,
        enabled=services.config.limits.enabled,
        data=[wire.EffectiveLimit(model=m, rpm=limits.rpm, tpm=limits.tpm) for m, limits in rows],
    )
