"""Expiry of abandoned uploads (``[files] session_ttl_hours``), file retention
(``[files] retention_days``) and leftovers of interrupted completions or team deletions,
run every ``[files] purge_interval_seconds`` in every server process: each step is
idempotent, so replicas purging the same database do no harm. (When the job loop's kind
registry is in place, this becomes its periodic ``uploads_expiry`` kind.)"""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from .service import FileService

log = logging.getLogger(__name__)


async def purge_once(files: FileService) -> dict[str, int]:
    counts = await run_in_threadpool(files.purge)
    if any(counts.values()):
        log.info(
            "files: purged %d expired upload sessions and %d files past retention; finished %d interrupted completions",
            counts["sessions"], counts["files"], counts["finalized"],
        )
    return counts


async def purge_periodically(files: FileService, interval_seconds: float) -> None:
    while True:
        try:
            await purge_once(files)
        except Exception:
            log.exception("files: the purge of expired uploads failed; retrying in %.0f s", interval_seconds)
        await asyncio.sleep(interval_seconds)
