"""Stopping a run within seconds: a cancel file (what a job loop or a shared volume can
create) or SIGTERM/SIGINT (what a process supervisor or Kubernetes sends).

Two paths, because one is not enough. The polite one: a Python signal handler raises
`Cancelled` in the main thread at its next bytecode, which unwinds the run normally. But
the main thread may sit for a long time inside one C++ call (a backward pass on a starved
CPU can take minutes), where Python runs no handler. So a watcher thread, which sees the
cancel file and, through the signal wakeup fd, the signal itself at once, gives the polite
path a few seconds and then ends the process itself: a checkpoint is only ever renamed
into place whole, so nothing is lost that a clean stop would have kept. Writes that must
not be torn (a checkpoint, a journal line) run inside `critical()`, which both paths wait for.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

POLL_SECONDS = 0.5
# How long the main thread gets to unwind on its own before the watcher ends the process.
GRACE_SECONDS = 3.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Cancelled(Exception):
    pass


class CancelWatch:
    def __init__(self, cancel_file: Path, on_cancel: Callable[[], None], exit_status: int) -> None:
        self.cancel_file = cancel_file
        self.requested = False
        self._on_cancel = on_cancel
        self._exit_status = exit_status
        self._critical = 0
        self._lock = threading.RLock()
        self._finished = False
        self._done = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._watch, name="cancel-watch", daemon=True)

    def __enter__(self) -> CancelWatch:
        self._wake_w.setblocking(False)
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        self._previous_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, handler in self._previous.items():
            # A cancelled run leaves with its verdict recorded; a second SIGTERM on the way out
            # (a pod's process group gets one, and its entrypoint forwards another) must not
            # turn the exit status EXIT_CANCELLED into death by signal (143). Seen in
            # test_finetune_kubernetes' cancel test; SIGKILL still ends a run that hangs.
            signal.signal(sig, signal.SIG_IGN if self.requested else handler)

    def _watch(self) -> None:
        while not self._done.is_set():
            readable, _, _ = select.select([self._wake_r], [], [], POLL_SECONDS)
            signalled = bool(readable) and any(n in SIGNALS for n in self._wake_r.recv(64))
            if signalled or self.cancel_file.exists():
                break
        else:
            return
        self.requested = True
        if not signalled:
            os.kill(os.getpid(), signal.SIGTERM)  # the polite path first
        if self._done.wait(GRACE_SECONDS):
            return
        self.finish()  # waits for a critical section in progress
        os._exit(self._exit_status)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self._critical == 0:
            raise Cancelled()

    def finish(self) -> None:
        """Records the cancellation once, whichever path gets here first."""
        with self._lock:
            if not self._finished:
                self._finished = True
                self._on_cancel()
        self._done.set()

    def check(self) -> None:
        if self.requested or self.cancel_file.exists():
            self.requested = True
            raise Cancelled()

    @contextmanager
    def critical(self) -> Iterator[None]:
        with self._lock:
            self._critical += 1
            try:
                yield
            finally:
                self._critical -= 1
        if self._critical == 0 and self.requested:
            raise Cancelled()
