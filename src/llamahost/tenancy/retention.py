"""Retention: stored content older than its team's ``retention_days`` is deleted by a
background task in every server process (deleting is idempotent, so replicas and
workers purging the same database do no harm) and by ``llamahost purge``."""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from .content import ContentStore

log = logging.getLogger(__name__)


async def purge_once(content: ContentStore) -> dict[str, int]:
    purged = await run_in_threadpool(content.purge)
    if purged:  # counts only: team names are PII
        log.info("retention: purged %d expired stored requests of %d teams", sum(purged.values()), len(purged))
    return purged


async def purge_periodically(content: ContentStore, interval_seconds: float) -> None:
    """Purge at start, then every ``interval_seconds``; a failed purge is logged and retried next time."""
    while True:
        try:
            await purge_once(content)
        except Exception:
            log.exception("retention: the purge of expired content failed; retrying in %.0f s", interval_seconds)
        await asyncio.sleep(interval_seconds)
