"""The Evals API routes, on the native (``/v1``) and OpenAI-compatible (``/compat/v1``)
surfaces alike (the wire shape is OpenAI's on both): evals, their runs, and the runs'
output items. Any key of a team sees and runs that team's evals."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from ..http_common import authenticate, parse_body
from ..http_docs import error_responses, operation
from . import protocol as wire
from .service import EvalService

Order = Literal["asc", "desc"]


def _service(request: Request) -> EvalService:
    return request.app.state.services.evals


def _team(request: Request) -> int:
    return request.state.principal.team_id


def build_router(prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, dependencies=[Depends(authenticate)], responses=error_responses(401))

    @router.post("/evals", **operation(body=wire.EvalCreate, documented_response=wire.EvalObject))
    async def create_eval(request: Request) -> dict:
        body = await parse_body(request, wire.EvalCreate)
        return await run_in_threadpool(_service(request).create_eval, _team(request), body)

    @router.get("/evals", **operation(documented_response=wire.EvalList, errors=(404,)))  # 404: `after` names no eval
    async def list_evals(
        request: Request,
        after: str | None = None,
        limit: int = Query(default=20, ge=1, le=100),
        order: Order = "asc",
        order_by: Literal["created_at", "updated_at"] = "created_at",
    ) -> dict:
        return await run_in_threadpool(
            lambda: _service(request).list_evals(_team(request), after=after, limit=limit, order=order, order_by=order_by)
        )

    @router.get("/evals/{eval_id}", **operation(documented_response=wire.EvalObject, errors=(404,)))
    async def get_eval(request: Request, eval_id: str) -> dict:
        return await run_in_threadpool(_service(request).get_eval, _team(request), eval_id)

    @router.post("/evals/{eval_id}", **operation(body=wire.EvalUpdate, documented_response=wire.EvalObject, errors=(404,)))
    async def update_eval(request: Request, eval_id: str) -> dict:
        body = await parse_body(request, wire.EvalUpdate)
        return await run_in_threadpool(_service(request).update_eval, _team(request), eval_id, body)

    @router.delete("/evals/{eval_id}", **operation(documented_response=wire.EvalDeleted, errors=(404,)))
    async def delete_eval(request: Request, eval_id: str) -> dict:
        return await run_in_threadpool(_service(request).delete_eval, _team(request), eval_id)

    @router.post("/evals/{eval_id}/runs", **operation(body=wire.RunCreate, errors=(404,)))
    async def create_run(request: Request, eval_id: str) -> dict:
        body = await parse_body(request, wire.RunCreate)
        key_id = request.state.principal.key_id
        return await run_in_threadpool(_service(request).create_run, _team(request), key_id, eval_id, body)

    @router.get("/evals/{eval_id}/runs", **operation(errors=(404,)))
    async def list_runs(
        request: Request,
        eval_id: str,
        after: str | None = None,
        limit: int = Query(default=20, ge=1, le=100),
        order: Order = "asc",
        status: str | None = None,
    ) -> dict:
        return await run_in_threadpool(
            lambda: _service(request).list_runs(_team(request), eval_id, after=after, limit=limit, order=order, status=status)
        )

    @router.get("/evals/{eval_id}/runs/{run_id}", **operation(errors=(404,)))
    async def get_run(request: Request, eval_id: str, run_id: str) -> dict:
        return await run_in_threadpool(_service(request).get_run, _team(request), eval_id, run_id)

    @router.post("/evals/{eval_id}/runs/{run_id}/cancel", **operation(errors=(404,)))
    async def cancel_run(request: Request, eval_id: str, run_id: str) -> dict:
        return await run_in_threadpool(_service(request).cancel_run, _team(request), eval_id, run_id)

    @router.post("/evals/{eval_id}/runs/{run_id}", **operation(errors=(404,)))
    async def cancel_run_openai(request: Request, eval_id: str, run_id: str) -> dict:
        # OpenAI's API reference also documents cancel as POST on the run itself.
        return await run_in_threadpool(_service(request).cancel_run, _team(request), eval_id, run_id)

    @router.delete("/evals/{eval_id}/runs/{run_id}", **operation(documented_response=wire.RunDeleted, errors=(404,)))
    async def delete_run(request: Request, eval_id: str, run_id: str) -> dict:
        return await run_in_threadpool(_service(request).delete_run, _team(request), eval_id, run_id)

    @router.get("/evals/{eval_id}/runs/{run_id}/output_items", **operation(errors=(404,)))
    async def list_items(
        request: Request,
        eval_id: str,
        run_id: str,
        after: str | None = None,
        limit: int = Query(default=20, ge=1, le=100),
        order: Order = "asc",
        status: str | None = None,
    ) -> dict:
        return await run_in_threadpool(
            lambda: _service(request).list_items(
                _team(request), eval_id, run_id, after=after, limit=limit, order=order, status=status
            )
        )

    @router.get("/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}", **operation(errors=(404,)))
    async def get_item(request: Request, eval_id: str, run_id: str, output_item_id: str) -> dict:
        return await run_in_threadpool(_service(request).get_item, _team(request), eval_id, run_id, output_item_id)

    return router


def attach(app: FastAPI, services) -> None:
    for prefix in ("/v1", "/compat/v1"):
        app.include_router(build_router(prefix))
