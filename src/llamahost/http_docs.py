"""What a route declares for the OpenAPI document (``/openapi.json``, ``/docs``): its
request body, success response and every error status it can return. Below ``api/``
next to ``http_common``, so that feature slices in their own packages declare theirs too.

Handlers parse their bodies themselves (``http_common.parse_body``) so that a bad body is
the Llama API's 400 naming the field, not FastAPI's 422; FastAPI therefore cannot see the
body. ``operation(body=Model, ...)`` declares it: the route's ``requestBody`` names the
same pydantic model the handler validates with, and ``complete`` (run by ``api/openapi``
when the document is built) puts that model's JSON schema, and the models it refers to,
under ``components/schemas``. It also replaces FastAPI's 422 (never sent: a query or
path parameter that does not validate is a 400 too, see ``api/errors.py``) by the 400.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fastapi import Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .protocol.error_body import ErrorResponse

# Marks a request body in a route's openapi_extra until the document is built; the value
# is the key of the model in _request_models.
_BODY_MODEL_KEY = "x-llamahost-body-model"
_request_models: dict[str, type[BaseModel]] = {}

COMPONENTS_REF = "#/components/schemas/"

ERROR_DESCRIPTIONS = {
    400: "Invalid request: `error.param` names the field, query parameter or header at fault",
    401: "No API key, or an invalid, revoked or expired one",
    403: "The key's role may not do this",
    404: "Not found (a model, team, key or record); `error.param` says which",
    409: "Conflicts with the current state",
    413: "The request body is larger than `[server] max_request_bytes`",
    415: "The request body is not `application/json`",
    429: "A rate limit was reached; the `x-ratelimit-*` headers say which and when it resets",
    500: "The engine failed, or stored data did not decrypt (`code: decryption_failed`)",
    502: "An upstream engine (or a llama-guard moderation model) answered with an error or no verdict",
    503: "Overloaded or still loading (the queue is full, a model is loading, a replica is down): retry",
    504: "The upstream engine did not answer in time",
}

# What a chat completion can fail with besides a bad body (400/413/415) and a bad key (401).
CHAT_ERRORS = (404, 429, 500, 502, 503, 504)
# Reading usage or stored requests decrypts what was sealed; a row that does not open is a 500.
DECRYPTING_ERRORS = (500,)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for error statuses, each with the error shape."""
    return {status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def operation(
    *,
    body: type[BaseModel] | None = None,
    multipart: dict[str, Any] | None = None,
    response: Any = None,
    documented_response: type[BaseModel] | None = None,
    status: int = 200,
    errors: Iterable[int] = (),
    other_success: dict[int, tuple[Any, str]] | None = None,
    streams: bool = False,
    binary: bool = False,
    headers: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Keyword arguments for a route decorator (``@router.post(path, **operation(...))``).

    ``body``: the wire model the handler parses with ``parse_body``. ``response``: the
    success model (documents the response; a handler returning a Response bypasses it).
    ``documented_response``: the success model for the document only, for a handler
    that builds its answer as a dict (FastAPI neither filters nor validates it).
    ``errors``: the error statuses this operation adds to its router's; a body adds 400,
    413 and 415. ``other_success``: further success statuses as ``{status: (model,
    description)}``. ``streams``: ``stream: true`` answers ``text/event-stream``.
    ``multipart``: the JSON schema of a ``multipart/form-data`` body (read by the handler
    as a stream). ``binary``: the success body is the bytes of a file, of its own media
    type. ``headers``: OpenAPI parameter objects for request headers the handler reads.
    """
    statuses = set(errors)
    extra: dict[str, Any] = {}
    if body is not None:
        key = f"{body.__module__}.{body.__qualname__}"
        _request_models[key] = body
        extra["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {_BODY_MODEL_KEY: key}}},
        }
        statuses |= {400, 413, 415}
    if multipart is not None:
        extra["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": multipart}}}
        statuses |= {400, 413, 415}
    if headers:
        extra["parameters"] = list(headers)
        statuses.add(400)
    responses = error_responses(*sorted(statuses))
    for other, (model, description) in (other_success or {}).items():
        responses[other] = {"model": model, "description": description}
    if streams:
        responses[status] = {
            "description": "The completion; with `stream: true`, server-sent events (their shapes are in the README)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    if binary:
        responses[status] = {
            "description": "The file's bytes, with its own media type",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        }
    kwargs: dict[str, Any] = {"status_code": status, "responses": responses}
    if binary:
        kwargs["response_class"] = Response  # no media type of its own: not also application/json
    if response is not None:
        kwargs["response_model"] = response
    if documented_response is not None:
        kwargs["response_model"] = None
        responses[status] = {"model": documented_response, "description": "Successful Response"}
    if extra:
        kwargs["openapi_extra"] = extra
    return kwargs


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Fill in the request bodies and replace 422 by 400 in a document FastAPI built."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    _add_request_bodies(document, schemas)
    error_ref = {"$ref": COMPONENTS_REF + _component_name(schemas, ErrorResponse)}
    for path_item in document.get("paths", {}).values():
        for op in path_item.values():
            responses = op.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {
                    "description": ERROR_DESCRIPTIONS[400],
                    "content": {"application/json": {"schema": error_ref}},
                }
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'"{COMPONENTS_REF}{unused}"' not in json.dumps(document.get("paths", {})):
            schemas.pop(unused, None)
    return document


def _add_request_bodies(document: dict[str, Any], schemas: dict[str, Any]) -> None:
    placeholders: list[dict[str, Any]] = []
    for path_item in document.get("paths", {}).values():
        for op in path_item.values():
            for media in op.get("requestBody", {}).get("content", {}).values():
                if _BODY_MODEL_KEY in media.get("schema", {}):
                    placeholders.append(media)
    if not placeholders:
        return
    models = sorted({media["schema"][_BODY_MODEL_KEY] for media in placeholders})
    # One generation for every request model, so models that share a name in different
    # modules (native and compat ChatCompletionRequest) get distinct component names.
    refs, definitions = models_json_schema(
        [(_request_models[key], "validation") for key in models], ref_template=COMPONENTS_REF + "{model}"
    )
    for name, schema in definitions.get("$defs", {}).items():
        if name in schemas and schemas[name] != schema:
            raise RuntimeError(
                f"OpenAPI component {name!r} names both a request model and another schema; rename one"
            )
        schemas[name] = schema
    for media in placeholders:
        model = _request_models[media["schema"][_BODY_MODEL_KEY]]
        media["schema"] = dict(refs[(model, "validation")])


def _component_name(schemas: dict[str, Any], model: type[BaseModel]) -> str:
    # FastAPI names a component after its model unless two models share the name.
    for name, schema in schemas.items():
        if schema.get("title") == model.__name__ and (name == model.__name__ or name.endswith(f"__{model.__name__}")):
            return name
    raise RuntimeError(f"no OpenAPI component for {model.__name__}")
