"""The served OpenAPI document tells the truth (``http_docs``): routes declare their
bodies and responses, and the document FastAPI builds is completed with them once."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ..http_docs import complete
from .services import Services


def attach(app: FastAPI, services: Services) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the document
