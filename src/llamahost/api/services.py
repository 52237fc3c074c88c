"""The services one server process runs, built once from the configuration: stores,
model registry, chat, metering and moderation. Feature slices read what they need from
here in their own ``attach``."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

from ..chat.images import ImagePolicy
from ..chat.service import ChatService
from ..config import Config
from ..engines.registry import ModelRegistry
from ..evals import runner as eval_runs
from ..evals.service import EvalService, open_evals
from ..files import expiry as upload_expiry
from ..files.service import FileService, open_files
from ..fine_tuning import runner as fine_tuning_runs
from ..fine_tuning.service import FineTuningService, open_fine_tuning
from ..jobs import retention as retention_jobs
from ..jobs.service import Jobs, open_jobs
from ..observability import UserLogging
from ..safety.guardrails import Guardrails, LogRecorder
from ..safety.service import ModerationService
from ..tenancy.journal import JOURNAL_DIRNAME
from ..tenancy.limits import build_limiter
from ..tenancy.metering import Metering
from ..tenancy.stores import Stores, open_stores

log = logging.getLogger("llamahost")

# Every job kind's registration, ``register(kinds, config)``: a feature with background
# work (uploads expiry, fine-tuning, evals) adds its own here.
JOB_KINDS = (retention_jobs.register, upload_expiry.register, eval_runs.register, fine_tuning_runs.register)


@dataclass
class Services(Stores):
    registry: ModelRegistry
    chat: ChatService
    metering: Metering
    moderation: ModerationService
    files: FileService
    jobs: Jobs
    evals: EvalService
    fine_tuning: FineTuningService
    load_error: str | None = None


def build_services(config: Config) -> Services:
    stores = open_stores(config)
    registry = ModelRegistry(config)
    chat = ChatService(registry, images=ImagePolicy.from_config(config.images))
    chat.user_logging = UserLogging(config.server.log_users, stores.keyring.log_user_hash)
    moderation = ModerationService(config, chat)
    chat.guard = Guardrails(
        config.moderation, moderation, recorder=LogRecorder(chat.user_logging), settings=stores.settings
    )
    files = open_files(
        config, stores.db, stores.keyring, quota=lambda team_id: stores.settings.effective(team_id).files_quota_bytes
    )
    stores.teams.on_delete.append(files.delete_team)
    jobs = open_jobs(stores, JOB_KINDS)
    evals = open_evals(stores, registry, jobs.queue, files)
    stores.teams.on_delete.append(evals.delete_team)
    fine_tuning = open_fine_tuning(stores, files, jobs.queue)
    stores.teams.on_delete.append(fine_tuning.delete_team)
    # Tuned models are served by name from here on (before the engines load: they preload theirs).
    registry.set_tuned_source(fine_tuning.models)
    return Services(
        **vars(stores),
        registry=registry,
        chat=chat,
        metering=Metering(
            build_limiter(config), stores.limits, stores.usage, stores.content, journal_dir=config.data_dir / JOURNAL_DIRNAME
        ),
        moderation=moderation,
        files=files,
        jobs=jobs,
        evals=evals,
        fine_tuning=fine_tuning,
    )


async def load_models(services: Services) -> None:
    for model_id, engine in services.registry.engines.items():
        try:
            await engine.load()
            log.info("model %s loaded (%s)", model_id, engine.description)
        except Exception as exc:  # health reports it; the process stays up to say why
            services.load_error = f"model {model_id!r} failed to load: {exc}"
            log.exception("model %s failed to load", model_id)
    try:
        await services.moderation.load()
        log.info("moderation models loaded: %s", ", ".join(m.config.id for m in services.moderation.moderators))
    except Exception as exc:
        services.load_error = f"the builtin moderation model failed to load: {exc}"
        log.exception("moderation model failed to load")
    # What is loaded now lives as long as the process: moved out of the collector's
    # generations, it is no longer rescanned by every full collection on the request path.
    gc.collect()
    gc.freeze()
