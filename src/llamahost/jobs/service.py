"""The jobs a process knows and the queue they go through, built once per process
(server or ``llamahost jobs work``) next to the other services."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..config import Config, JobsConfig
from ..tenancy.stores import Stores
from .kinds import JobKinds
from .loop import JobLoop
from .queue import JobQueue

# A job kind's registration: ``register(kinds, config)`` calls ``kinds.register_kind``.
Registration = Callable[[JobKinds, Config], None]


@dataclass
class Jobs:
    kinds: JobKinds
    queue: JobQueue
    config: JobsConfig

    def loop(self, services: Any, *, concurrency: int | None = None, only: Iterable[str] | None = None) -> JobLoop:
        """A loop over this process's kinds (or ``only`` these), whose handlers get
        ``services`` as ``ctx.services``."""
        config = self.config
        return JobLoop(
            self.queue,
            self.kinds.subset(only) if only is not None else self.kinds,
            services,
            concurrency=concurrency or config.concurrency,
            poll_interval=config.poll_interval_seconds,
            lease_seconds=config.lease_seconds,
            keep_finished=timedelta(days=config.keep_finished_days),
        )


def open_jobs(stores: Stores, registrations: Iterable[Registration]) -> Jobs:
    kinds = JobKinds()
    for register in registrations:
        register(kinds, stores.config)
    return Jobs(kinds, JobQueue(stores.db, stores.teams, kinds), stores.config.jobs)
