"""``[fine_tuning] backend = "kubernetes"``: each training run a ``batch/v1`` Job.

The run's inputs go up as one sealed blob of the files backend; the Job runs the trainer
in the llamahost image (``--remote``), which publishes its output back there; this side
mirrors it into the run's output directory (``remote.Mirror``) while it follows the Job:

- the pod's trouble (an image that cannot be pulled, a missing secret, no node that fits)
  is told as events, and fails the job after ``start_timeout_seconds``;
- a pod that failed for a reason Kubernetes counts (OOM kill, lost node) is retried by the
  Job (``backoff_limit``) from the run's last published checkpoint; the Job's failure is
  the run's, with the reason;
- a cancel deletes the Job (its pods get SIGTERM: the trainer records the cancel and the
  pod publishes it); so does the job loop stopping or losing the job (the next attempt
  starts a Job of its own, resuming from the checkpoints the job has);
- the exit status returned is the trainer's own (0, 1, 3), from its published outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Protocol

from ..config import KubernetesConfig
from .kube import ANNOTATION_RUN, KubeJobs, job_name, job_state, render_job
from .remote import BlobStore, Mirror, RemoteRun, pack_inputs
from .spec import EXIT_CANCELLED, TrainingSpec

log = logging.getLogger(__name__)

# After a cancel deletes the Job, how long the trainer's published "cancelled" may take
# (its grace period is 30 s; it needs a few).
CANCEL_WAIT_SECONDS = 45.0
# After the Job ends, how long its pod's last publish may take to show (the pod publishes
# before it exits, so this only covers a store slow to show a write).
OUTCOME_WAIT_SECONDS = 5.0
# The run crashed without a verdict (the Job vanished, or ended without publishing one).
EXIT_LOST = 70


class Run(Protocol):
    """What this needs of a training run (``backends.TrainingRun``)."""

    job_id: str
    team_id: int
    attempt: int
    spec: TrainingSpec
    cancel: asyncio.Event

    @property
    def output_dir(self) -> Path: ...


async def run_on_kubernetes(settings: KubernetesConfig, files: BlobStore, run: Run) -> int:
    return await _Follower(settings, files).run(run)


class _Follower:
    def __init__(self, settings: KubernetesConfig, files: BlobStore) -> None:
        self.settings = settings
        self.files = files

    def _threads(self, run: Run) -> int:
        cpu = self.settings.cpu or ""
        return int(cpu) if re.fullmatch(r"[1-9][0-9]*", cpu) else run.spec.threads

    async def run(self, run: Run) -> int:
        spec = run.spec.model_dump(mode="json")
        spec["threads"] = self._threads(run)
        remote = await asyncio.to_thread(
            pack_inputs, self.files, run.team_id, spec, run.spec.training_file, run.spec.validation_file, run.output_dir
        )
        from kubernetes.client.exceptions import ApiException

        mirror = Mirror(self.files, remote, run.output_dir)
        try:
            jobs = await asyncio.to_thread(KubeJobs, self.settings)
        except Exception as exc:  # no kubeconfig, no service account: a setting, not a crash to retry
            await asyncio.to_thread(mirror.delete)
            return self._failed(
                run, mirror,
                f"cannot reach the Kubernetes API ({exc}); set [fine_tuning.kubernetes] kubeconfig (and context), or run "
                "the job loop in the cluster with a service account allowed to manage Jobs",
            )
        name = job_name(f"{run.job_id}-{run.attempt}")
        try:
            # An earlier attempt's Job (its worker died) would race this one: it goes first,
            # and the blobs of its run with it.
            for earlier in range(1, run.attempt):
                await asyncio.to_thread(self._remove_left_behind, jobs, run, job_name(f"{run.job_id}-{earlier}"))
            job = render_job(f"{run.job_id}-{run.attempt}", ["--remote", remote.to_arg(), "--work-dir", "/scratch"],
                             self.settings, annotations={ANNOTATION_RUN: remote.run})
            try:
                await asyncio.to_thread(jobs.submit, job)
            except ApiException as exc:
                if exc.status not in (400, 401, 403, 404, 422):
                    raise  # the API server's trouble (5xx): a failed attempt, retried
                return self._failed(run, mirror, f"Kubernetes refused the Job (HTTP {exc.status}: {_reason(exc)})")
            mirror.note(f"Kubernetes Job {self.settings.namespace}/{name} submitted")
            return await self._follow(run, jobs, name, mirror)
        except BaseException:
            # Cancelled from outside (the loop stopping, the lease lost) or failed here: the
            # Job must not train on unwatched.
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.to_thread(jobs.delete, name))
            raise
        finally:
            await asyncio.to_thread(jobs.close)
            await asyncio.to_thread(mirror.delete)

    def _remove_left_behind(self, jobs: KubeJobs, run: Run, name: str) -> None:
        job, _ = jobs.read(name)
        if job is None:
            return
        jobs.delete(name)
        annotations = (job.metadata.annotations if job.metadata else None) or {}
        try:
            left = RemoteRun(run.team_id, annotations[ANNOTATION_RUN], 0)
        except KeyError:
            return
        Mirror(self.files, left, run.output_dir).delete(probe=True)

    async def _follow(self, run: Run, jobs: KubeJobs, name: str, mirror: Mirror) -> int:
        told: set[str] = set()
        phase = ""
        last_pod: str | None = None
        stuck_since: float | None = None
        while True:
            await asyncio.to_thread(mirror.pull)
            if run.cancel.is_set():
                await asyncio.to_thread(jobs.delete, name)
                mirror.note("Kubernetes Job deleted (cancelled)")
                return await self._outcome(mirror, CANCEL_WAIT_SECONDS, default=EXIT_CANCELLED)
            job, pods = await asyncio.to_thread(jobs.read, name)
            if pods and pods[-1].metadata is not None:
                last_pod = pods[-1].metadata.name
            if job is None:
                mirror.note(f"Kubernetes Job {name} disappeared (deleted from outside?)", level="warn")
                return await self._outcome(mirror, 0, default=EXIT_LOST)
            state = job_state(job, pods)
            for problem in state.failures + state.problems:
                if problem not in told:
                    told.add(problem)
                    mirror.note(f"Kubernetes: {problem}", level="warn")
            if state.phase != phase:
                phase = state.phase
                if phase in ("pending", "running"):
                    mirror.note(f"Kubernetes: {state.message}")
            if state.phase == "succeeded":
                return await self._outcome(mirror, OUTCOME_WAIT_SECONDS, default=EXIT_LOST)
            if state.phase == "failed":
                code = await self._outcome(mirror, OUTCOME_WAIT_SECONDS, default=None)
                if code is not None and code in (0, 1, EXIT_CANCELLED):
                    return code
                # No verdict of the trainer's: the pod's own last words say why.
                tail = await asyncio.to_thread(jobs.log_tail, last_pod) if last_pod else ""
                return self._failed(run, mirror, state.message + (f"; the pod's log ends: {tail[-1500:]}" if tail else ""))
            if state.stuck:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > self.settings.start_timeout_seconds:
                    await asyncio.to_thread(jobs.delete, name)
                    waited = f"{self.settings.start_timeout_seconds:.0f} s"
                    return self._failed(run, mirror, f"the trainer's pod did not start within {waited}: {state.problems[-1]}")
            else:
                stuck_since = None
            try:
                await asyncio.wait_for(run.cancel.wait(), self.settings.poll_seconds)
            except TimeoutError:
                pass

    async def _outcome(self, mirror: Mirror, wait: float, default: int | None) -> Any:
        """The trainer's exit status as it published it, waiting up to ``wait`` for it."""
        deadline = time.monotonic() + wait
        while not await asyncio.to_thread(mirror.pull):
            if time.monotonic() >= deadline:
                return default
            await asyncio.sleep(min(1.0, self.settings.poll_seconds))
        assert mirror.outcome is not None
        return int(mirror.outcome["exit"])

    def _failed(self, run: Run, mirror: Mirror, message: str) -> int:
        """A failure Kubernetes reports (not the trainer's verdict) as the run's result."""
        mirror.note(message, level="error")
        result = {"status": "failed", "error": {"message": message, "param": None}}
        (run.output_dir / "result.json").write_text(json.dumps(result, indent=2))
        return 1


def _reason(exc: Any) -> str:
    """The API server's message (a Status object's), else its HTTP reason."""
    try:
        return str(json.loads(exc.body)["message"])[:500]
    except (TypeError, ValueError, KeyError):
        return str(exc.reason)
