"""Upload expiry as a periodic job kind (``uploads_expiry``): one loop (of however many
share the database) purges upload sessions idle past ``[files] session_ttl_hours``,
files past ``[files] retention_days`` if set, and the leftovers of interrupted
completions or team deletions, every ``[files] purge_interval_seconds``. Each step is
idempotent."""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..jobs.kinds import JobContext, JobKinds

KIND = "uploads_expiry"


async def purge(ctx: JobContext) -> dict[str, Any]:
    # Counts only: job results are shown to operators as they are.
    return await ctx.to_thread(ctx.services.files.purge)


def register(kinds: JobKinds, config: Config) -> None:
    kinds.register_periodic(KIND, purge, every=config.files.purge_interval_seconds)
