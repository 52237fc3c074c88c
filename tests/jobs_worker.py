"""A job loop process with test kinds, for tests/test_jobs.py: the loop of
``llamahost jobs work``, over the database the environment names, with kinds that leave
traces the test can check. ``python jobs_worker.py LEASE_SECONDS TRACE_DIR``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from llamahost.config import load_config
from llamahost.jobs.kinds import JobContext, JobKinds
from llamahost.jobs.loop import JobLoop
from llamahost.jobs.queue import JobQueue
from llamahost.tenancy.stores import open_stores

TEST_KINDS = ("test.mark", "test.stall_first")


def main() -> None:
    lease, traces = float(sys.argv[1]), Path(sys.argv[2])
    stores = open_stores(load_config())
    kinds = JobKinds()
    worker = f"pid-{os.getpid()}"

    async def mark(ctx: JobContext) -> dict:
        # O_APPEND writes of one short line are atomic: concurrent workers never interleave.
        with open(traces / "runs.log", "a") as runs:
            runs.write(f"{ctx.job_id} {worker}\n")
        await asyncio.sleep(0.05)  # long enough for the other worker to try the same job
        return {"worker": worker}

    async def stall_first(ctx: JobContext) -> dict:
        if ctx.attempt == 1:
            (traces / f"stalled-{worker}").write_text(ctx.job_id)
            await asyncio.sleep(3600)  # until the test kills this process
        return {"worker": worker}

    kinds.register_kind("test.mark", mark, timeout=30, max_attempts=1)
    kinds.register_kind("test.stall_first", stall_first, timeout=3600, max_attempts=2, retry_delay=0)
    loop = JobLoop(JobQueue(stores.db, stores.teams, kinds), kinds, stores, concurrency=4, poll_interval=0.05,
                   lease_seconds=lease, worker_id=worker)

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        (traces / f"ready-{worker}").write_text("")
        await loop.run(stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
