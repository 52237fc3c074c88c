"""Retention: stored content older than its team's ``retention_days`` is deleted by the
periodic ``retention.purge`` job (``jobs/retention.py``: one job loop runs it per
``[content] purge_interval_seconds``, however many servers and workers share the
database) and at once by ``llamahost purge``."""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool

from .content import ContentStore

log = logging.getLogger(__name__)


async def purge_once(content: ContentStore) -> dict[str, int]:
    purged = await run_in_threadpool(content.purge)
    if purged:  # counts only: team names are PII
        log.info("retention: purged %d expired stored requests of %d teams", sum(purged.values()), len(purged))
    return purged
