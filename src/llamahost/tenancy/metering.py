"""Rate limiting and usage accounting for one chat request, whichever surface it came
from: the ``Meter`` the chat service calls (``chat/service.py``) to admit a request and
to report how it ended.

Admission reserves prompt tokens + the request's maximum completion tokens against the
team's TPM and one request against its RPM, atomically; the end settles the
reservation to the tokens really processed (a refund for a short answer, a failure or a
disconnect; the request itself still counts against RPM) and writes one usage record.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from .. import observability as obs
from ..errors import RateLimited
from ..types.chat import ChatRequest, Outcome
from .content import ChatContent, ContentStore
from .journal import UsageJournal
from .keys import Principal
from .limits import Decision, Limits, LimitStore, RateLimiter, RateState
from .usage import UsageStore, UsageWriter, new_record_id

if TYPE_CHECKING:
    from ..types.moderation import GuardrailCheck

log = logging.getLogger(__name__)


class Metering:
    """Per process: the limiter, the limits and usage stores, and end-of-request work in flight."""

    def __init__(
        self,
        limiter: RateLimiter | None,
        limits: LimitStore,
        usage: UsageStore,
        content: ContentStore | None = None,
        journal_dir: Path | None = None,
    ) -> None:
        self.limiter = limiter
        self.limits = limits
        self.usage = usage
        self.usage_writer = UsageWriter(usage, content)
        self._journal_dir = journal_dir
        # End-of-request work runs as tasks of its own so a cancelled request cannot
        # interrupt it; they are kept here until done (asyncio holds tasks weakly).
        self._pending: set[asyncio.Task] = set()

    def meter(
        self,
        principal: Principal,
        user: str | None,
        request: ChatRequest | None = None,
        surface: str = "native",
        kind: str = "chat",
    ) -> Meter:
        """``request``: the chat request whose content is kept (if the team keeps content);
        ``kind``: the usage record's kind (``eval`` for an eval run's generations)."""
        return Meter(self, principal, user, request, surface, kind)

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def start(self) -> None:
        """Open this process's usage journal (in the serving process, not in a parent
        that only forks workers) and replay what dead processes left in theirs."""
        if self._journal_dir is not None and self.usage_writer.journal is None:
            self.usage_writer.journal = UsageJournal(self._journal_dir, self.usage.keyring.journal_key)
        await self.usage_writer.start()

    async def drain(self) -> None:
        """Wait for end-of-request work (settlements, usage records) at shutdown."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        await self.usage_writer.flush()

    async def close(self) -> None:
        await self.drain()
        await self.usage_writer.close()
        if self.limiter is not None:
            await self.limiter.close()


class Meter:
    def __init__(
        self,
        metering: Metering,
        principal: Principal,
        user: str | None,
        request: ChatRequest | None = None,
        surface: str = "native",
        kind: str = "chat",
    ) -> None:
        self._metering = metering
        self.kind = kind
        self.principal = principal
        self.user = user
        self._request = request
        self._surface = surface
        self._request_id = obs.request_id_var.get()
        self.state: RateState | None = None  # None until the limiter has been asked
        self.limiter_seconds = 0.0  # time the request waited for admission, for Server-Timing
        self._key: str | None = None
        self._limits: Limits | None = None
        self._ticket: str | None = None
        self._reserved = 0
        self._ended = False

    async def admit(self, model_id: str, prompt_tokens: int, max_tokens: int) -> None:
        metering = self._metering
        if metering.limiter is None:
            return
        began = time.perf_counter()
        team_id = self.principal.team_id
        limits = metering.limits.cached(team_id, model_id)
        if limits is None:
            limits = await run_in_threadpool(metering.limits.effective, team_id, model_id)
        self._key, self._limits = f"{team_id}:{model_id}", limits
        tokens = prompt_tokens + max_tokens
        decision = await metering.limiter.acquire(self._key, limits, tokens)
        self.limiter_seconds += time.perf_counter() - began
        self.state = decision.state
        if decision.ticket is None:
            raise self._refusal(decision, model_id, prompt_tokens, max_tokens)
        self._ticket = decision.ticket
        self._reserved = tokens

    def _refusal(self, decision: Decision, model_id: str, prompt_tokens: int, max_tokens: int) -> RateLimited:
        limits = decision.state.limits
        team = self.principal.team_name
        wait = max(decision.retry_after, 0.001)
        if decision.exceeded == "requests":
            message = (
                f"rate limit reached: team {team!r} may make {limits.rpm} requests per minute "
                f"to model {model_id!r}; retry in {wait:.1f} s"
            )
            code = "requests_per_minute_exceeded"
        elif prompt_tokens + max_tokens > limits.tpm:
            message = (
                f"this request needs up to {prompt_tokens + max_tokens} tokens (prompt {prompt_tokens} + "
                f"max_completion_tokens {max_tokens}), more than team {team!r}'s limit of {limits.tpm} tokens "
                f"per minute on model {model_id!r}; shorten the prompt or lower max_completion_tokens"
            )
            code = "tokens_per_minute_exceeded"
        else:
            message = (
                f"rate limit reached: team {team!r} may use {limits.tpm} tokens per minute on model "
                f"{model_id!r}, {decision.state.remaining_tokens} remain and this request reserves "
                f"{prompt_tokens + max_tokens} (prompt {prompt_tokens} + max_completion_tokens {max_tokens}); "
                f"retry in {wait:.1f} s"
            )
            code = "tokens_per_minute_exceeded"
        headers = {
            **self.headers(),
            "retry-after": str(math.ceil(wait)),
            "retry-after-ms": str(max(1, round(wait * 1000))),
        }
        obs.RATE_LIMIT_REJECTIONS.labels(code).inc()
        return RateLimited(message, code=code, headers=headers)

    def end(self, outcome: Outcome) -> None:
        """Record usage and settle the reservation without making the response wait: the
        usage record is queued (the writer batches it), the settlement runs as a task. The
        response's headers count the real usage at once: the state seen at admission with
        this request's reservation replaced by what it used (the settlement makes the
        shared counters agree a round trip later)."""
        if self._ended:
            return
        self._ended = True
        if self._ticket is not None:
            if self.state is not None:
                used = outcome.prompt_tokens + outcome.completion_tokens
                self.state = replace(self.state, tokens=max(0, self.state.tokens - self._reserved + used))
            self._metering._spawn(self._settle(outcome.prompt_tokens + outcome.completion_tokens))
        self._record_usage(outcome)

    async def _settle(self, tokens: int) -> None:
        limiter = self._metering.limiter
        assert limiter is not None and self._key is not None and self._ticket is not None and self._limits is not None
        try:
            await limiter.settle(self._key, self._ticket, tokens, self._limits)
        except Exception:  # the reservation stands: the team is over- not under-charged
            log.exception("could not settle a rate-limit reservation")

    def _record_usage(self, outcome: Outcome) -> None:
        content = None
        if self._request is not None:
            # The writer's thread decides (the team's store_content) and encrypts.
            content = ChatContent(
                record_id=new_record_id(),
                created_at=datetime.now(UTC),
                team_id=self.principal.team_id,
                key_id=self.principal.key_id,
                user=self.user,
                kind=self.kind,
                surface=self._surface,
                model=outcome.model,
                status=outcome.status,
                flagged=bool(self._request.moderation_flags),
                request=self._request,
                outcome=outcome,
                request_id=self._request_id,
            )
        self._record(
            content=content,
            model=outcome.model,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            latency_ms=outcome.latency_ms,
            status=outcome.status,
            stop_reason=outcome.stop_reason,
            kind=self.kind,
        )

    def record_check(self, check: GuardrailCheck) -> None:
        """One usage record per guardrail check: billable work, and the audit trail of
        what moderation said about this team's traffic."""
        self._record(
            model=check.moderation_model,
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=check.latency_ms,
            status="blocked" if check.blocked else "flagged" if check.flagged else "ok",
            stop_reason=None,
            kind=f"guardrail_{check.stage}",
        )

    def _record(self, **fields) -> None:
        """Queue a usage record of this request's key and end user."""
        self._metering.usage_writer.record(
            team_id=self.principal.team_id, key_id=self.principal.key_id, user=self.user, **fields
        )

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers for where the team stands now (none when limits
        are off or the request never reached the limiter), plus the limiter's time."""
        if self.state is None:
            return {}
        return {**self.state.headers(), "server-timing": f"ratelimit;dur={self.limiter_seconds * 1000:.3f}"}
