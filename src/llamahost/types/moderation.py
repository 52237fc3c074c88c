"""A guardrail's moderation check as the meter records it (one usage record each)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Stage = Literal["input", "output"]


@dataclass(frozen=True)
class GuardrailCheck:
    """One moderation check, as recorded."""

    team: str | None
    user: str | None
    chat_model: str
    moderation_model: str
    stage: Stage
    flagged: bool
    categories: tuple[str, ...]
    action: str
    blocked: bool
    latency_ms: float
