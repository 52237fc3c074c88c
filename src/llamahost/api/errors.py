"""Exception handlers: every failure leaves the server as ``{"error": {...}}`` JSON."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import APIError, EngineFailure, InvalidRequest, NotFound
from ..store.crypto import CryptoError

log = logging.getLogger(__name__)

_HTTP_ERROR_TYPES = {404: NotFound, 405: InvalidRequest}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_class = _HTTP_ERROR_TYPES.get(exc.status_code, APIError)
        error = error_class(str(exc.detail), status_code=exc.status_code, headers=dict(exc.headers or {}))
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return error_response(InvalidRequest(f"{param}: {first['msg']}" if param else str(first["msg"]), param=param))

    @app.exception_handler(CryptoError)
    async def _crypto_error(_request: Request, exc: CryptoError) -> JSONResponse:
        # Encrypted data that does not open (tampered, moved, wrong or rotated master key)
        # is the server's problem, said plainly; never a guess at the plaintext.
        log.error("decryption failed: %s", exc)
        return error_response(EngineFailure(str(exc), code="decryption_failed"))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(EngineFailure("internal server error"))
