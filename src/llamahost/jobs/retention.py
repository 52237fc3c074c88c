"""The retention purge as a periodic job kind: one loop (of however many share the
database) deletes stored content past its team's ``retention_days`` per
``[content] purge_interval_seconds``, instead of every server process doing it."""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..tenancy.retention import purge_once
from .kinds import JobContext, JobKinds

KIND = "retention.purge"


async def purge(ctx: JobContext) -> dict[str, Any]:
    purged = await purge_once(ctx.services.content)
    # Counts only: team names are PII, and job results are shown to operators as they are.
    return {"stored_requests": sum(purged.values()), "teams": len(purged)}


def register(kinds: JobKinds, config: Config) -> None:
    kinds.register_periodic(KIND, purge, every=config.content.purge_interval_seconds)
