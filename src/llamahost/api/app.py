"""The ASGI application: wires configuration, storage, engines and routers together."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..chat.images import ImagePolicy
from ..chat.service import ChatService
from ..config import Config
from ..engines.openai_upstream import OpenAIUpstreamEngine
from ..observability import process_exiting
from ..engines.registry import ModelRegistry
from ..safety.guardrails import Guardrails
from ..safety.service import ModerationService
from ..tenancy.limits import build_limiter
from ..tenancy.metering import Metering
from ..tenancy.retention import purge_periodically
from ..tenancy.stores import Stores, open_stores
from ..web import dashboard
from . import admin, admin_teams, compat, native, observability, team
from .common import BodySizeLimit
from .errors import install_error_handlers

log = logging.getLogger("llamahost")


@dataclass
class Services(Stores):
    registry: ModelRegistry
    chat: ChatService
    metering: Metering
    moderation: ModerationService
    load_error: str | None = None


def build_services(config: Config) -> Services:
    stores = open_stores(config)
    registry = ModelRegistry(config)
    chat = ChatService(registry, images=ImagePolicy.from_config(config.images))
    moderation = ModerationService(config, chat)
    chat.guardrails = Guardrails(config.moderation, moderation, settings=stores.settings)
    return Services(
        **vars(stores),
        registry=registry,
        chat=chat,
        metering=Metering(build_limiter(config), stores.limits, stores.usage, stores.content),
        moderation=moderation,
    )


async def _load_models(services: Services) -> None:
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


def create_app(config: Config, services: Services | None = None) -> FastAPI:
    services = services or build_services(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for line in services.registry.describe():
            log.info("serving %s", line)
        limiter = services.metering.limiter
        log.info("rate limits: %s", f"{limiter.name} counters" if limiter else "off")
        loading = asyncio.create_task(_load_models(services))
        purging = asyncio.create_task(purge_periodically(services.content, config.content.purge_interval_seconds))
        try:
            yield
        finally:
            loading.cancel()
            purging.cancel()
            await services.metering.close()
            for engine in services.registry.engines.values():
                await engine.close()
            await services.moderation.close()
            services.db.close()
            process_exiting()

    app = FastAPI(title="llamahost", version=__version__, lifespan=lifespan)
    app.state.services = services
    app.add_middleware(BodySizeLimit, limit=config.server.max_request_bytes)
    app.add_middleware(observability.RequestContext)  # added last: outermost
    install_error_handlers(app)
    app.include_router(native.router)
    app.include_router(compat.router)
    app.include_router(admin.router)
    app.include_router(admin_teams.router)
    app.include_router(team.router)
    dashboard.mount(app)
    if config.server.metrics:
        app.include_router(observability.router)

    @app.get("/health", include_in_schema=False)
    async def health(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        if services.load_error:
            return JSONResponse({"status": "error", "detail": services.load_error}, status_code=503)
        if not (services.registry.ready and services.moderation.ready):
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
        upstreams = {
            model_id: engine.pool.status()
            for model_id, engine in services.registry.engines.items()
            if isinstance(engine, OpenAIUpstreamEngine)
        }
        # llamahost itself is up even when an upstream is not: the replicas' state is
        # reported, not turned into a failing check that would take llamahost out too.
        return JSONResponse({"status": "ok", "upstreams": upstreams} if upstreams else {"status": "ok"})

    return app


WORKER_CONFIG_ENV = "LLAMAHOST_WORKER_CONFIG"


def worker_app() -> FastAPI:
    """The app factory run by each ``llamahost serve --workers N`` process: uvicorn
    starts workers from an import string, so the parent's resolved configuration
    (file, environment and flags already merged) reaches them as JSON in the environment."""
    from ..observability import configure_logging

    config = Config.model_validate(json.loads(os.environ[WORKER_CONFIG_ENV]))
    configure_logging(config.server.log_level, config.server.log_format)
    return create_app(config)
