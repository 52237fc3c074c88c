"""A training run away from the worker's disk (a Kubernetes pod): its inputs and its output
travel through the files backend (the database or the S3-compatible store), sealed under
the team's data key like every file.

The worker packs what the trainer needs, the spec, the decrypted datasets and any
checkpoint to resume from, into one blob (``<run>-in``) and starts the trainer with
``python -m llamahost.finetune --remote '{"team_id", "run", "input_chunks"}'``. There
the entrypoint opens the server's stores from the environment (LLAMAHOST_CONFIG,
LLAMAHOST_DATABASE_URL, LLAMAHOST_MASTER_KEY, ...), unpacks the run, and runs the trainer
as its child while it publishes what the trainer writes, as it appears:

- ``<run>-eNNNNNN``: the next complete lines of ``events.jsonl``, one segment a second at most;
- ``<run>-cNNNN`` and then ``<run>-cNNNN-m``: a checkpoint directory (tar), once whole, and
  its marker (the tar's chunk count), written after it so a reader never sees half of it;
- ``<run>-r``: the trainer's exit status and ``result.json``, last.

The worker's ``Mirror`` reads them back in that order into the run's output directory, the
same files a trainer on the worker's own disk writes, so the fine-tuning job carries them
into its events, checkpoints and result the way it does for a local run.

A pod retried by Kubernetes (the same run) resumes from the run's newest published
checkpoint and continues the numbering of the segments; the steps it replays were already
reported, so the mirror drops their second metrics (one point per step).
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .journal import EVENTS, RESULT

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
CHECKPOINT_INFO = "checkpoint.json"
SPEC = "job.json"
TRAINING = "training.jsonl"
VALIDATION = "validation.jsonl"
OUTPUT = "output"
# One events segment is one chunk of the files backend at most (1 MiB of plaintext).
SEGMENT_BYTES = 1024 * 1024
# A line longer than a segment (a traceback in an error event's data) is cut to this.
LONG_LINE_BYTES = 64 * 1024
# The pod's exit status when its outcome could not be published (the store unreachable):
# not one of the trainer's verdicts, so the Job retries the pod.
EXIT_UNPUBLISHED = 75


class BlobStore(Protocol):
    """What the files service offers for internal blobs (files/service.py)."""

    def put_blob(self, team_id: int, blob_id: str, data: Any) -> tuple[int, int]: ...

    def read_blob(self, team_id: int, blob_id: str, chunks: int) -> Iterator[bytes]: ...

    def delete_blob(self, team_id: int, blob_id: str) -> None: ...


@dataclass(frozen=True)
class RemoteRun:
    team_id: int
    run: str  # the blob-id prefix of this run: "ftk-" + 16 hex digits
    input_chunks: int

    @staticmethod
    def new_id() -> str:
        return "ftk-" + secrets.token_hex(8)

    def to_arg(self) -> str:
        return json.dumps({"team_id": self.team_id, "run": self.run, "input_chunks": self.input_chunks})

    @classmethod
    def from_arg(cls, text: str) -> RemoteRun:
        data = json.loads(text)
        run = str(data["run"])
        if not (run.startswith("ftk-") and len(run) <= 24 and run[4:].isalnum()):
            raise ValueError(f"not a remote run id: {run!r}")
        return cls(int(data["team_id"]), run, int(data["input_chunks"]))

    def segment(self, n: int) -> str:
        return f"{self.run}-e{n:06d}"

    def checkpoint(self, epoch: int) -> str:
        return f"{self.run}-c{epoch:04d}"

    def marker(self, epoch: int) -> str:
        return f"{self.run}-c{epoch:04d}-m"

    @property
    def inputs(self) -> str:
        return f"{self.run}-in"

    @property
    def result(self) -> str:
        return f"{self.run}-r"


def _missing(exc: BaseException) -> bool:
    from ..files.storage import MissingChunk

    return isinstance(exc, MissingChunk)


def read_small(files: BlobStore, team_id: int, blob_id: str) -> bytes | None:
    """A one-chunk blob, or None if it is not there (yet)."""
    try:
        return b"".join(files.read_blob(team_id, blob_id, 1))
    except Exception as exc:
        if _missing(exc):
            return None
        raise


def _tar(directory: Path, *, arcname: str = "") -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=f"{arcname}{path.name}")
    buffer.seek(0)
    return buffer


def _untar(data: Iterator[bytes], target: Path) -> None:
    buffer = io.BytesIO(b"".join(data))
    with tarfile.open(fileobj=buffer, mode="r:") as tar:
        tar.extractall(target, filter="data")  # no absolute paths, links or devices


def _pieces(buffer: io.BytesIO) -> Iterator[bytes]:
    while piece := buffer.read(SEGMENT_BYTES):
        yield piece


# --- the worker's side --------------------------------------------------------------------


def pack_inputs(files: BlobStore, team_id: int, spec_data: dict[str, Any], training: Path, validation: Path | None,
                output_dir: Path) -> RemoteRun:
    """Uploads what the trainer needs; the spec's paths become the bundle's own names."""
    run = RemoteRun.new_id()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as tar:
        spec = dict(spec_data, training_file=TRAINING, output_dir=OUTPUT, cancel_file=None,
                    validation_file=VALIDATION if validation is not None else None)
        raw = json.dumps(spec, indent=2).encode()
        info = tarfile.TarInfo(SPEC)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
        tar.add(training, arcname=TRAINING)
        if validation is not None:
            tar.add(validation, arcname=VALIDATION)
        tar.add(output_dir, arcname=OUTPUT)  # a checkpoint restored for a resumed attempt, if any
    buffer.seek(0)
    _, chunks = files.put_blob(team_id, f"{run}-in", _pieces(buffer))
    return RemoteRun(team_id, run, chunks)


class Mirror:
    """Reads a remote run's published output into ``output_dir``, in order."""

    def __init__(self, files: BlobStore, run: RemoteRun, output_dir: Path) -> None:
        self.files = files
        self.run = run
        self.output_dir = output_dir
        self.segments = 0
        self.epochs: set[int] = set()
        self.last_step = 0
        self.outcome: dict[str, Any] | None = None  # {"exit": int, "result": {...} | None}

    def note(self, message: str, *, level: str = "info") -> None:
        """An event of the worker's own (what Kubernetes says about the pod) into the log."""
        import time

        record = {"created_at": int(time.time()), "level": level, "message": message, "type": "message", "data": {}}
        self._append([json.dumps(record, separators=(",", ":")).encode()])

    def _append(self, lines: list[bytes]) -> None:
        if lines:
            with (self.output_dir / EVENTS).open("ab") as f:
                f.write(b"".join(line + b"\n" for line in lines))

    def pull(self) -> bool:
        """Everything published since the last pull; True once the run's outcome is in."""
        team = self.run.team_id
        while (data := read_small(self.files, team, self.run.segment(self.segments))) is not None:
            self._append(self._fresh_lines(data))
            self.segments += 1
        self._pull_checkpoints()
        if self.outcome is None:
            raw = read_small(self.files, team, self.run.result)
            if raw is not None:
                # Segments and checkpoints published before the result: read what is left of them.
                while (data := read_small(self.files, team, self.run.segment(self.segments))) is not None:
                    self._append(self._fresh_lines(data))
                    self.segments += 1
                self._pull_checkpoints()
                self.outcome = json.loads(raw)
                if self.outcome.get("result") is not None:
                    tmp = self.output_dir / (RESULT + ".tmp")
                    tmp.write_text(json.dumps(self.outcome["result"], indent=2))
                    tmp.replace(self.output_dir / RESULT)
        return self.outcome is not None

    def _fresh_lines(self, data: bytes) -> list[bytes]:
        """The segment's lines, less the metrics of steps already reported (a retried pod
        replays the steps after its checkpoint)."""
        kept = []
        for line in data.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            step = (record.get("data") or {}).get("step") if record.get("type") == "metrics" else None
            if isinstance(step, int):
                if step <= self.last_step:
                    continue
                self.last_step = step
            kept.append(line)
        return kept

    def _pull_checkpoints(self) -> None:
        team = self.run.team_id
        epoch = max(self.epochs, default=0) + 1
        while (raw := read_small(self.files, team, self.run.marker(epoch))) is not None:
            chunks = json.loads(raw)["chunks"]
            root = self.output_dir / CHECKPOINTS
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".mirror-epoch-{epoch:04d}"
            _untar(self.files.read_blob(team, self.run.checkpoint(epoch), chunks), tmp)
            target = root / f"epoch-{epoch:04d}"
            if not target.exists():
                tmp.rename(target)  # whole, as the trainer renames its own
            self.epochs.add(epoch)
            epoch += 1

    def delete(self, *, probe: bool = False) -> None:
        """Removes the run's blobs (the job keeps its own copies of the checkpoints);
        ``probe``: a run this mirror did not read (left by a dead worker): find them first."""
        team = self.run.team_id
        if probe:
            while read_small(self.files, team, self.run.segment(self.segments)) is not None:
                self.segments += 1
            while read_small(self.files, team, self.run.marker(max(self.epochs, default=0) + 1)) is not None:
                self.epochs.add(max(self.epochs, default=0) + 1)
        ids = [self.run.inputs, self.run.result]
        ids += [self.run.segment(n) for n in range(self.segments + 1)]
        for epoch in range(1, max(self.epochs, default=0) + 2):
            ids += [self.run.checkpoint(epoch), self.run.marker(epoch)]
        for blob_id in ids:
            try:
                self.files.delete_blob(team, blob_id)
            except Exception as exc:  # best effort: team deletion frees whatever is left
                log.warning("could not delete %s: %s", blob_id, exc)


# --- the trainer's side (in the pod) ------------------------------------------------------


class Publisher:
    """Publishes a trainer's output directory as it grows."""

    def __init__(self, files: BlobStore, run: RemoteRun, output_dir: Path) -> None:
        self.files = files
        self.run = run
        self.output_dir = output_dir
        self.offset = 0
        self.published: set[int] = set()
        # A retried pod continues the run: after the segments and checkpoints already there.
        self.segments = 0
        while read_small(files, run.team_id, run.segment(self.segments)) is not None:
            self.segments += 1
        epoch = 1
        while read_small(files, run.team_id, run.marker(epoch)) is not None:
            self.published.add(epoch)
            epoch += 1

    def restore_newest(self) -> int | None:
        """The run's newest published checkpoint into the output dir (a retried pod
        resumes from it); its epoch, or None."""
        if not self.published:
            return None
        epoch = max(self.published)
        target = self.output_dir / CHECKPOINTS / f"epoch-{epoch:04d}"
        if target.exists():
            return epoch
        raw = read_small(self.files, self.run.team_id, self.run.marker(epoch))
        assert raw is not None
        tmp = self.output_dir / CHECKPOINTS / f".restore-{epoch:04d}"
        _untar(self.files.read_blob(self.run.team_id, self.run.checkpoint(epoch), json.loads(raw)["chunks"]), tmp)
        tmp.rename(target)
        return epoch

    def publish(self) -> None:
        self._events()
        self._checkpoints()

    def _events(self) -> None:
        path = self.output_dir / EVENTS
        try:
            with path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        segment = bytearray()
        for line in data[: end + 1].splitlines(keepends=True):
            if len(line) > SEGMENT_BYTES:
                line = _shortened(line)
            if len(segment) + len(line) > SEGMENT_BYTES:
                self._put_segment(bytes(segment))
                segment.clear()
            segment.extend(line)
        if segment:
            self._put_segment(bytes(segment))

    def _put_segment(self, data: bytes) -> None:
        self.files.put_blob(self.run.team_id, self.run.segment(self.segments), [data])
        self.segments += 1

    def _checkpoints(self) -> None:
        for info in sorted((self.output_dir / CHECKPOINTS).glob(f"epoch-*/{CHECKPOINT_INFO}")):
            epoch = json.loads(info.read_text())["epoch"]
            if epoch in self.published:
                continue
            _, chunks = self.files.put_blob(self.run.team_id, self.run.checkpoint(epoch), _pieces(_tar(info.parent)))
            self.files.put_blob(self.run.team_id, self.run.marker(epoch), [json.dumps({"chunks": chunks}).encode()])
            self.published.add(epoch)

    def finish(self, exit_status: int) -> None:
        """The last of the output, then the outcome (which tells the worker it is all there)."""
        self.publish()
        try:
            result = json.loads((self.output_dir / RESULT).read_text())
        except (OSError, ValueError):
            result = None
        outcome = {"exit": exit_status, "result": result}
        self.files.put_blob(self.run.team_id, self.run.result, [json.dumps(outcome).encode()])


def _shortened(line: bytes) -> bytes:
    try:
        record = json.loads(line)
        record["data"] = {"truncated": True}
        record["message"] = str(record.get("message", ""))[:LONG_LINE_BYTES]
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"
    except ValueError:
        return b""


def unpack_inputs(files: BlobStore, run: RemoteRun, work_dir: Path) -> Path:
    """The run's inputs into ``work_dir``; the spec's path, rewritten to absolute paths there."""
    work_dir.mkdir(parents=True, exist_ok=True)
    _untar(files.read_blob(run.team_id, run.inputs, run.input_chunks), work_dir)
    spec_path = work_dir / SPEC
    spec = json.loads(spec_path.read_text())
    spec["training_file"] = str(work_dir / TRAINING)
    if spec.get("validation_file"):
        spec["validation_file"] = str(work_dir / VALIDATION)
    spec["output_dir"] = str(work_dir / OUTPUT)
    spec["cancel_file"] = None
    (work_dir / OUTPUT).mkdir(exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=2))
    return spec_path


# --- the entrypoint in the pod -----------------------------------------------------------


def run_remote(run: RemoteRun, work_dir: Path) -> int:
    """``python -m llamahost.finetune --remote ...``: unpack, train (a child process, the
    same ``--spec`` entrypoint), publish; exits with the trainer's status, so Kubernetes'
    pod failure policy sees the trainer's verdict."""
    import signal
    import subprocess
    import sys
    import time

    from ..config import load_config
    from ..files.service import open_files
    from ..store.keyring import open_store

    try:
        config = load_config()
        db, keyring = open_store(config.data_dir)
        files = open_files(config, db, keyring)
        spec_path = unpack_inputs(files, run, work_dir)
    except Exception as exc:  # the pod's environment, not the run, is wrong: say which part
        print(
            f"error: cannot read this run's inputs from the files backend ({type(exc).__name__}: {exc}); the pod needs "
            "the server's database (LLAMAHOST_DATABASE_URL), master key (LLAMAHOST_MASTER_KEY) and [files] settings "
            "(LLAMAHOST_CONFIG): [fine_tuning.kubernetes] env_from_secrets and config_map",
            file=sys.stderr, flush=True,
        )
        return 2
    output_dir = work_dir / OUTPUT
    publisher = Publisher(files, run, output_dir)
    restored = publisher.restore_newest()
    if restored is not None:
        print(f"resuming from this run's published checkpoint of epoch {restored}", file=sys.stderr, flush=True)
    child = subprocess.Popen([sys.executable, "-m", "llamahost.finetune", "--spec", str(spec_path)])

    def forward(signum: int, frame: object) -> None:
        # A deleted Job (a cancel) or a drained node: the trainer records a clean stop.
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        while child.poll() is None:
            try:
                publisher.publish()
            except Exception as exc:  # the store briefly unreachable: the next pass catches up
                print(f"publishing failed (retrying): {exc}", file=sys.stderr, flush=True)
            time.sleep(1.0)
        status = child.returncode
        # A child killed by a signal (the OOM killer) reports -N; a pod reports 128+N.
        exit_status = 128 - status if status < 0 else status
        for attempt in range(5):
            try:
                publisher.finish(exit_status)
                break
            except Exception as exc:
                print(f"publishing the outcome failed: {exc}", file=sys.stderr, flush=True)
                time.sleep(2 * (attempt + 1))
        else:
            # Not a verdict the Job should keep: a status Kubernetes retries (resuming).
            return EXIT_UNPUBLISHED
        return exit_status
    finally:
        if child.poll() is None:
            child.kill()
        db.close()
