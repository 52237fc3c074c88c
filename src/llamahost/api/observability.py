"""Request ids, request logs and the /metrics endpoint."""

from __future__ import annotations

import logging
import re
import time
import uuid

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import observability as obs
from ..engines.openai_upstream import OpenAIUpstreamEngine
from ..errors import EngineFailure
from .errors import error_response
from .services import Services

access_log = logging.getLogger("llamahost.access")
log = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
# A client's id is echoed only if it is short and printable, so it is safe in logs
# and headers; anything else is replaced by a fresh id.
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics() -> Response:
    payload, content_type = obs.metrics_payload()
    return Response(payload, media_type=content_type)


class RequestContext:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): takes the
    client's ``x-request-id`` or makes one, puts it on every response and in every log
    record of the request, and logs one line per request when its body is done."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = b""
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                request_id = value
                break
        if not _VALID_REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex.encode()
        rid = request_id.decode()
        token = obs.request_id_var.set(rid)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error")
            if status == 0:  # nothing sent yet: answer here, so even this carries the id
                await error_response(EngineFailure("internal server error"))(scope, receive, send_with_id)
            else:
                status = status or 500
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            principal = scope.get("state", {}).get("principal")
            team = getattr(principal, "team_name", None)
            path = scope.get("path", "")
            access_log.info(
                "%s %s %d %.1fms%s",
                scope.get("method", ""),
                path,
                status,
                elapsed_ms,
                f" team={team}" if team else "",
                extra={
                    "event": "http_request",
                    "method": scope.get("method"),
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed_ms, 1),
                    "team": team,
                },
            )
            obs.request_id_var.reset(token)


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


def attach(app: FastAPI, services: Services) -> None:
    app.add_api_route("/health", health, methods=["GET"], include_in_schema=False)
    if services.config.server.metrics:
        app.include_router(router)

