"""What the chat orchestrator needs from the layers beside it, as small protocols: the
service depends on these shapes, not on tenancy's meter or safety's guardrails, so
neither of those packages is imported here (and they never import chat either).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from ..types.chat import ChatRequest, Outcome
from ..types.moderation import GuardrailCheck

# Moderates a finished reply's text; raises (a content-policy error) to block it.
OutputCheck = Callable[[str], Awaitable[object]]


class Meter(Protocol):
    async def admit(self, model_id: str, prompt_tokens: int, max_tokens: int) -> None:
        """Called before generating, with the backing model's id and the most tokens the
        request can use; raising (e.g. a 429) refuses it."""

    def end(self, outcome: Outcome) -> None:
        """Called exactly once, never blocks: updates what the caller's response reports
        (rate-limit headers) at once and leaves the rest (settling counters, writing
        usage) running in the background."""

    def record_check(self, check: GuardrailCheck) -> None:
        """A guardrail moderation check made for this request."""


class Guard(Protocol):
    async def check_input(
        self, request: ChatRequest, on_check: Callable[[GuardrailCheck], None] | None
    ) -> OutputCheck | None:
        """Moderate the request's input under its team's policy, raising to block it;
        return the check its reply must pass, or None when the reply is not checked.
        ``on_check`` gets every check made (for the request's usage records)."""
