"""The fine-tuning API's logic: checking a job request (every refusal a 400 naming its
field), queueing the job, reading jobs, events and checkpoints back, cancelling, the
artifacts archive, and the tuned models as the serving side sees them.

Who may do what: any key of a team lists and reads the team's jobs, events, checkpoints
and artifacts, and calls its tuned models; creating and cancelling jobs (which spend the
server's CPU or a cluster's GPUs) needs an admin key of the team or an operator key
(403 otherwise). Deleting a tuned model (``DELETE /v1/models/{id}``) needs the same.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import math
import re
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..config import Config, ModelConfig
from ..errors import InvalidRequest, NotFound, PermissionDenied, RateLimited
from ..files.datasets import lines
from ..files.service import FileService
from ..finetune.backends import Backend
from ..finetune.deps import TrainingUnavailable
from ..jobs.queue import JobQueue
from ..store.keyring import Keyring
from ..tenancy.scope import ADMIN, OPERATOR, Scope
from ..types.tuned import TUNED_PREFIX, TunedModel, TunedModelSource
from . import protocol as wire
from .store import (
    ACTIVE,
    CANCELLED,
    FAILED,
    FINISHED,
    QUEUED,
    SUCCEEDED,
    FineTuningStore,
    JobRecord,
    NewEvent,
    TunedRow,
)

KIND = "fine_tune"  # the job kind that runs a fine-tuning job (runner.py)
FINETUNE_PURPOSE = "messages_finetune"  # OpenAI's "fine-tune"
SUFFIX = re.compile(r"[A-Za-z0-9_-]{1,40}")
# The ranges a request may ask for (TrainingSpec allows a little more for direct use).
N_EPOCHS = (1, 50)
BATCH_SIZE = (1, 256)
MAX_LR_MULTIPLIER = 10.0
MAX_SEED = 2**31 - 1
CREATE_ROLES = (ADMIN, OPERATOR)
# What the artifacts archive holds of the final checkpoint (the optimizer state stays out).
ARTIFACT_MEMBERS = ("adapter.gguf", "adapter/", "checkpoint.json")
SPOOL_BYTES = 8 * 1024 * 1024


def require_admin(role: str, what: str) -> None:
    if role not in CREATE_ROLES:
        raise PermissionDenied(f"{what} needs an admin or operator key of the team", param="authorization")


def tuned_model_id(base: str, organization: str, suffix: str | None, job_id: str) -> str:
    return f"{TUNED_PREFIX}{base}:{organization}:{suffix or ''}:{job_id}"


def checkpoint_model_id(final_id: str, step: int) -> str:
    return f"{final_id}:ckpt-step-{step}"


def auto_hyperparameters(examples: int) -> dict[str, Any]:
    """What "auto" means: three epochs; batches of about a tenth of the examples, 1 to 8
    (small batches suit a CPU and a small dataset); the learning rate at twice the base."""
    return {"n_epochs": 3, "batch_size": max(1, min(8, examples // 10)), "learning_rate_multiplier": 2.0}


def _number(value: Any, param: str, low: float, high: float, *, integer: bool, low_open: bool = False) -> int | float:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise InvalidRequest(f"{param} must be \"auto\" or {kind}", param=param)
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise InvalidRequest(f"{param} must be {bound} and at most {high:g} (got {value})", param=param)
    return value


@dataclass(frozen=True)
class Requested:
    hyperparameters: dict[str, Any]  # each a number or "auto"


class FineTuningService:
    def __init__(self, store: FineTuningStore, files: FileService, queue: JobQueue, config: Config,
                 keyring: Keyring, backend: Backend) -> None:
        self.store = store
        self.files = files
        self.queue = queue
        self.config = config
        self.keyring = keyring
        self.backend = backend
        # What the serving side is handed (typed as the protocol: mypy checks the fit).
        self.models: TunedModelSource = TunedModels(store, files)

    def organization(self, team_id: int) -> str:
        return self.keyring.team_opaque_id(team_id)

    # --- create ------------------------------------------------------------------------------

    def create_job(self, team_id: int, key_id: str | None, role: str, body: wire.JobCreate) -> dict[str, Any]:
        require_admin(role, "creating a fine-tuning job")
        if body.integrations:
            raise InvalidRequest("integrations: none are supported (events are read with GET .../events)",
                                 param="integrations")
        requested = self._hyperparameters(body)
        if body.suffix is not None and not SUFFIX.fullmatch(body.suffix):
            raise InvalidRequest("suffix must be 1 to 40 characters of A-Z, a-z, 0-9, '_' and '-'", param="suffix")
        seed = body.seed
        if seed is not None:
            _number(seed, "seed", 0, MAX_SEED, integer=True)
        self._check_metadata(body.metadata)
        model = self.tunable_model(body.model)
        examples = self._check_file(team_id, body.training_file, "training_file")
        if body.validation_file is not None:
            self._check_file(team_id, body.validation_file, "validation_file")
        auto = auto_hyperparameters(examples)
        hyperparameters = {k: auto[k] if v == "auto" else v for k, v in requested.hyperparameters.items()}
        if seed is None:
            # OpenAI picks one when none is given, and reports it: a rerun with it repeats the job.
            seed = int.from_bytes(hashlib.sha256(f"{team_id}:{body.training_file}".encode()).digest()[:4]) & MAX_SEED
        # A job whose queue job ended unseen (its last worker was killed) must not hold a slot.
        for active in self.store.active_jobs(team_id):
            self._reconcile(active)
        job_id = self.store.create_job(
            team_id, key_id, model=model.id, training_file=body.training_file, validation_file=body.validation_file,
            hyperparameters=hyperparameters, seed=seed, suffix=body.suffix, metadata=body.metadata, status=QUEUED,
        )
        # The limit is checked after the insert, so two racing requests cannot both slip
        # under it (both may be refused; neither exceeds it).
        limit = self.config.fine_tuning.max_jobs_per_team
        if self.store.count_active(team_id) > limit:
            self.store.delete_team_job(job_id)
            raise RateLimited(
                f"the team has {limit} fine-tuning job{'s' if limit != 1 else ''} queued or running, the most "
                f"[fine_tuning] max_jobs_per_team allows; wait for one to finish or cancel one",
                code="too_many_active_jobs",
            )
        files = body.training_file + (f" and validation file {body.validation_file}" if body.validation_file else "")
        self.store.add_events(job_id, team_id, [
            NewEvent(f"Created fine-tuning job: {job_id}"),
            NewEvent(f"Validated training file: {files} ({examples} examples)"),
            NewEvent("Files validated, moving job to queued state"),
        ])
        queue_job = self.queue.enqueue(KIND, {"fine_tuning_job_id": job_id}, team_id=team_id,
                                       dedupe_key=f"{KIND}:{job_id}")
        self.store.set_queue_job(job_id, queue_job)
        return self.get_job(team_id, job_id)

    def _hyperparameters(self, body: wire.JobCreate) -> Requested:
        method = body.method
        given: dict[str, Any] | None = None
        where = "hyperparameters"
        if method is not None:
            kind = method.get("type")
            if kind != "supervised":
                raise InvalidRequest(
                    f"method.type: only \"supervised\" fine-tuning is supported (got {kind!r})", param="method.type"
                )
            for key in method:
                if key not in ("type", "supervised"):
                    raise InvalidRequest(f"method.{key}: not for supervised fine-tuning", param=f"method.{key}")
            supervised = method.get("supervised")
            if supervised is not None:
                if not isinstance(supervised, dict) or set(supervised) - {"hyperparameters"}:
                    raise InvalidRequest("method.supervised takes hyperparameters only", param="method.supervised")
                if supervised.get("hyperparameters") is not None:
                    given, where = supervised["hyperparameters"], "method.supervised.hyperparameters"
        if body.hyperparameters is not None:
            if given is not None and given != body.hyperparameters:
                raise InvalidRequest("hyperparameters: give them in method.supervised.hyperparameters or at the top "
                                     "level, not both", param="hyperparameters")
            given, where = body.hyperparameters, "hyperparameters"
        given = given or {}
        if not isinstance(given, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        for key in given:
            if key not in ("n_epochs", "batch_size", "learning_rate_multiplier"):
                raise InvalidRequest(f"{where}.{key}: unknown hyperparameter (n_epochs, batch_size and "
                                     f"learning_rate_multiplier are)", param=f"{where}.{key}")
        out: dict[str, Any] = {}
        for key, (low, high, integer) in {
            "n_epochs": (*N_EPOCHS, True), "batch_size": (*BATCH_SIZE, True),
            "learning_rate_multiplier": (0.0, MAX_LR_MULTIPLIER, False),
        }.items():
            value = given.get(key, "auto")
            if value is None or value == "auto":
                out[key] = "auto"
                continue
            out[key] = _number(value, f"{where}.{key}", low, high, integer=integer, low_open=not integer)
            if not integer:
                out[key] = float(out[key])
        return Requested(out)

    @staticmethod
    def _check_metadata(metadata: dict[str, str] | None) -> None:
        if metadata is None:
            return
        if len(metadata) > wire.MAX_METADATA_KEYS:
            raise InvalidRequest(f"metadata: at most {wire.MAX_METADATA_KEYS} keys", param="metadata")
        for key, value in metadata.items():
            if len(key) > wire.MAX_METADATA_KEY_CHARS:
                raise InvalidRequest(f"metadata: keys are at most {wire.MAX_METADATA_KEY_CHARS} characters",
                                     param=f"metadata.{key[:64]}")
            if len(value) > wire.MAX_METADATA_VALUE_CHARS:
                raise InvalidRequest(f"metadata.{key}: values are at most {wire.MAX_METADATA_VALUE_CHARS} characters",
                                     param=f"metadata.{key}")

    def tunable_model(self, name: str) -> ModelConfig:
        """The configured model ``name`` answers to, if this server can tune it; else a 400
        naming ``model`` that says why."""
        if name.startswith(TUNED_PREFIX):
            raise InvalidRequest(f"model: {name!r} is a tuned model; tune its base model instead", param="model")
        model_id = self.config.model_id_for(name)
        if model_id is None:
            raise InvalidRequest(f"model: no model {name!r} is configured here", param="model")
        model = next(m for m in self.config.models if m.id == model_id)
        self.backend.base_model(model)
        if not self.config.jobs.run_in_server:
            # Training runs in `llamahost jobs work` elsewhere, maybe on a machine with the
            # extra this one lacks: the attempt itself checks (and fails the job saying why).
            return model
        try:
            self.backend.check_available()
        except TrainingUnavailable as exc:
            # A 400 rather than the 503 it is inside the trainer: the request cannot succeed
            # until an operator installs the extra, and a client must not retry it.
            raise InvalidRequest(f"model: this server cannot fine-tune: {exc.message}", param="model",
                                 code="training_unavailable") from None
        return model

    def _check_file(self, team_id: int, file_id: str, param: str) -> int:
        """The file's example count, if it is the team's finished, valid fine-tuning dataset."""
        try:
            view = self.files.get(team_id, file_id)
        except NotFound:
            raise InvalidRequest(f"{param}: no file {file_id[:64]!r}", param=param) from None
        if view.purpose != FINETUNE_PURPOSE:
            raise InvalidRequest(
                f"{param}: file {file_id} has purpose {view.purpose!r}; fine-tuning takes purpose \"fine-tune\" "
                f"(native: {FINETUNE_PURPOSE!r})",
                param=param,
            )
        if view.status == "processing":
            raise InvalidRequest(f"{param}: file {file_id} is still being processed; try again shortly", param=param)
        if view.status != "processed":
            raise InvalidRequest(f"{param}: file {file_id} failed validation: {view.status_details}", param=param)
        _, chunks = self.files.content(team_id, file_id)
        return sum(1 for _, line in lines(chunks) if line.strip())

    # --- read --------------------------------------------------------------------------------

    def _reconcile(self, job: JobRecord) -> JobRecord:
        """A job whose queue job ended without the job itself ending (its last attempt's
        worker was killed, the queue gave up) is failed here, so none stays "running"."""
        if job.status not in ACTIVE or job.queue_job_id is None:
            return job
        try:
            queued = self.queue.get(Scope.operator(), job.queue_job_id)
            status, error = queued.status, queued.error
        except NotFound:
            status, error = "failed", "its queue job is gone"
        if status in ("queued", "running"):
            return job
        if status == "cancelled":
            self.store.transition(job.id, CANCELLED, only_from=ACTIVE)
        else:
            self.store.transition(job.id, FAILED, only_from=ACTIVE, error={
                "code": "training_interrupted",
                "message": f"training did not finish: {error or 'its job ended without a result'}",
                "param": None,
            })
        return self.store.get_job(job.team_id, job.id)

    def get_job(self, team_id: int, job_id: str) -> dict[str, Any]:
        job = self._reconcile(self.store.get_job(team_id, job_id))
        return wire.job_view(job, self.organization(team_id))

    def list_jobs(self, team_id: int, *, after: str | None, limit: int, metadata: dict[str, str] | None) -> dict[str, Any]:
        jobs = self.store.list_jobs(team_id, after=after, limit=limit + 1, metadata=metadata)
        organization = self.organization(team_id)
        return wire.page([wire.job_view(self._reconcile(job), organization) for job in jobs], limit)

    def cancel_job(self, team_id: int, role: str, job_id: str) -> dict[str, Any]:
        require_admin(role, "cancelling a fine-tuning job")
        job = self._reconcile(self.store.get_job(team_id, job_id))
        if job.status in FINISHED:
            raise InvalidRequest(f"job {job_id} has already {job.status}; only a queued or running job can be cancelled",
                                 param="fine_tuning_job_id")
        # The job's own loop sees the status within a second and stops the trainer (which
        # stops within seconds); the queue's cancel covers a job no loop has claimed yet.
        if self.store.transition(job.id, CANCELLED, only_from=ACTIVE):
            self.store.add_events(job.id, team_id, [NewEvent("Fine-tuning job cancelled")])
        if job.queue_job_id is not None:
            try:
                self.queue.cancel(Scope.operator(), job.queue_job_id)
            except (NotFound, InvalidRequest):
                pass  # it ended meanwhile: the status above stands
        return self.get_job(team_id, job_id)

    def list_events(self, team_id: int, job_id: str, *, after: str | None, limit: int) -> dict[str, Any]:
        events = self.store.list_events(team_id, job_id, after=after, limit=limit + 1)
        return wire.page([wire.event_view(event) for event in events], limit)

    def list_checkpoints(self, team_id: int, job_id: str, *, after: str | None, limit: int) -> dict[str, Any]:
        self.store.get_job(team_id, job_id)
        checkpoints = self.store.checkpoints(job_id, team_id=team_id, after=after, limit=limit + 1)
        listed = wire.page([wire.checkpoint_view(c) for c in checkpoints], limit)
        data = listed["data"]
        listed["first_id"] = data[0]["id"] if data else None
        listed["last_id"] = data[-1]["id"] if data else None
        return listed

    # --- artifacts ---------------------------------------------------------------------------

    def artifacts(self, team_id: int, job_id: str) -> tuple[str, BinaryIO]:
        """The final adapter as one .tar.gz (adapter.gguf for llama.cpp, adapter/ the PEFT
        folder, checkpoint.json): a file name and a spooled temporary file holding it."""
        job = self.store.get_job(team_id, job_id)
        if job.status != SUCCEEDED:
            raise InvalidRequest(f"job {job_id} is {job.status}; its artifacts are there once it has succeeded",
                                 param="fine_tuning_job_id")
        final = next(iter(self.store.checkpoints(job.id, team_id=team_id, limit=1)), None)
        if final is None or final.archive is None:
            raise NotFound(f"job {job_id}'s adapter was deleted (with its tuned model)", param="fine_tuning_job_id")
        out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        with tempfile.TemporaryFile() as checkpoint_tar:
            for chunk in self.files.read_blob(team_id, final.archive.id, final.archive.chunks):
                checkpoint_tar.write(chunk)
            checkpoint_tar.seek(0)
            with tarfile.open(fileobj=checkpoint_tar, mode="r:") as source, \
                    tarfile.open(fileobj=out, mode="w:gz") as archive:
                if final.gguf is not None:  # an upstream model's adapter is the PEFT folder alone
                    gguf = b"".join(self.files.read_blob(team_id, final.gguf.id, final.gguf.chunks))
                    info = tarfile.TarInfo("adapter.gguf")
                    info.size, info.mtime, info.mode = len(gguf), int(final.created_at.timestamp()), 0o644
                    archive.addfile(info, io.BytesIO(gguf))
                for member in source.getmembers():
                    if member.name.startswith(ARTIFACT_MEMBERS[1]) or member.name == ARTIFACT_MEMBERS[2]:
                        archive.addfile(member, source.extractfile(member) if member.isfile() else None)
        out.seek(0)
        name = f"{job.id}-adapter.tar.gz"
        return name, out  # type: ignore[return-value]

    # --- teams --------------------------------------------------------------------------------

    def delete_team(self, team_id: int) -> dict[str, int]:
        return self.store.delete_team(team_id)


class TunedModels:
    """The tuned models as the serving side asks for them (``types.tuned.TunedModelSource``)."""

    def __init__(self, store: FineTuningStore, files: FileService) -> None:
        self.store = store
        self.files = files

    @staticmethod
    def _model(row: TunedRow) -> TunedModel:
        return TunedModel(id=row.id, team_id=row.team_id, base_model=row.base_model, job_id=row.job_id,
                          adapter_ref=row.checkpoint_id, created=int(row.created_at.timestamp()))

    def get(self, team_id: int, model_id: str) -> TunedModel | None:
        if not model_id.startswith(TUNED_PREFIX):
            return None
        row = self.store.tuned(team_id, model_id)
        return self._model(row) if row is not None else None

    def list(self, team_id: int) -> builtins.list[TunedModel]:
        return [self._model(row) for row in self.store.tuned_of_team(team_id)]

    def all_for_base(self, base_model: str) -> builtins.list[TunedModel]:
        return [self._model(row) for row in self.store.tuned_of_base(base_model)]

    def adapter_gguf(self, model: TunedModel) -> bytes:
        checkpoint = self.store.checkpoint(model.adapter_ref)
        if checkpoint is None or checkpoint.gguf is None:
            raise NotFound(f"the adapter of {model.id} was deleted", param="model")
        return b"".join(self.files.read_blob(checkpoint.team_id, checkpoint.gguf.id, checkpoint.gguf.chunks))

    def adapter_peft(self, model: TunedModel) -> dict[str, bytes]:
        """The PEFT folder (``adapter/`` of the checkpoint's archive): what vLLM loads."""
        checkpoint = self.store.checkpoint(model.adapter_ref)
        if checkpoint is None or checkpoint.archive is None:
            raise NotFound(f"the adapter of {model.id} was deleted", param="model")
        chunks = self.files.read_blob(checkpoint.team_id, checkpoint.archive.id, checkpoint.archive.chunks)
        folder: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:") as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.startswith("adapter/"):
                    extracted = archive.extractfile(member)
                    if extracted is not None:
                        folder[member.name.removeprefix("adapter/")] = extracted.read()
        return folder

    def delete(self, team_id: int, model_id: str) -> bool:
        blobs = self.store.delete_tuned(team_id, model_id)
        if blobs is None:
            return False
        for blob in blobs:
            self.files.delete_blob(team_id, blob.id)
        return True



def open_fine_tuning(stores: Any, files: FileService, queue: JobQueue) -> FineTuningService:
    from ..finetune.backends import backend_for

    return FineTuningService(FineTuningStore(stores.db, stores.keyring), files, queue, stores.config, stores.keyring,
                             backend_for(stores.config, files))
