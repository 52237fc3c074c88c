"""Guardrails: automatic moderation of chat completions (beyond the hosted API).

A policy says what to check (``off`` | ``input`` | ``input+output``) and what to do
with a flagged message (``flag``: record it and carry on; ``block``: refuse). Input is
checked before the request reaches the engine; output on the finished reply (for a
stream, before its final events, which a blocked reply replaces with an error event).

The policy is the team's own (``moderation`` and ``moderation_action`` in its settings),
the server-wide ``[moderation]`` section being every team's default. The checks run
inside ChatService.start's metered section, so a blocked request is a usage record with
status ``content_policy``, and every check is a usage record of its own (kind
``guardrail_input`` / ``guardrail_output``, model the moderation model).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from starlette.concurrency import run_in_threadpool

from ..config import GuardrailConfig
from ..errors import ContentPolicyViolation
from ..observability import UserLogging
from ..types.chat import ChatMessage, ChatRequest
from ..types.moderation import GuardrailCheck, Stage
from .llama_guard import Verdict
from .service import ModerationService

if TYPE_CHECKING:
    from ..tenancy.settings import SettingsStore

log = logging.getLogger("llamahost.moderation")



@dataclass(frozen=True)
class GuardrailPolicy:
    mode: Literal["off", "input", "input+output"]
    action: Literal["flag", "block"]
    model: str  # moderation model name

    @classmethod
    def from_config(cls, config: GuardrailConfig) -> GuardrailPolicy:
        return cls(mode=config.mode, action=config.action, model=config.model)

    @property
    def checks_input(self) -> bool:
        return self.mode in ("input", "input+output")

    @property
    def checks_output(self) -> bool:
        return self.mode == "input+output"


class CheckRecorder(Protocol):
    def record(self, check: GuardrailCheck) -> None: ...


class LogRecorder:
    """Writes each check to the log (the usage record is written by the request's meter)."""

    def __init__(self, user_logging: UserLogging | None = None) -> None:
        self.user_logging = user_logging or UserLogging()

    def record(self, check: GuardrailCheck) -> None:
        log.info(
            "moderation stage=%s team=%s%s chat_model=%s model=%s flagged=%s categories=%s action=%s "
            "blocked=%s latency_ms=%.1f",
            check.stage, check.team, self.user_logging.text(check.user), check.chat_model, check.moderation_model, check.flagged,
            ",".join(check.categories) or "-", check.action, check.blocked, check.latency_ms,
        )


class Guardrails:
    def __init__(
        self,
        config: GuardrailConfig,
        moderation: ModerationService,
        recorder: CheckRecorder | None = None,
        settings: SettingsStore | None = None,
    ) -> None:
        self.default = GuardrailPolicy.from_config(config)
        self.moderation = moderation
        self.recorder: CheckRecorder = recorder or LogRecorder()
        self.settings = settings

    async def policy_for(self, request: ChatRequest) -> GuardrailPolicy | None:
        """The calling team's policy (the server's default for internal calls), or None
        when nothing is checked."""
        policy = self.default
        if request.team_id is not None and self.settings is not None:
            team = self.settings.cached(request.team_id)
            if team is None:
                team = await run_in_threadpool(self.settings.effective, request.team_id)
            policy = GuardrailPolicy(mode=team.moderation, action=team.moderation_action, model=policy.model)
        return policy if policy.mode != "off" else None

    async def check(
        self,
        request: ChatRequest,
        policy: GuardrailPolicy,
        stage: Stage,
        messages: Sequence[ChatMessage],
        on_check: Callable[[GuardrailCheck], None] | None = None,
    ) -> Verdict:
        """Moderate the last of ``messages``; raise ContentPolicyViolation if the policy
        blocks it. ``on_check`` gets the check as recorded (for the request's usage)."""
        started = time.monotonic()
        moderation = await self.moderation.moderate(policy.model, messages)
        verdict = moderation.verdict
        blocked = verdict.flagged and policy.action == "block"
        if verdict.flagged:
            request.moderation_flags.append({"stage": stage, "categories": list(verdict.categories), "blocked": blocked})
        check = GuardrailCheck(
            team=request.team, user=request.user, chat_model=request.model, moderation_model=moderation.model,
            stage=stage, flagged=verdict.flagged, categories=verdict.categories, action=policy.action,
            blocked=blocked, latency_ms=(time.monotonic() - started) * 1000,
        )
        self.recorder.record(check)
        if on_check is not None:
            on_check(check)
        if blocked:
            named = ", ".join(verdict.categories) or "unspecified"
            if stage == "input":
                raise ContentPolicyViolation(
                    f"the input was flagged by moderation ({named}) and blocked by this server's content policy",
                    categories=verdict.categories,
                    param=f"messages[{len(request.messages) - 1}]",
                    code="input_flagged",
                )
            raise ContentPolicyViolation(
                f"the reply was flagged by moderation ({named}) and blocked by this server's content policy",
                categories=verdict.categories,
                code="output_flagged",
            )
        return verdict

    async def check_input(
        self, request: ChatRequest, on_check: Callable[[GuardrailCheck], None] | None = None
    ) -> Callable[[str], Awaitable[object]] | None:
        """The chat service's ``Guard``: check the input under the request's policy and
        return the check its reply must pass (None when replies are not checked)."""
        policy = await self.policy_for(request)
        if policy is None:
            return None
        if policy.checks_input:
            await self.check(request, policy, "input", request.messages, on_check)
        if not policy.checks_output:
            return None

        async def check_output(text: str) -> object:
            reply = ChatMessage(role="assistant", content=text)
            return await self.check(request, policy, "output", [*request.messages, reply], on_check)

        return check_output

