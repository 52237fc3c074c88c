"""The ASGI application: composes the feature slices. Each slice (a router module with an
``attach(app, services)``) wires its own routes and whatever it needs from the services;
this module only orders middleware, error rendering, the lifespan and the slices, so it
does not grow with each feature."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..config import ENV_WORKER_CONFIG, Config
from ..evals import router as evals
from ..files import router as files
from ..fine_tuning import router as fine_tuning
from ..observability import process_exiting
from ..web import dashboard
from . import admin, admin_teams, compat, jobs, native, observability, openapi, team
from .common import BodySizeLimit
from .errors import install_error_handlers
from .services import Services, build_services, load_models

log = logging.getLogger("llamahost")

# Every feature slice, in the order their routes are matched.
SLICES = (native, compat, files, evals, fine_tuning, admin, admin_teams, jobs, team, dashboard, observability, openapi)


def create_app(config: Config, services: Services | None = None) -> FastAPI:
    services = services or build_services(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for line in services.registry.describe():
            log.info("serving %s", line)
        limiter = services.metering.limiter
        log.info("rate limits: %s", f"{limiter.name} counters" if limiter else "off")
        # Before serving: usage records a killed process journalled are stored first.
        await services.metering.start()
        loading = asyncio.create_task(load_models(services))
        try:
            yield
        finally:
            loading.cancel()
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
    for feature in SLICES:
        feature.attach(app, services)
    return app


def worker_app() -> FastAPI:
    """The app factory run by each ``llamahost serve --workers N`` process: uvicorn
    starts workers from an import string, so the parent's resolved configuration
    (file, environment and flags already merged) reaches them as JSON in the environment."""
    from ..observability import configure_logging

    config = Config.model_validate(json.loads(os.environ[ENV_WORKER_CONFIG]))
    configure_logging(config.server.log_level, config.server.log_format)
    return create_app(config)
