"""Where a training run runs (``[fine_tuning] backend``): the one seam between the
fine-tuning job, which prepares a spec and a private working directory and reads what the
trainer writes, and whatever runs the trainer.

A backend's contract, whatever it runs on:

- ``check_available()`` raises ``TrainingUnavailable`` (saying how to install or configure
  what is missing) when this server cannot train at all; job creation calls it, so the
  client gets the reason at once rather than a failed job later.
- ``base_model(model)`` is the trainer's ``TrainingSpec.base_model`` for a configured model,
  or an ``InvalidRequest`` (``param="model"``) saying why this backend cannot tune it.
- ``await run(run)`` runs the trainer on ``run.spec_path`` to its end and returns its exit
  status: 0 succeeded, 1 failed (``result.json`` says why), ``EXIT_CANCELLED`` cancelled;
  any other status is a crash and the job's attempt is retried. While it runs,
  ``run.output_dir`` shows the trainer's files as they appear (``events.jsonl``,
  ``metrics.jsonl``, ``checkpoints/epoch-NNNN`` renamed in whole, ``result.json``):
  directly for a process on this host; a remote backend mirrors them there. When
  ``run.cancel`` is set the backend stops the trainer within seconds and returns its
  status; when the task itself is cancelled (the job loop stops, or lost its lease) it
  stops the trainer and re-raises.

``local`` and ``command`` are here. ``kubernetes`` (a ``batch/v1`` Job in the llamahost
image running the same entrypoint) implements the same protocol in its own module;
``backend_for`` is where it plugs in.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import Config, ConfigError, FineTuningConfig, ModelConfig
from ..errors import InvalidRequest
from .deps import TrainingUnavailable, require_training_deps
from .spec import TrainingSpec

log = logging.getLogger(__name__)

# After the cancel file appears the trainer stops within about 3.5 s (its watcher polls
# twice a second and gives the main thread 3 s); SIGTERM then SIGKILL only if it has not.
STOP_GRACE_SECONDS = 8.0
KILL_GRACE_SECONDS = 5.0
# How much of the trainer's output a crash's error message quotes.
LOG_TAIL_BYTES = 2000


@dataclass
class TrainingRun:
    job_id: str  # the fine-tuning job (ftjob-...)
    team_id: int
    attempt: int  # 1 for the first; later attempts resume from the last uploaded checkpoint
    spec: TrainingSpec  # paths on this host
    spec_path: Path  # the spec as JSON: what the trainer reads
    work_dir: Path  # private (0700): the spec, the decrypted datasets, the output dir
    log_path: Path  # the trainer's stdout and stderr
    cancel: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def output_dir(self) -> Path:
        return self.spec.output_dir

    def log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""


class Backend(Protocol):
    name: str

    def check_available(self) -> None: ...

    def base_model(self, model: ModelConfig) -> str: ...

    async def run(self, run: TrainingRun) -> int: ...


def base_model_path(model: ModelConfig) -> str:
    """What the trainer can tune: an embedded model, whose GGUF transformers loads and
    dequantizes, or an upstream model whose weights in Hugging Face format the trainer can
    read where it runs (``hf_weights``)."""
    if model.engine != "llamacpp":
        if model.hf_weights:
            return model.hf_weights
        raise InvalidRequest(
            f"model: {model.id!r} is served by an upstream server (engine {model.engine!r}) and has no hf_weights "
            "(its base weights in Hugging Face format) to tune from",
            param="model",
        )
    return model.path


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies, so a job
    loop killed with SIGKILL does not leave its trainer running (and, on the next attempt,
    racing a second one). Linux only; elsewhere the orphan runs on until it ends."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ProcessBackend:
    """A training run as a child process of the job loop, in a process group of its own
    (a command may start processes of its own: a stop reaches them all)."""

    name = "process"

    def __init__(self, config: FineTuningConfig) -> None:
        self.config = config

    def check_available(self) -> None:
        return None

    def base_model(self, model: ModelConfig) -> str:
        return base_model_path(model)

    def argv(self, run: TrainingRun) -> list[str]:
        raise NotImplementedError

    def env(self, run: TrainingRun) -> dict[str, str]:
        env = dict(os.environ)
        # torch's intra-op threads come from the spec; OpenMP's own pool would otherwise
        # size itself to every core (and the trainer sets a passive wait policy).
        env["OMP_NUM_THREADS"] = str(run.spec.threads)
        return env

    async def run(self, run: TrainingRun) -> int:
        with run.log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *self.argv(run),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                cwd=run.work_dir,
                env=self.env(run),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        exited = asyncio.ensure_future(process.wait())
        cancelled = asyncio.ensure_future(run.cancel.wait())
        try:
            await asyncio.wait({exited, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                await self._stop(process, run)
            return await exited
        except BaseException:
            if process.returncode is None:
                await asyncio.shield(self._stop(process, run))
            raise
        finally:
            cancelled.cancel()

    async def _stop(self, process: asyncio.subprocess.Process, run: TrainingRun) -> None:
        """The cancel file first (the trainer records a clean cancellation), then SIGTERM
        to the group, then SIGKILL."""
        try:
            assert run.spec.cancel_file is not None
            run.spec.cancel_file.touch()
        except OSError:
            pass
        for sig, grace in ((None, STOP_GRACE_SECONDS), (signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
            if sig is not None:
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    return
            try:
                await asyncio.wait_for(process.wait(), grace)
                return
            except TimeoutError:
                log.warning("fine-tuning job %s: the trainer did not stop within %.0f s", run.job_id, grace)


class LocalBackend(ProcessBackend):
    """``python -m llamahost.finetune --spec job.json`` with this server's Python."""

    name = "local"

    def check_available(self) -> None:
        require_training_deps()

    def argv(self, run: TrainingRun) -> list[str]:
        return [sys.executable, "-m", "llamahost.finetune", "--spec", str(run.spec_path)]


class CommandBackend(ProcessBackend):
    """``[fine_tuning] command`` with ``{spec}`` and ``{output_dir}`` filled in."""

    name = "command"

    def argv(self, run: TrainingRun) -> list[str]:
        values = {"{spec}": str(run.spec_path), "{output_dir}": str(run.output_dir)}
        argv = []
        for arg in self.config.command:
            for placeholder, value in values.items():
                arg = arg.replace(placeholder, value)
            argv.append(arg)
        return argv


def backend_for(config: Config, files: Any = None) -> Backend:
    """``files`` (the files service): where a remote backend's runs take their inputs from
    and publish their output to."""
    ft = config.fine_tuning
    if ft.backend == "local":
        return LocalBackend(ft)
    if ft.backend == "command":
        return CommandBackend(ft)
    if files is None:
        raise ConfigError('[fine_tuning] backend "kubernetes" needs the files service')
    return KubernetesBackend(ft, files)


class KubernetesBackend:
    """A training run as a ``batch/v1`` Job running the trainer in the llamahost image,
    its inputs and output through the files backend (kube_backend.py, remote.py)."""

    name = "kubernetes"

    def __init__(self, config: FineTuningConfig, files: Any) -> None:
        self.config = config
        self.files = files

    def check_available(self) -> None:
        from .kube import INSTALL_HINT, client_installed

        if not client_installed():  # the trainer's own extra is the pod image's business
            raise TrainingUnavailable(f'[fine_tuning] backend = "kubernetes" needs the kubernetes client: {INSTALL_HINT}')

    def base_model(self, model: ModelConfig) -> str:
        # As the pod sees it: the image's bundled model, or a path on a mounted volume.
        return base_model_path(model)

    async def run(self, run: TrainingRun) -> int:
        from .kube_backend import run_on_kubernetes

        return await run_on_kubernetes(self.config.kubernetes, self.files, run)
