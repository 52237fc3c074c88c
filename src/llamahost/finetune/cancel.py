"""Stopping a run within seconds: a cancel file (what a job loop or a shared volume can
create) or SIGTERM (what a process supervisor or Kubernetes sends).

A watcher thread turns the file into a SIGTERM to this process, so both arrive the same
way: as `Cancelled` raised in the main thread at the next Python bytecode, which also
interrupts the minute-long model load. Writes that must not be torn (a checkpoint, a
journal line) run inside `critical()`, which defers the raise to their end.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

POLL_SECONDS = 0.5


class Cancelled(Exception):
    pass


class CancelWatch:
    def __init__(self, cancel_file: Path) -> None:
        self.cancel_file = cancel_file
        self.requested = False
        self._critical = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cancel-watch", daemon=True)

    def __enter__(self) -> CancelWatch:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            if self.cancel_file.exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self._critical == 0:
            raise Cancelled()

    def check(self) -> None:
        if self.requested or self.cancel_file.exists():
            self.requested = True
            raise Cancelled()

    @contextmanager
    def critical(self) -> Iterator[None]:
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if self._critical == 0 and self.requested:
            raise Cancelled()
