"""Evals as a service: check and store evals, start runs (one row per item, split into
jobs), and read runs and their output items back. Everything is scoped to the caller's
team; another team's eval or run is "not found"."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..engines.registry import ModelRegistry
from ..errors import InvalidRequest, NotFound
from ..jobs.queue import JobQueue
from ..types.chat import MAX_TOKENS_LIMIT
from . import graders as g
from . import protocol as wire
from .runner import KIND
from .store import RUN_ACTIVE, RUN_STATUSES, EvalStore

SOURCE_TYPES = ("file_content", "file_id")


def _metadata(metadata: dict[str, str] | None, param: str = "metadata") -> dict[str, str] | None:
    if metadata is None:
        return None
    if len(metadata) > wire.MAX_METADATA_KEYS:
        raise InvalidRequest(f"{param}: at most {wire.MAX_METADATA_KEYS} keys", param=param)
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise InvalidRequest(f"{param}.{key}: keys at most 64 characters, values at most 512", param=f"{param}.{key}")
    return metadata


def _json_line(line: bytes, param: str, number: int) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        raise InvalidRequest(f"{param}: line {number} of the file is not JSON", param=param) from None


def _number(value: Any, param: str, low: float, high: float, *, integer: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise InvalidRequest(f"{param} must be {what} in [{low:g}, {high:g}]", param=param)
    return value


@dataclass
class EvalService:
    store: EvalStore
    registry: ModelRegistry
    queue: JobQueue
    config: Config
    files: Any = None  # the files slice's FileService: file_id sources read messages_eval uploads

    def delete_team(self, team_id: int) -> dict[str, int]:
        """A ``TeamStore.on_delete`` hook: the team's evals, runs and output items."""
        return self.store.delete_team(team_id)

    # --- evals ---------------------------------------------------------------------------------

    def judge_capabilities(self, team_id: int) -> Callable[[str], frozenset[str] | None]:
        """What a judge model serves, as the team sees models (its own tuned models too)."""

        def capabilities(model: str) -> frozenset[str] | None:
            try:
                return self.registry.resolve(model, team_id).capabilities
            except NotFound:
                return None

        return capabilities

    def graders(self, definition: dict[str, Any], team_id: int) -> list[g.Grader]:
        return g.compile_criteria(
            definition["testing_criteria"], item_fields=g.item_fields_of(definition["item_schema"]),
            judge_capabilities=self.judge_capabilities(team_id),
        )

    def create_eval(self, team_id: int, body: wire.EvalCreate) -> dict[str, Any]:
        config = body.data_source_config
        kind = config.get("type")
        if kind != "custom":
            raise InvalidRequest(
                f"data_source_config.type: {kind!r} is not supported; use 'custom' with an item_schema "
                "(llamahost keeps no logs or stored completions to evaluate)",
                param="data_source_config.type",
            )
        for key in config:
            if key not in ("type", "item_schema", "include_sample_schema"):
                raise InvalidRequest(f"data_source_config: unknown field {key!r}", param=f"data_source_config.{key}")
        item_schema = config.get("item_schema")
        if not isinstance(item_schema, dict):
            raise InvalidRequest("data_source_config.item_schema must be a JSON Schema object",
                                 param="data_source_config.item_schema")
        include_sample = bool(config.get("include_sample_schema", False))
        g.compile_criteria(body.testing_criteria, item_fields=g.item_fields_of(item_schema),
                           judge_capabilities=self.judge_capabilities(team_id))
        schema: dict[str, Any] = {"type": "object", "properties": {"item": item_schema}, "required": ["item"]}
        if include_sample:
            schema["properties"]["sample"] = {"type": "object"}
            schema["required"].append("sample")
        definition = {
            "name": body.name,
            "metadata": _metadata(body.metadata),
            "item_schema": item_schema,
            "data_source_config_view": {"type": "custom", "schema": schema},
            "testing_criteria": body.testing_criteria,
        }
        return wire.eval_view(self.store.create_eval(team_id, definition))

    def get_eval(self, team_id: int, eval_id: str) -> dict[str, Any]:
        return wire.eval_view(self.store.get_eval(team_id, eval_id))

    def list_evals(self, team_id: int, *, after: str | None, limit: int, order: str, order_by: str) -> dict[str, Any]:
        records = self.store.list_evals(team_id, after=after, limit=limit + 1, order=order, order_by=order_by)
        return wire.page([wire.eval_view(r) for r in records], limit)

    def update_eval(self, team_id: int, eval_id: str, body: wire.EvalUpdate) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if body.name is not None:
            changes["name"] = body.name
        if body.metadata is not None:
            changes["metadata"] = _metadata(body.metadata)
        return wire.eval_view(self.store.update_eval(team_id, eval_id, changes))

    def delete_eval(self, team_id: int, eval_id: str) -> dict[str, Any]:
        self.store.delete_eval(team_id, eval_id)
        return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}

    # --- runs ----------------------------------------------------------------------------------

    def create_run(self, team_id: int, key_id: str, eval_id: str, body: wire.RunCreate) -> dict[str, Any]:
        record = self.store.get_eval(team_id, eval_id)
        definition = record.definition
        item_fields = g.item_fields_of(definition["item_schema"])
        data_source, rows = self._data_source(team_id, body.data_source, item_fields)
        spec = {"name": body.name, "metadata": _metadata(body.metadata), "data_source": data_source,
                "data_source_view": body.data_source}
        run = self.store.create_run(team_id, eval_id, key_id, spec, rows)
        jobs = min(self.config.evals.jobs_per_run, max(1, len(rows)))
        for shard in range(jobs):
            self.queue.enqueue(KIND, {"run_id": run.id, "shard": shard}, team_id=team_id,
                               dedupe_key=f"{KIND}:{run.id}:{shard}")
        return wire.run_view(run, self.store.counts(run.id, len(definition["testing_criteria"])),
                             definition["testing_criteria"])

    def _data_source(
        self, team_id: int, source: dict[str, Any], item_fields: frozenset[str] | None
    ) -> tuple[dict[str, Any], list]:
        kind = source.get("type")
        param = "data_source"
        if kind not in ("jsonl", "completions"):
            raise InvalidRequest(
                f"{param}.type: {kind!r} is not supported; one of jsonl, completions", param=f"{param}.type"
            )
        allowed = {"type", "source"} | ({"model", "input_messages", "sampling_params"} if kind == "completions" else set())
        for key in source:
            if key not in allowed:
                raise InvalidRequest(f"{param}: unknown field {key!r} for a {kind} data source", param=f"{param}.{key}")
        rows = self._rows(team_id, source.get("source"), f"{param}.source")
        checked: dict[str, Any] = {"type": kind}
        if kind == "completions":
            checked |= self._completions(team_id, source, item_fields, param)
        return checked, rows

    def _rows(self, team_id: int, source: Any, param: str) -> list[dict[str, Any]]:
        if not isinstance(source, dict) or source.get("type") not in SOURCE_TYPES:
            raise InvalidRequest(f"{param}.type must be one of {', '.join(SOURCE_TYPES)}", param=f"{param}.type")
        limit = self.config.evals.max_items
        if source["type"] == "file_id":
            return self._file_rows(team_id, source.get("id"), f"{param}.id", limit)
        content = source.get("content")
        if not isinstance(content, list) or not content:
            raise InvalidRequest(f"{param}.content must be a non-empty list of rows", param=f"{param}.content")
        if len(content) > limit:
            raise InvalidRequest(f"{param}.content: {len(content)} rows, more than the limit of {limit} ([evals] max_items)",
                                 param=f"{param}.content")
        return [self._row(row, f"{param}.content[{i}]") for i, row in enumerate(content)]

    def _file_rows(self, team_id: int, file_id: Any, param: str, limit: int) -> list[dict[str, Any]]:
        """The rows of a ``messages_eval`` upload (checked line by line when it completed)."""
        if not isinstance(file_id, str) or self.files is None:
            raise InvalidRequest(f"{param} must be the id of a messages_eval file", param=param)
        try:
            view, chunks = self.files.content(team_id, file_id)
        except NotFound as exc:
            raise InvalidRequest(exc.message, param=param) from None
        if view.purpose != "messages_eval":
            raise InvalidRequest(f"{param}: file {file_id} has purpose {view.purpose!r}, not messages_eval", param=param)
        if view.status != "processed":
            raise InvalidRequest(f"{param}: file {file_id} is {view.status}, not processed", param=param)
        rows: list[dict[str, Any]] = []
        buffer = b""
        for chunk in chunks:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    rows.append(self._row(_json_line(line, param, len(rows) + 1), f"{param} line {len(rows) + 1}"))
                    if len(rows) > limit:
                        raise InvalidRequest(f"{param}: more than {limit} rows ([evals] max_items)", param=param)
        if buffer.strip():
            rows.append(self._row(_json_line(buffer, param, len(rows) + 1), f"{param} line {len(rows) + 1}"))
        if not rows:
            raise InvalidRequest(f"{param}: file {file_id} has no rows", param=param)
        return rows

    @staticmethod
    def _row(row: Any, param: str) -> dict[str, Any]:
        """``{"item": {...}, "sample"?: {...}}``; a messages_eval row ``{"messages": [...], ...}`` is itself the item."""
        if not isinstance(row, dict):
            raise InvalidRequest(f"{param} must be an object", param=param)
        if "item" not in row:
            return {"item": row}
        for key in row:
            if key not in ("item", "sample"):
                raise InvalidRequest(f"{param}: unknown field {key!r} (a row is {{item, sample}})", param=f"{param}.{key}")
        if not isinstance(row["item"], dict):
            raise InvalidRequest(f"{param}.item must be an object", param=f"{param}.item")
        if "sample" in row and not isinstance(row["sample"], dict):
            raise InvalidRequest(f"{param}.sample must be an object", param=f"{param}.sample")
        return dict(row)

    def _completions(
        self, team_id: int, source: dict[str, Any], item_fields: frozenset[str] | None, param: str
    ) -> dict[str, Any]:
        model = source.get("model")
        if not isinstance(model, str):
            raise InvalidRequest(f"{param}.model: field required", param=f"{param}.model")
        try:
            # Team-aware: the team's own tuned models (ft:...) run beside the base models;
            # another team's are not found, as for any request of this team's keys.
            capabilities = self.registry.resolve(model, team_id).capabilities
        except NotFound as exc:
            raise InvalidRequest(exc.message, param=f"{param}.model") from None
        out: dict[str, Any] = {"model": model}
        messages = source.get("input_messages")
        where = f"{param}.input_messages"
        if not isinstance(messages, dict):
            raise InvalidRequest(f"{where}: field required (a template or an item_reference)", param=where)
        if messages.get("type") == "item_reference":
            reference = messages.get("item_reference")
            if not isinstance(reference, str) or not reference.startswith("item.") or len(reference) < 6:
                raise InvalidRequest(f"{where}.item_reference must name an item field, e.g. item.messages",
                                     param=f"{where}.item_reference")
            g.check_template("{{" + reference + "}}", f"{where}.item_reference", item_fields)
            out["item_reference"] = reference
        elif messages.get("type") == "template":
            template = messages.get("template")
            if not isinstance(template, list) or not template:
                raise InvalidRequest(f"{where}.template must be a non-empty list of messages", param=f"{where}.template")
            rendered = []
            for i, message in enumerate(template):
                at = f"{where}.template[{i}]"
                if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
                    raise InvalidRequest(f"{at}.role must be system, developer, user or assistant", param=f"{at}.role")
                content = message.get("content")
                if isinstance(content, dict) and content.get("type") in ("input_text", "output_text"):
                    content = content.get("text")
                text = g.check_template(content, f"{at}.content", item_fields)
                if any(ns == "sample" for ns, _ in g.template_references(text, f"{at}.content")):
                    raise InvalidRequest(f"{at}.content: the input cannot reference the sample it produces",
                                         param=f"{at}.content")
                rendered.append({"role": message["role"], "content": text})
            out["template"] = rendered
        else:
            raise InvalidRequest(f"{where}.type must be template or item_reference", param=f"{where}.type")
        out["sampling_params"] = self._sampling(source.get("sampling_params") or {}, capabilities, f"{param}.sampling_params")
        return out

    @staticmethod
    def _sampling(params: Any, capabilities: frozenset[str], param: str) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise InvalidRequest(f"{param} must be an object", param=param)
        out: dict[str, Any] = {}
        for key, value in params.items():
            at = f"{param}.{key}"
            if value is None or key == "reasoning_effort":
                continue
            if key == "max_completion_tokens":
                out[key] = _number(value, at, 1, MAX_TOKENS_LIMIT, integer=True)
            elif key == "temperature":
                out[key] = float(_number(value, at, 0, 2))
            elif key == "top_p":
                out[key] = float(_number(value, at, 0, 1))
                if out[key] == 0:
                    raise InvalidRequest(f"{at} must be greater than 0", param=at)
            elif key == "seed":
                out[key] = _number(value, at, -(2**63), 2**63 - 1, integer=True)
            elif key == "response_format":
                fmt = value.get("type") if isinstance(value, dict) else None
                if fmt == "json_schema":
                    schema = (value.get("json_schema") or {}).get("schema")
                    if not isinstance(schema, dict):
                        raise InvalidRequest(f"{at}.json_schema.schema must be an object", param=f"{at}.json_schema.schema")
                    if "json_schema" not in capabilities:
                        raise InvalidRequest(f"{at}: the model cannot decode under a JSON schema", param=at)
                    out["json_schema"] = schema
                elif fmt == "json_object":
                    out["json_schema"] = {"type": "object"}
                elif fmt != "text":
                    raise InvalidRequest(f"{at}.type must be text, json_object or json_schema", param=f"{at}.type")
            elif key == "tools":
                if "tools" not in capabilities:
                    raise InvalidRequest(f"{at}: the model does not support tool calling", param=at)
                if not isinstance(value, list):
                    raise InvalidRequest(f"{at} must be a list", param=at)
                tools = []
                for i, tool in enumerate(value):
                    function = tool.get("function") if isinstance(tool, dict) else None
                    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                        raise InvalidRequest(f"{at}[{i}] must be {{type: function, function: {{name, ...}}}}",
                                             param=f"{at}[{i}]")
                    tools.append({"name": function["name"], "description": function.get("description"),
                                  "parameters": function.get("parameters")})
                out["tools"] = tools
            else:
                raise InvalidRequest(f"{param}: unknown field {key!r}", param=at)
        return out

    def _run_view(self, team_id: int, run) -> dict[str, Any]:
        criteria = self.store.get_eval(team_id, run.eval_id).definition["testing_criteria"]
        return wire.run_view(run, self.store.counts(run.id, len(criteria)), criteria)

    def get_run(self, team_id: int, eval_id: str, run_id: str) -> dict[str, Any]:
        return self._run_view(team_id, self.store.get_run(team_id, eval_id, run_id))

    def list_runs(self, team_id: int, eval_id: str, *, after: str | None, limit: int, order: str,
                  status: str | None) -> dict[str, Any]:
        self.store.get_eval(team_id, eval_id)
        if status is not None and status not in RUN_STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(RUN_STATUSES)}", param="status")
        runs = self.store.list_runs(team_id, eval_id, after=after, limit=limit + 1, order=order, status=status)
        return wire.page([self._run_view(team_id, run) for run in runs], limit)

    def cancel_run(self, team_id: int, eval_id: str, run_id: str) -> dict[str, Any]:
        run = self.store.get_run(team_id, eval_id, run_id)
        if run.status not in RUN_ACTIVE:
            raise InvalidRequest(f"run {run_id} is {run.status}; only queued or in_progress runs can be canceled",
                                 param="run_id")
        # The run's jobs see it at their next batch and stop; items already graded stay.
        self.store.set_run_status(run_id, "canceled", only_from=RUN_ACTIVE)
        return self.get_run(team_id, eval_id, run_id)

    def delete_run(self, team_id: int, eval_id: str, run_id: str) -> dict[str, Any]:
        self.store.delete_run(team_id, eval_id, run_id)
        return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}

    def list_items(self, team_id: int, eval_id: str, run_id: str, *, after: str | None, limit: int, order: str,
                   status: str | None) -> dict[str, Any]:
        self.store.get_run(team_id, eval_id, run_id)
        if status not in (None, "pass", "fail"):
            raise InvalidRequest("status must be pass or fail", param="status")
        cursor = None
        if after is not None:
            cursor = wire.item_index(after)
            if cursor is None:
                raise InvalidRequest(f"after: {after!r} is not an output item id", param="after")
        items = self.store.items(team_id, run_id, after=cursor, limit=limit + 1, order=order, status=status)
        return wire.page([wire.item_view(eval_id, item) for item in items], limit)

    def get_item(self, team_id: int, eval_id: str, run_id: str, output_item_id: str) -> dict[str, Any]:
        self.store.get_run(team_id, eval_id, run_id)
        idx = wire.item_index(output_item_id)
        if idx is None:
            raise NotFound(f"no output item {output_item_id!r}", param="output_item_id")
        return wire.item_view(eval_id, self.store.item(team_id, run_id, idx))


def open_evals(stores: Any, registry: ModelRegistry, queue: JobQueue, files: Any = None) -> EvalService:
    return EvalService(EvalStore(stores.db, stores.keyring), registry, queue, stores.config, files)


