"""Job kinds: what a job of each kind runs, how long one attempt may take, how many
attempts it gets, and (for periodic kinds) how often the loop schedules it.

A handler is ``async def handler(ctx: JobContext) -> dict | None``; what it returns is
stored as the job's ``result`` (JSON: counts and ids, never PII). It runs in the job
loop's event loop, so blocking work goes to ``await ctx.to_thread(fn, ...)`` and heavy
work (torch: fine-tuning, evals) to ``await ctx.run_process([...])``: a child process of
the loop, killed when the job is cancelled or times out, so a wedged library never takes
the loop (or the server it runs in) down with it.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

KIND_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


class JobCancelled(Exception):
    """Raised by ``JobContext.check_cancelled`` once the job's cancellation was requested."""


class JobProcessFailed(Exception):
    """A ``run_process`` child exited non-zero; the message carries the end of its stderr."""


@dataclass
class JobContext:
    """What a running handler gets: the job's identity and payload, the services of the
    process running the loop, and the cancellation signal."""

    job_id: str
    kind: str
    payload: dict[str, Any]
    team_id: int | None
    attempt: int  # 1 for the first attempt
    services: Any  # the loop's ``Stores``/``Services``: what the kind needs to do its work
    # Set when an operator or team admin cancels the job; the handler's task is also
    # cancelled (CancelledError at its next await). Threads poll it (``check_cancelled``).
    cancelled: threading.Event = field(default_factory=threading.Event)

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled(f"job {self.job_id} was cancelled")

    async def to_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def run_process(self, argv: Sequence[str], **kwargs: Any) -> str:
        """Run ``argv`` as a child process and return its stdout; if the job is cancelled
        or times out meanwhile, the child is terminated (then killed) before this returns."""
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, **kwargs
        )
        try:
            out, err = await process.communicate()
        except BaseException:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 5)
                except TimeoutError:
                    process.kill()
                    await process.wait()
            raise
        if process.returncode != 0:
            raise JobProcessFailed(f"{argv[0]} exited with {process.returncode}: {err.decode(errors='replace')[-500:]}")
        return out.decode(errors="replace")


JobHandler = Callable[[JobContext], Coroutine[Any, Any, dict[str, Any] | None]]


@dataclass(frozen=True)
class JobKind:
    name: str
    handler: JobHandler
    timeout: float  # seconds one attempt may run before it is cancelled and counted as failed
    max_attempts: int  # attempts (failures, timeouts, lost leases) before the job is failed for good
    retry_delay: float  # seconds a failed attempt waits before it may be claimed again
    every: float | None  # periodic kinds: the loop schedules one job per interval of this many seconds


class JobKinds:
    """The kinds a process knows. The loop claims only jobs of kinds it has registered,
    so loops of different versions (or with different extras installed) can share a database."""

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}

    def register_kind(
        self,
        name: str,
        handler: JobHandler,
        *,
        timeout: float,
        max_attempts: int = 3,
        retry_delay: float = 10.0,
        every: float | None = None,
    ) -> JobKind:
        if not KIND_NAME.fullmatch(name):
            raise ValueError(f"job kind {name!r}: lower-case letters, digits, '.', '_' or '-', at most 64")
        if name in self._kinds:
            raise ValueError(f"job kind {name!r} is registered twice")
        if timeout <= 0 or max_attempts < 1 or retry_delay < 0 or (every is not None and every <= 0):
            raise ValueError(f"job kind {name!r}: timeout and every must be > 0, max_attempts >= 1, retry_delay >= 0")
        kind = JobKind(name, handler, float(timeout), int(max_attempts), float(retry_delay), every)
        self._kinds[name] = kind
        return kind

    def register_periodic(self, name: str, handler: JobHandler, *, every: float, timeout: float = 3600.0) -> JobKind:
        """A maintenance kind the loop schedules once per ``every`` seconds. Its work is
        idempotent (a purge), so a failed run is simply retried a little later: at most a
        minute, sooner when the interval itself is shorter. The default hour of timeout
        bounds a wedged database or object store without cutting a large backlog short."""
        return self.register_kind(name, handler, timeout=timeout, max_attempts=3, retry_delay=min(60.0, every), every=every)

    def get(self, name: str) -> JobKind | None:
        return self._kinds.get(name)

    def __getitem__(self, name: str) -> JobKind:
        try:
            return self._kinds[name]
        except KeyError:
            raise KeyError(f"no job kind {name!r} is registered") from None

    def __iter__(self) -> Iterator[JobKind]:
        return iter(self._kinds.values())

    def subset(self, names: Iterable[str]) -> JobKinds:
        """These kinds only (``llamahost jobs work --kind``); an unknown name is an error."""
        subset = JobKinds()
        for name in names:
            subset._kinds[name] = self[name]
        return subset

    @property
    def names(self) -> list[str]:
        return list(self._kinds)

    @property
    def periodic(self) -> list[JobKind]:
        return [kind for kind in self._kinds.values() if kind.every is not None]
