"""The usage journal: what makes a usage record durable against a crash of the process
before the batch writer has committed it.

Every usage record is appended to this process's journal with one ``write()`` before
the response that it accounts for sends its last byte (``UsageWriter.record`` is called
synchronously on every path that ends a metered response). A plain write lands in the
kernel's page cache, which a ``kill -9``, an OOM kill or a crash of the interpreter does
not lose; only a power cut or a kernel crash can (no ``fsync``: one per record would
cost more than the whole request). The writer commits records in batches; the segment
of the journal that holds a committed batch is then deleted. A batch the database
refuses stays on disk, not in memory, and is replayed until the database takes it.

Layout, under ``<data dir>/usage-journal/`` (it must be a local file system: ``flock``
is how a dead process is told from a live one):

- ``<tag>.lock``: held with ``flock`` for the process's lifetime;
- ``<tag>.<seq>.jsonl``: segments, one JSON record a line, one segment per batch.

A process that finds a ``.lock`` it can lock found a dead process: it replays that
process's segments and removes them (at start, and periodically, so the surviving
workers of ``--workers N`` pick up a killed sibling's records). Replays are idempotent:
each record has an id, and the insert skips ids already stored, so a batch committed
just before a crash (segment not yet deleted) is not counted twice.

The end user's ``user`` value is PII: it is written encrypted under a key derived from
the deployment's index key (``Keyring.journal_key``), so the journal holds no plaintext
PII. Stored content (opt-in, per team) is not journalled: it stays in memory until its
batch commits, as before.

Why by hand: no maintained library does "append to a local write-ahead file, commit to
SQL, replay the dead process's file"; the pieces (``os.write``, ``fcntl.flock``) are
the standard library's.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from ..store.crypto import CryptoError, DataKey, open_sealed

log = logging.getLogger(__name__)

_USER_CONTEXT = ("usage_journal", "user")
# Under the data dir: every metering process's journal (servers and job loops alike, so a
# dead one's records are replayed by whichever starts next).
JOURNAL_DIRNAME = "usage-journal"


def _tag_of(path: Path) -> str:
    return path.name.split(".", 1)[0]


class UsageJournal:
    """This process's journal. Not thread-safe: used from the event loop only (the
    writer's thread reads closed segments, which nobody appends to any more)."""

    def __init__(self, directory: Path, key: DataKey) -> None:
        self.directory = directory
        self._key = key
        directory.mkdir(parents=True, exist_ok=True)
        self.tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        # Created under a temporary name, locked, then renamed: a scan never sees this
        # process's lock file unlocked (and takes it for a dead process's).
        temporary = directory / f".{self.tag}.lock.new"
        self._lock_fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(temporary, self._lock_path(self.tag))
        self._seq = 0
        self._fd: int | None = None

    def _lock_path(self, tag: str) -> Path:
        return self.directory / f"{tag}.lock"

    # --- the request path -------------------------------------------------------------

    def append(self, row: dict[str, Any]) -> None:
        """Journal one usage row (as ``usage_row`` makes it). Raises OSError (e.g. a full
        disk): the caller keeps the row in memory then."""
        if self._fd is None:
            self._seq += 1
            self._fd = os.open(self._segment(), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.write(self._fd, self.encode(row))

    def _segment(self) -> Path:
        return self.directory / f"{self.tag}.{self._seq:010d}.jsonl"

    def encode(self, row: dict[str, Any]) -> bytes:
        doc = dict(row)
        doc["created_at"] = row["created_at"].isoformat()
        user = doc.pop("user")
        if user is not None:
            sealed = self._key.seal(user, *_USER_CONTEXT, row["record_id"])
            doc["user_sealed"] = base64.b64encode(sealed).decode()
        return (json.dumps(doc, separators=(",", ":")) + "\n").encode()

    def cut(self) -> Path | None:
        """Close the segment being appended to (the next record starts a new one) and
        return it: it holds exactly the records appended since the previous cut."""
        if self._fd is None:
            return None
        os.close(self._fd)
        self._fd = None
        return self._segment()

    # --- replay (in a thread) ------------------------------------------------------------

    def decode(self, line: bytes) -> dict[str, Any]:
        doc = json.loads(line)
        doc["created_at"] = datetime.fromisoformat(doc["created_at"])
        sealed = doc.pop("user_sealed", None)
        doc["user"] = None
        if sealed is not None:
            try:
                doc["user"] = open_sealed(self._key, base64.b64decode(sealed), *_USER_CONTEXT, doc["record_id"]).decode()
            except CryptoError as exc:  # not this deployment's journal key
                log.warning("usage record %s replayed without its user: %s", doc["record_id"], exc)
        return doc

    def read(self, path: Path) -> list[dict[str, Any]]:
        rows = []
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    # A write cut short (a full disk): the record never made it whole.
                    log.error("%s:%d: an incomplete usage record, skipped", path, number)
                    continue
                try:
                    rows.append(self.decode(line))
                except (ValueError, KeyError) as exc:
                    log.error("%s:%d: an unreadable usage record, skipped: %s", path, number, exc)
        return rows

    def replay(self, paths: list[Path], write: Callable[[list[dict[str, Any]]], None]) -> int:
        """Write the records of ``paths`` (insert-if-absent) and delete each file once its
        records are committed. Raises what ``write`` raises; what is left stays."""
        replayed = 0
        for path in paths:
            try:
                rows = self.read(path)
            except FileNotFoundError:
                continue  # replayed by another process meanwhile
            if rows:
                write(rows)
            path.unlink(missing_ok=True)
            replayed += len(rows)
        return replayed

    def orphans(self) -> Iterator[tuple[str, int]]:
        """Tags of dead processes whose journals are still here, each with its lock
        held (the caller releases it with ``release``)."""
        for lock_path in self.directory.glob("*.lock"):
            tag = _tag_of(lock_path)
            if tag == self.tag:
                continue
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # alive
                os.close(fd)
                continue
            yield tag, fd

    def segments(self, tag: str) -> list[Path]:
        return sorted(self.directory.glob(f"{tag}.*.jsonl"))

    def recover(self, write: Callable[[list[dict[str, Any]]], None]) -> int:
        """Replay the journals of dead processes; returns the number of records replayed."""
        replayed = 0
        for tag, fd in self.orphans():
            try:
                replayed += self.replay(self.segments(tag), write)
                self._lock_path(tag).unlink(missing_ok=True)
            finally:
                os.close(fd)
        if replayed:
            log.warning("replayed %d usage records from the journal of a process that ended without writing them", replayed)
        return replayed

    def close(self, *, clean: bool) -> None:
        """``clean``: every record is committed, so the journal goes; otherwise it stays
        for the next process (and the lock is released by the exit anyway)."""
        segment = self.cut()
        if clean:
            if segment is not None:
                segment.unlink(missing_ok=True)
            self._lock_path(self.tag).unlink(missing_ok=True)
        os.close(self._lock_fd)
