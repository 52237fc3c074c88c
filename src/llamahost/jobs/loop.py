"""The job loop: claims jobs of the kinds it knows, runs each under a renewed lease with
its kind's timeout, passes cancel requests to the handler, schedules periodic kinds,
reaps the expired leases of dead loops and prunes old finished jobs.

Where it runs: ``llamahost serve`` starts one in its parent process (beside uvicorn, in a
thread with its own event loop: one per server, not one per ``--workers`` process), and
``llamahost jobs work`` runs one on its own; any number of them may share a database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from .kinds import JobCancelled, JobContext, JobKinds
from .queue import ClaimedJob, JobQueue

log = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 3600.0


def new_worker_id() -> str:
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{os.urandom(3).hex()}"


class JobLoop:
    def __init__(
        self,
        queue: JobQueue,
        kinds: JobKinds,
        services: Any,
        *,
        concurrency: int = 1,
        poll_interval: float = 1.0,
        lease_seconds: float = 30.0,
        keep_finished: timedelta = timedelta(days=7),
        worker_id: str | None = None,
    ) -> None:
        self.queue = queue
        self.kinds = kinds
        self.services = services
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        # Renewed three times per lease: two renewals may fail (a database hiccup) before it expires.
        self.renew_every = lease_seconds / 3
        self.keep_finished = keep_finished
        self.worker_id = worker_id or new_worker_id()
        self._running: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._last_prune = 0.0
        self._slots: dict[str, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        log.info("job loop started: worker %s, kinds %s, %d at a time, lease %g s", self.worker_id, ", ".join(self.kinds.names),
                 self.concurrency, self.lease_seconds)
        try:
            while not stop.is_set():
                try:
                    await self._tick()
                except Exception:  # the database is away: try again next tick
                    log.exception("job loop: a tick failed; retrying in %.1f s", self.poll_interval)
                self._wake.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
                await asyncio.wait(waiters, timeout=self._sleep_seconds(), return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            await self._stop_running()

    def _sleep_seconds(self) -> float:
        """Until the next poll, or sooner when a periodic kind's next interval starts."""
        sleep = self.poll_interval
        now = time.time()
        for kind in self.kinds.periodic:
            assert kind.every is not None
            sleep = min(sleep, kind.every - now % kind.every + 0.001)
        return max(sleep, 0.01)

    async def _tick(self) -> None:
        reaped = await asyncio.to_thread(self.queue.reap)
        if reaped:
            log.warning("job loop: %d jobs whose worker stopped renewing its lease were re-queued or failed", reaped)
        for kind in self.kinds.periodic:
            assert kind.every is not None
            slot = int(time.time() // kind.every)
            if self._slots.get(kind.name) != slot:
                await asyncio.to_thread(self.queue.schedule_periodic, kind.name)
                self._slots[kind.name] = slot
        if time.monotonic() - self._last_prune > PRUNE_EVERY_SECONDS:
            await asyncio.to_thread(self.queue.prune, self.keep_finished)
            self._last_prune = time.monotonic()
        while len(self._running) < self.concurrency:
            job = await asyncio.to_thread(self.queue.claim, self.worker_id, self.kinds.names, self.lease_seconds)
            if job is None:
                break
            task = asyncio.create_task(self._run(job), name=f"job {job.id}")
            self._running[job.id] = task
            task.add_done_callback(partial(self._done, job.id))

    def _done(self, job_id: str, _task: asyncio.Task) -> None:
        self._running.pop(job_id, None)
        self._wake.set()  # a slot is free: claim the next job now rather than at the next poll

    async def _run(self, job: ClaimedJob) -> None:
        kind = self.kinds[job.kind]
        ctx = JobContext(job.id, job.kind, job.payload, job.team_id, job.attempts, self.services)
        log.info("job %s (%s) attempt %d/%d started", job.id, job.kind, job.attempts, kind.max_attempts)
        handler: asyncio.Task[dict[str, Any] | None] = asyncio.create_task(kind.handler(ctx), name=f"job {job.id}'s handler")
        deadline = time.monotonic() + kind.timeout
        outcome: Callable[[], bool] | None = None
        try:
            while outcome is None:
                remaining = deadline - time.monotonic()
                done, _ = await asyncio.wait({handler}, timeout=max(0.0, min(self.renew_every, remaining)))
                if done:
                    outcome = self._outcome(job, kind, ctx, handler)
                elif time.monotonic() >= deadline:
                    await _cancel(handler)
                    message = f"timed out after {kind.timeout:g} s"
                    outcome = partial(self.queue.fail, job.id, self.worker_id, message, kind.retry_delay)
                else:
                    try:
                        cancel_requested = await asyncio.to_thread(
                            self.queue.renew, job.id, self.worker_id, self.lease_seconds
                        )
                    except Exception:
                        log.exception("job %s: renewing its lease failed; trying again", job.id)
                        continue
                    if cancel_requested is None:
                        log.warning("job %s: its lease expired and another worker took it; abandoning", job.id)
                        await _cancel(handler)
                        return
                    if cancel_requested:
                        ctx.cancelled.set()
                        await _cancel(handler)
                        outcome = partial(self.queue.cancelled, job.id, self.worker_id)
        except asyncio.CancelledError:  # the loop is stopping: hand the job back
            await _cancel(handler)
            await asyncio.shield(asyncio.to_thread(self.queue.release, job.id, self.worker_id))
            raise
        try:
            recorded = await asyncio.to_thread(outcome)
        except Exception:  # the lease runs out and another attempt follows, within max_attempts
            log.exception("job %s: recording its outcome failed", job.id)
            return
        if not recorded:
            log.warning("job %s: its lease had expired; its outcome was not recorded", job.id)

    def _outcome(self, job: ClaimedJob, kind, ctx: JobContext, handler: asyncio.Task) -> Callable[[], bool]:
        queue, worker = self.queue, self.worker_id
        if handler.cancelled() or isinstance(handler.exception(), JobCancelled):
            return partial(queue.cancelled, job.id, worker)
        error = handler.exception()
        if error is not None:
            log.warning("job %s (%s) attempt %d failed: %s", job.id, job.kind, job.attempts, error,
                        exc_info=error)
            message = f"{type(error).__name__}: {error}"
            return partial(queue.fail, job.id, worker, message, kind.retry_delay)
        result = handler.result()
        try:
            if result is not None and not isinstance(result, dict):
                raise TypeError(f"a job handler returns a dict or None, not {type(result).__name__}")
            json.dumps(result)
        except (TypeError, ValueError) as exc:  # a bug of the kind: a failed attempt, not a lost lease
            return partial(queue.fail, job.id, worker, f"the result is not a JSON object: {exc}", kind.retry_delay)
        log.info("job %s (%s) succeeded", job.id, job.kind)
        return partial(queue.succeed, job.id, worker, result)

    async def _stop_running(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


CANCEL_GRACE_SECONDS = 10.0


async def _cancel(task: asyncio.Task) -> None:
    """Cancel a handler and give it a moment to clean up; its end is recorded by the caller,
    whatever it was. A handler that swallows the cancellation is left behind rather than
    holding the loop (or its stop) forever."""
    task.cancel()
    await asyncio.wait({task}, timeout=CANCEL_GRACE_SECONDS)
    if not task.done():
        log.warning("%s ignored its cancellation for %.0f s; leaving it behind", task.get_name(), CANCEL_GRACE_SECONDS)
    elif not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as "never retrieved"


class LoopThread:
    """A job loop on its own thread and event loop, beside a server whose main thread
    belongs to uvicorn (one process, or the supervisor of ``--workers N``)."""

    def __init__(self, loop: JobLoop) -> None:
        self.loop = loop
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="llamahost-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    def _main(self) -> None:
        async def main() -> None:
            self._event_loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self.loop.run(self._stop)

        asyncio.run(main())

    def stop(self, timeout: float = 30.0) -> None:
        if self._event_loop is not None and self._stop is not None:
            self._event_loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
