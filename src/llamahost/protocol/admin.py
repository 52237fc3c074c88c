"""Wire models of the admin API (``/admin/v1``): strict, so a mistyped field is a 400
naming it rather than silently ignored."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from ..config import MAX_KEY_EXPIRY_DAYS, MAX_RETENTION_DAYS

# Far above any real limit; bounded so the store (rpm a 32-bit column) and the Redis
# counters (Lua numbers are doubles, exact to 2**53) hold them exactly.
MAX_RPM = 1_000_000_000
MAX_TPM = 1_000_000_000_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TeamCreate(_Strict):
    name: str = Field(min_length=1, max_length=128)


class Team(BaseModel):
    name: str
    created_at: datetime
    active_keys: int


class TeamList(BaseModel):
    data: list[Team]


class KeyCreate(_Strict):
    team: str = Field(min_length=1, max_length=128)
    name: str | None = Field(default=None, max_length=256)
    role: Literal["member", "admin", "operator"] = "member"
    # A float: strict validation still takes a JSON integer, and the bound reaches the schema.
    expires_in_days: float | None = Field(default=None, gt=0, le=MAX_KEY_EXPIRY_DAYS)


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


class KeyList(BaseModel):
    data: list[Key]


class LimitSet(_Strict):
    team: str = Field(min_length=1, max_length=128)
    model: str | None = Field(default=None, min_length=1, max_length=128)  # none: the team default
    rpm: int | None = Field(default=None, ge=1, le=MAX_RPM)
    tpm: int | None = Field(default=None, ge=1, le=MAX_TPM)


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
    id: str  # a stored request of the same call has the same id
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
    kind: str  # chat | moderation | guardrail_input | guardrail_output | eval | fine_tune


class UsageTotals(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageList(BaseModel):
    data: list[UsageRecord]
    totals: UsageTotals  # over every matching record, not only those listed


class TeamSettingsUpdate(_Strict):
    """Only the settings given change; null returns one to the server's default."""

    store_content: StrictBool | None = None
    retention_days: StrictInt | None = Field(default=None, ge=1, le=MAX_RETENTION_DAYS)
    moderation: Literal["off", "input", "input+output"] | None = None
    moderation_action: Literal["flag", "block"] | None = None
    files_quota_bytes: StrictInt | None = Field(default=None, ge=0, le=2**62)  # operator keys only


class TeamSettings(BaseModel):
    team: str
    store_content: bool
    retention_days: int
    moderation: str
    moderation_action: str
    files_quota_bytes: int | None  # uploaded files + open uploads; null: no quota
    inherited: list[str]  # settings the team has not set: the server's defaults apply
    updated_at: datetime | None


class TeamDeleted(BaseModel):
    team: str
    deleted: bool = True
    api_keys: int
    stored_requests: int
    data_keys: int  # crypto-shredded: what they encrypted can never be read again
    files: int = 0  # uploaded files removed


class DataKeyRotated(BaseModel):
    team: str
    version: int  # seals the team's new records from now on


class StoredRequest(BaseModel):
    id: str
    team: str
    created_at: datetime
    kind: Literal["chat", "moderation"]
    surface: Literal["native", "compat"]
    model: str
    key_id: str | None
    user: str | None
    status: str
    flagged: bool
    request: dict[str, Any] | None  # None only with `error`
    response: dict[str, Any] | None
    error: str | None = None  # why the content could not be decrypted (tampered, moved, shredded key)


class StoredRequestList(BaseModel):
    data: list[StoredRequest]


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
    team: str  # `user` is a team's own id for its end user: the same value in two teams is two users


class StorageUsage(BaseModel):
    files: int  # uploaded files kept now (/v1/files), whatever the window
    bytes: int


class UsageSummary(BaseModel):
    since: datetime
    until: datetime
    bucket_seconds: int
    buckets: list[UsageBucket]  # only buckets with records, oldest first
    models: list[ModelUsage]
    users: list[EndUserUsage]  # top end users by requests
    totals: UsageCounts
    storage: StorageUsage


class EffectiveLimit(BaseModel):
    model: str  # a configured model id (its aliases share its limits)
    rpm: int
    tpm: int


class EffectiveLimits(BaseModel):
    team: str
    enabled: bool
    data: list[EffectiveLimit]
