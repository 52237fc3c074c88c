"""Per-team, per-model rate limits: requests per minute (RPM) and tokens per minute
(TPM), counted separately.

Algorithm: a sliding-window log. Each admitted request leaves one entry (its admission
time and the tokens charged to it) that counts for exactly 60 seconds. Chosen over GCRA
/ a token bucket because:

- it is exact: "N per minute" holds for *every* 60-second span. A bucket refilled
  continuously lets a full burst through and then keeps refilling, so some 60-second
  spans see close to 2N.
- tokens are reserved up front (prompt + the maximum completion) and settled to the
  real count when the request ends. Settling needs the request's own entry to adjust;
  a log keeps it, a single GCRA timestamp cannot give tokens back precisely once they
  have been folded in.

The cost is one entry per admitted request (at most ``rpm`` per team and model) plus a
running token total, so admission is O(1) amortised; only a refusal walks the log to
say when the request would fit.

State lives in this process (``MemoryLimiter``) or, with ``LLAMAHOST_REDIS_URL``, in
Redis (``RedisLimiter``), where each decision is one atomic Lua script, so any number
of llamahost processes share the counters exactly. Limits apply to the backing model
(the configured model id), not the name requested: aliases share one engine, so they
share its limits.
"""

from __future__ import annotations

import abc
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from ..config import ENV_REDIS_PREFIX, ENV_REDIS_URL, Config, env
from ..errors import InvalidRequest, NotFound, ServiceUnavailable
from ..store.db import Database, aware_utc
from ..store.models import RateLimit
from .scope import Scope

if TYPE_CHECKING:
    from .teams import TeamStore

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
# How long a process trusts the limits it read from the database: every replica sees a
# `llamahost limits set` within this time, and requests do not each pay a query.
LIMITS_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Limits:
    rpm: int
    tpm: int


@dataclass(frozen=True)
class RateState:
    """Where a team stands on one model in the current window."""

    limits: Limits
    requests: int
    tokens: int

    @property
    def remaining_requests(self) -> int:
        return max(0, self.limits.rpm - self.requests)

    @property
    def remaining_tokens(self) -> int:
        return max(0, self.limits.tpm - self.tokens)

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limits.rpm),
            "x-ratelimit-remaining-requests": str(self.remaining_requests),
            "x-ratelimit-limit-tokens": str(self.limits.tpm),
            "x-ratelimit-remaining-tokens": str(self.remaining_tokens),
        }


@dataclass(frozen=True)
class Decision:
    state: RateState
    ticket: str | None = None  # the request's entry, to settle; None when refused
    exceeded: str | None = None  # "requests" or "tokens" when refused
    retry_after: float = 0.0  # seconds until the refused request would fit


class RateLimiter(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    async def acquire(self, key: str, limits: Limits, tokens: int) -> Decision:
        """Admit one request reserving ``tokens``, or refuse it; never partially."""

    @abc.abstractmethod
    async def settle(self, key: str, ticket: str, tokens: int, limits: Limits) -> RateState:
        """Replace a request's reservation by what it really used (a refund if less)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        return None


def _refusal(state: RateState, retry_after: float | None, exceeded: str) -> Decision:
    # A request bigger than the whole token limit can never fit: say so with a full window.
    return Decision(state, exceeded=exceeded, retry_after=WINDOW_SECONDS if retry_after is None else retry_after)


# --- in this process ------------------------------------------------------------------


class _Window:
    __slots__ = ("entries", "held", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, str]] = deque()  # (admitted at, ticket), oldest first
        self.held: dict[str, int] = {}  # ticket -> tokens charged
        self.total = 0

    def expire(self, now: float) -> None:
        cutoff = now - WINDOW_SECONDS
        while self.entries and self.entries[0][0] <= cutoff:
            _, ticket = self.entries.popleft()
            self.total -= self.held.pop(ticket)


class MemoryLimiter(RateLimiter):
    """Counters in this process: exact for one server process, not shared."""

    name = "memory"

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        # Decisions are synchronous, so the event loop already serialises them; the lock
        # only matters if a limiter is shared with other threads (the benchmark).
        self._lock = threading.Lock()

    async def acquire(self, key: str, limits: Limits, tokens: int) -> Decision:
        with self._lock:
            now = time.monotonic()
            window = self._windows.setdefault(key, _Window())
            window.expire(now)
            count = len(window.entries)
            state = RateState(limits, count, window.total)
            if tokens > limits.tpm:
                return _refusal(state, None, "tokens")
            if count >= limits.rpm:
                oldest_that_must_go = window.entries[count - limits.rpm][0]
                return _refusal(state, oldest_that_must_go + WINDOW_SECONDS - now, "requests")
            if window.total + tokens > limits.tpm:
                need, freed = window.total + tokens - limits.tpm, 0
                for admitted_at, ticket in window.entries:
                    freed += window.held[ticket]
                    if freed >= need:
                        return _refusal(state, admitted_at + WINDOW_SECONDS - now, "tokens")
                return _refusal(state, None, "tokens")
            ticket = secrets.token_hex(8)
            window.entries.append((now, ticket))
            window.held[ticket] = tokens
            window.total += tokens
            return Decision(RateState(limits, count + 1, window.total), ticket=ticket)

    async def settle(self, key: str, ticket: str, tokens: int, limits: Limits) -> RateState:
        with self._lock:
            window = self._windows.setdefault(key, _Window())
            window.expire(time.monotonic())
            held = window.held.get(ticket)
            if held is not None:  # still in the window: adjust; else it already left
                window.held[ticket] = tokens
                window.total += tokens - held
            state = RateState(limits, len(window.entries), window.total)
            if not window.entries:
                del self._windows[key]
            return state


# --- in Redis -------------------------------------------------------------------------

# KEYS[1]: sorted set ticket -> admission time (ms); KEYS[2]: hash ticket -> tokens, plus
# '#total'. Time is Redis's own clock, so replicas with skewed clocks still agree.
_LUA_PRELUDE = """
local log, held = KEYS[1], KEYS[2]
local window = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function expire()
  while true do
    local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - window, 'LIMIT', 0, 256)
    if #old == 0 then return end
    local freed = 0
    local tokens = redis.call('HMGET', held, unpack(old))
    for i = 1, #tokens do freed = freed + (tonumber(tokens[i]) or 0) end
    redis.call('ZREM', log, unpack(old))
    redis.call('HDEL', held, unpack(old))
    redis.call('HINCRBY', held, '#total', -freed)
  end
end
expire()
local count = redis.call('ZCARD', log)
local total = tonumber(redis.call('HGET', held, '#total') or '0')
"""

# ARGV: window ms, rpm, tpm, tokens, ticket -> {admitted, count, total, retry ms, exceeded}
# with exceeded 0 none, 1 requests, 2 tokens; retry -1 when the request can never fit.
_LUA_ACQUIRE = _LUA_PRELUDE + """
local rpm, tpm, want, ticket = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
if want > tpm then return {0, count, total, -1, 2} end
if count >= rpm then
  local oldest = redis.call('ZRANGE', log, count - rpm, count - rpm, 'WITHSCORES')
  return {0, count, total, tonumber(oldest[2]) + window - now, 1}
end
if total + want > tpm then
  local need, freed, start = total + want - tpm, 0, 0
  while true do
    local batch = redis.call('ZRANGE', log, start, start + 255, 'WITHSCORES')
    if #batch == 0 then return {0, count, total, -1, 2} end
    for i = 1, #batch, 2 do
      freed = freed + (tonumber(redis.call('HGET', held, batch[i])) or 0)
      if freed >= need then return {0, count, total, tonumber(batch[i + 1]) + window - now, 2} end
    end
    start = start + 256
  end
end
redis.call('ZADD', log, now, ticket)
redis.call('HSET', held, ticket, want)
redis.call('HINCRBY', held, '#total', want)
redis.call('PEXPIRE', log, window + 1000)
redis.call('PEXPIRE', held, window + 1000)
return {1, count + 1, total + want, 0, 0}
"""

# ARGV: window ms, ticket, tokens -> {count, total}
_LUA_SETTLE = _LUA_PRELUDE + """
local was = redis.call('HGET', held, ARGV[2])
if was then
  local now_tokens = tonumber(ARGV[3])
  redis.call('HSET', held, ARGV[2], now_tokens)
  total = redis.call('HINCRBY', held, '#total', now_tokens - tonumber(was))
end
return {count, total}
"""

_EXCEEDED = {1: "requests", 2: "tokens"}


class RedisLimiter(RateLimiter):
    """Counters in Redis, shared by every process pointed at it."""

    name = "redis"

    def __init__(self, url: str, prefix: str = "llamahost:") -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        # Bounded waits: a hung Redis must turn into a 503, not into hung requests.
        self._redis = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._acquire = self._redis.register_script(_LUA_ACQUIRE)
        self._settle = self._redis.register_script(_LUA_SETTLE)

    def _keys(self, key: str) -> list[str]:
        # The braces are a Redis Cluster hash tag: both keys of one counter share a slot.
        return [f"{self.prefix}rl:{{{key}}}:log", f"{self.prefix}rl:{{{key}}}:held"]

    async def acquire(self, key: str, limits: Limits, tokens: int) -> Decision:
        from redis.exceptions import RedisError

        ticket = secrets.token_hex(8)
        try:
            admitted, count, total, retry_ms, exceeded = await self._acquire(
                keys=self._keys(key), args=[WINDOW_SECONDS * 1000, limits.rpm, limits.tpm, tokens, ticket]
            )
        except RedisError as exc:
            # Failing closed: without its counters the server cannot keep its promise.
            log.error("rate limiter: Redis at %s failed: %s", self.url, exc)
            raise ServiceUnavailable(
                "the rate limiter is unavailable; retry shortly", code="rate_limiter_unavailable",
                headers={"Retry-After": "1"},
            ) from None
        state = RateState(limits, int(count), int(total))
        if admitted:
            return Decision(state, ticket=ticket)
        return _refusal(state, None if retry_ms < 0 else retry_ms / 1000, _EXCEEDED[int(exceeded)])

    async def settle(self, key: str, ticket: str, tokens: int, limits: Limits) -> RateState:
        count, total = await self._settle(keys=self._keys(key), args=[WINDOW_SECONDS * 1000, ticket, tokens])
        return RateState(limits, int(count), int(total))

    async def close(self) -> None:
        await self._redis.aclose()


def build_limiter(config: Config) -> RateLimiter | None:
    if not config.limits.enabled:
        return None
    url = env(ENV_REDIS_URL)
    if url:
        return RedisLimiter(url, env(ENV_REDIS_PREFIX) or "llamahost:")
    return MemoryLimiter()


# --- the limits themselves, in the database -------------------------------------------


def limits_model_id(config: Config, name: str | None) -> str | None:
    """Limits apply to a backing model: an alias stands for its model's id; a name the
    configuration does not know is refused rather than stored to match nothing."""
    if name is None:
        return None
    model_id = config.model_id_for(name)
    if model_id is None:
        known = ", ".join(n for m in config.models for n in m.names)
        raise NotFound(f"model {name!r} is not configured; known: {known}", param="model", code="model_not_found")
    return model_id


@dataclass(frozen=True)
class LimitRow:
    team: str
    model: str | None  # None: the team's default for every model
    rpm: int | None  # None: inherited
    tpm: int | None
    updated_at: datetime


class LimitStore:
    """Effective limits for (team, model): the team's row for the model, else the team's
    default row, else the server's ``[limits]``; each of RPM and TPM resolved on its own."""

    def __init__(self, db: Database, defaults: Limits, teams: TeamStore) -> None:
        self.db = db
        self.defaults = defaults
        self.teams = teams
        self._cache: dict[tuple[int, str], tuple[float, Limits]] = {}

    def cached(self, team_id: int, model_id: str) -> Limits | None:
        hit = self._cache.get((team_id, model_id))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def effective(self, team_id: int, model_id: str) -> Limits:
        with self.db.session() as s:
            rows = s.scalars(
                select(RateLimit).where(
                    RateLimit.team_id == team_id, (RateLimit.model == model_id) | RateLimit.model.is_(None)
                )
            ).all()
        specific = next((r for r in rows if r.model is not None), None)
        default = next((r for r in rows if r.model is None), None)

        def pick(field: str) -> int:
            for row in (specific, default):
                if row is not None and getattr(row, field) is not None:
                    return getattr(row, field)
            return getattr(self.defaults, field)

        limits = Limits(rpm=pick("rpm"), tpm=pick("tpm"))
        self._cache[(team_id, model_id)] = (time.monotonic() + LIMITS_CACHE_SECONDS, limits)
        return limits

    def effective_for_team(self, scope: Scope, team: str, model_ids: list[str]) -> list[tuple[str, Limits]]:
        """What ``team`` may use of each of ``model_ids`` (configured model ids) now."""
        team_id = scope.team(self.teams, team)
        return [(model_id, self.effective(team_id, model_id)) for model_id in model_ids]

    def set(
        self, scope: Scope, team: str, model: str | None, *, rpm: int | None = None, tpm: int | None = None
    ) -> LimitRow:
        """Set a team's limits (only the values given change)."""
        if rpm is None and tpm is None:
            raise InvalidRequest("give rpm, tpm or both", param="rpm")
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 1:
                raise InvalidRequest(f"{name} must be at least 1", param=name)
        team_id = scope.team(self.teams, team)
        with self.db.session() as s:
            where = RateLimit.model.is_(None) if model is None else RateLimit.model == model
            row = s.scalar(select(RateLimit).where(RateLimit.team_id == team_id, where))
            if row is None:
                row = RateLimit(team_id=team_id, model=model)
                s.add(row)
            if rpm is not None:
                row.rpm = rpm
            if tpm is not None:
                row.tpm = tpm
            row.updated_at = datetime.now(UTC)
            s.flush()
            self._cache.clear()
            return LimitRow(team.strip(), model, row.rpm, row.tpm, aware_utc(row.updated_at))

    def clear(self, scope: Scope, team: str, model: str | None) -> None:
        """Remove a team's row, so the team falls back to its default / the server's."""
        team_id = scope.team(self.teams, team)
        with self.db.session() as s:
            where = RateLimit.model.is_(None) if model is None else RateLimit.model == model
            row = s.scalar(select(RateLimit).where(RateLimit.team_id == team_id, where))
            if row is None:
                what = "default limits" if model is None else f"limits for model {model!r}"
                raise NotFound(f"team {team!r} has no {what}", param="model" if model else "team")
            s.delete(row)
            self._cache.clear()

    def list(self, scope: Scope, team: str | None = None) -> list[LimitRow]:
        team_id = scope.team_filter(self.teams, team)
        with self.db.session() as s:
            query = select(RateLimit)
            if team_id is not None:
                query = query.where(RateLimit.team_id == team_id)
            rows = s.scalars(query).all()
        limits = [LimitRow(self.teams.name(r.team_id), r.model, r.rpm, r.tpm, aware_utc(r.updated_at)) for r in rows]
        # Names are encrypted, so the database cannot sort by them.
        return sorted(limits, key=lambda r: (r.team, r.model or ""))
