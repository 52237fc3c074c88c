"""Wire models of the admin API (``/admin/v1``): strict, so a mistyped field is a 400
naming it rather than silently ignored."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TeamCreate(_Strict):
    name: str = Field(min_length=1, max_length=128)


class Team(BaseModel):
    name: str
    created_at: datetime
    active_keys: int


class KeyCreate(_Strict):
    team: str = Field(min_length=1, max_length=128)
    name: str | None = Field(default=None, max_length=256)
    role: Literal["member", "admin"] = "member"
    expires_in_days: StrictFloat | StrictInt | None = Field(default=None, gt=0)


class Key(BaseModel):
    id: str
    prefix: str
    team: str
    name: str | None
    role: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(Key):
    key: str  # the secret, returned only here


class LimitSet(_Strict):
    team: str = Field(min_length=1, max_length=128)
    model: str | None = Field(default=None, min_length=1, max_length=128)  # none: the team default
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class Limit(BaseModel):
    team: str
    model: str | None
    rpm: int | None
    tpm: int | None
    updated_at: datetime


class LimitDefaults(BaseModel):
    rpm: int
    tpm: int


class LimitList(BaseModel):
    data: list[Limit]
    defaults: LimitDefaults  # the server's [limits], for whatever a team does not set
    enabled: bool


class UsageRecord(BaseModel):
    created_at: datetime
    team: str
    key_id: str | None
    model: str
    user: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    latency_ms: int
    status: str
    stop_reason: str | None


class UsageTotals(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageList(BaseModel):
    data: list[UsageRecord]
    totals: UsageTotals  # over every matching record, not only those listed


class UsageCounts(BaseModel):
    requests: int  # every usage record, rate-limited ones included
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    rate_limited: int  # requests refused by a rate limit (429)


class UsageBucket(UsageCounts):
    start: datetime  # UTC, a multiple of bucket_seconds since the epoch
    model: str  # as requested


class ModelUsage(UsageCounts):
    model: str


class EndUserUsage(UsageCounts):
    user: str


class UsageSummary(BaseModel):
    since: datetime
    until: datetime
    bucket_seconds: int
    buckets: list[UsageBucket]  # only buckets with records, oldest first
    models: list[ModelUsage]
    users: list[EndUserUsage]  # top end users by requests
    totals: UsageCounts


class EffectiveLimit(BaseModel):
    model: str  # a configured model id (its aliases share its limits)
    rpm: int
    tpm: int


class EffectiveLimits(BaseModel):
    team: str
    enabled: bool
    data: list[EffectiveLimit]
