"""Wire shapes of the Evals API, as OpenAI's (what the ``openai`` SDK's ``client.evals``,
``client.evals.runs`` and ``client.evals.runs.output_items`` send and parse).

Request bodies are checked at their top level here (unknown fields are a 400); the
nested parts (data source config, testing criteria, data sources) are checked field by
field in ``service.py`` and ``graders.py``, which name the offending path.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .store import EvalRecord, ItemRecord, RunCounts, RunRecord

MAX_METADATA_KEYS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalCreate(_Strict):
    name: str | None = Field(default=None, max_length=256)
    data_source_config: dict[str, Any]
    testing_criteria: list[Any]
    metadata: dict[str, str] | None = None


class EvalUpdate(_Strict):
    name: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None


class RunCreate(_Strict):
    name: str | None = Field(default=None, max_length=256)
    data_source: dict[str, Any]
    metadata: dict[str, str] | None = None



# --- responses, as documented (the views below build them as dicts) ----------------------


class EvalObject(BaseModel):
    id: str
    object: Literal["eval"]
    created_at: int
    name: str
    metadata: dict[str, str] | None
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]


class EvalList(BaseModel):
    object: Literal["list"]
    data: list[EvalObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"]
    deleted: bool
    eval_id: str


class RunDeleted(BaseModel):
    object: Literal["eval.run.deleted"]
    deleted: bool
    run_id: str

def _ts(value) -> int:
    return int(value.timestamp())


def eval_view(record: EvalRecord) -> dict[str, Any]:
    d = record.definition
    return {
        "id": record.id,
        "object": "eval",
        "created_at": _ts(record.created_at),
        "name": d.get("name") or "",
        "metadata": d.get("metadata"),
        "data_source_config": d["data_source_config_view"],
        "testing_criteria": d["testing_criteria"],
    }


def run_view(run: RunRecord, counts: RunCounts, criteria: list[dict[str, Any]]) -> dict[str, Any]:
    spec = run.spec
    data_source = spec["data_source"]
    return {
        "id": run.id,
        "object": "eval.run",
        "eval_id": run.eval_id,
        "created_at": _ts(run.created_at),
        "name": spec.get("name") or "",
        "metadata": spec.get("metadata"),
        "model": data_source.get("model") or "",
        "status": run.status,
        "data_source": spec["data_source_view"],
        "error": {"code": "run_failed", "message": run.error} if run.error else None,
        "result_counts": {"passed": counts.passed, "failed": counts.failed, "errored": counts.errored,
                          "total": run.total},
        "per_testing_criteria_results": [
            {"testing_criteria": c.get("name", f"criterion {i}"), "passed": p, "failed": f}
            for i, (c, (p, f)) in enumerate(zip(criteria, counts.per_criterion, strict=False))
        ],
        "per_model_usage": [
            {"model_name": data_source.get("model") or "", "invocation_count": counts.generations,
             "prompt_tokens": counts.prompt_tokens, "completion_tokens": counts.completion_tokens,
             "total_tokens": counts.prompt_tokens + counts.completion_tokens, "cached_tokens": 0}
        ] if data_source["type"] == "completions" else [],
        # Ours: how far a run is (items with their one result, of all).
        "progress": {"done": counts.done, "total": run.total},
        "report_url": "",
    }


def item_id(idx: int) -> str:
    return f"outputitem_{idx}"


def item_index(output_item_id: str) -> int | None:
    prefix, _, number = output_item_id.partition("_")
    return int(number) if prefix == "outputitem" and number.isdigit() else None


def item_view(eval_id: str, item: ItemRecord) -> dict[str, Any]:
    result = item.result or {}
    sample = dict(result.get("sample") or item.row.get("sample") or {})
    for key, default in (("input", []), ("output", []), ("model", ""), ("finish_reason", ""), ("error", None),
                         ("usage", {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0}),
                         ("max_completion_tokens", 0), ("temperature", 0.0), ("top_p", 0.0), ("seed", 0)):
        if sample.get(key) is None:
            sample[key] = default
    if sample["error"] is None:
        sample["error"] = result.get("error") or {"code": "", "message": ""}
    return {
        "id": item_id(item.idx),
        "object": "eval.run.output_item",
        "eval_id": eval_id,
        "run_id": item.run_id,
        "created_at": _ts(item.updated_at),
        "status": "pass" if item.status == "passed" else "fail" if item.status == "failed" else "error",
        "datasource_item_id": item.idx,
        "datasource_item": item.row["item"],
        "results": result.get("results") or [],
        "sample": sample,
        # Ours: how often this item was generated (more than once when a loop died holding it).
        "generations": item.generations,
    }


def page(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """OpenAI's cursor page; the caller fetched ``limit + 1`` to know ``has_more``."""
    has_more = len(data) > limit
    data = data[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
