"""``llamahost evals run``: one eval over a JSONL file, run on each ``--model`` by a
running server (through its Evals API, as the key given), then a table comparing the
models per grader; for scripts and CI (``--json`` prints the same as JSON; ``--min-pass-rate``
makes the exit status say whether every model reached it).

A grader is a JSON object (OpenAI's testing criterion, ``@file.json`` reads one), or a
shorthand comparing the model's output with the row's reference field (``--reference``):
``exact``, ``contains`` (case-insensitive), or ``METRIC[:THRESHOLD]`` for a text
similarity metric (fuzzy_match, bleu, gleu, rouge_1..rouge_5, rouge_l, cosine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..config import ENV_API_KEY, ENV_SERVER_URL

DEFAULT_URL = "http://127.0.0.1:8000"
SIMILARITY = ("fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l", "cosine")


def register(commands) -> None:
    evals = commands.add_parser("evals", help="run evals against a running server").add_subparsers(
        dest="action", required=True
    )
    run = evals.add_parser("run", help="run one eval over a JSONL file on each --model and print a comparison table")
    run.add_argument("--file", required=True, metavar="F",
                     help="JSONL rows: {\"messages\": [...], ...} (messages_eval) or {\"item\": {...}}")
    run.add_argument("--model", action="append", required=True, metavar="MODEL", help="a model to run (repeatable)")
    run.add_argument("--grader", action="append", required=True, metavar="G",
                     help="exact | contains | METRIC[:THRESHOLD] | a JSON testing criterion | @file.json (repeatable)")
    run.add_argument("--reference", default="answer", metavar="FIELD",
                     help="the item field shorthand graders compare the output with (default: answer)")
    run.add_argument("--prompt", metavar="TEMPLATE",
                     help="the user message, e.g. '{{item.question}}' (default: each row's messages)")
    run.add_argument("--system", metavar="TEXT", help="a system message before --prompt")
    run.add_argument("--max-tokens", type=int, default=256, help="max completion tokens per answer (default 256)")
    run.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    run.add_argument("--name", default="llamahost evals run", help="the eval's name")
    run.add_argument("--url", help=f"the server (env {ENV_SERVER_URL}; default {DEFAULT_URL})")
    run.add_argument("--api-key", help=f"the key runs are made as (env {ENV_API_KEY})")
    run.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the runs (default 3600)")
    run.add_argument("--json", action="store_true", help="print the comparison as JSON")
    run.add_argument("--min-pass-rate", type=float, metavar="R",
                     help="exit 1 unless every model passes at least this fraction of items (0..1)")
    run.set_defaults(handler=run_evals)


def grader(spec: str, reference: str, index: int) -> dict[str, Any]:
    """A testing criterion from a --grader value."""
    if spec.startswith("@"):
        spec = Path(spec[1:]).read_text()
    if spec.lstrip().startswith("{"):
        try:
            criterion = json.loads(spec)
        except ValueError as exc:
            raise SystemExit(f"llamahost: --grader {index + 1}: not JSON: {exc}") from None
        return criterion
    output, expected = "{{sample.output_text}}", "{{item." + reference + "}}"
    name, _, threshold = spec.partition(":")
    if name in ("exact", "contains") and not threshold:
        operation = "eq" if name == "exact" else "ilike"
        return {"type": "string_check", "name": name, "operation": operation, "input": output, "reference": expected}
    if name in SIMILARITY:
        try:
            value = float(threshold) if threshold else 0.5
        except ValueError:
            raise SystemExit(f"llamahost: --grader {spec!r}: the threshold must be a number") from None
        return {"type": "text_similarity", "name": name, "evaluation_metric": name, "input": output,
                "reference": expected, "pass_threshold": value}
    raise SystemExit(
        f"llamahost: --grader {spec!r}: use exact, contains, METRIC[:THRESHOLD] ({', '.join(SIMILARITY)}), "
        "a JSON testing criterion or @file.json"
    )


def read_rows(path: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SystemExit(f"llamahost: {path} line {number}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise SystemExit(f"llamahost: {path} line {number}: a row must be a JSON object")
        rows.append(row if "item" in row else {"item": row})
    if not rows:
        raise SystemExit(f"llamahost: {path} has no rows")
    return rows


def _call(http, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
    response = http.request(method, path, json=body)
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error.get('message')}" + (f" (param {error['param']})" if error.get("param") else "")
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        raise SystemExit(f"llamahost: {method} {path}: {response.status_code}: {message}")
    return response.json()


def run_evals(args: argparse.Namespace) -> int:
    import httpx

    key = args.api_key or os.environ.get(ENV_API_KEY)
    if not key:
        raise SystemExit(f"llamahost: an API key is needed: --api-key or {ENV_API_KEY}")
    url = (args.url or os.environ.get(ENV_SERVER_URL) or DEFAULT_URL).rstrip("/")
    if args.min_pass_rate is not None and not 0 <= args.min_pass_rate <= 1:
        raise SystemExit("llamahost: --min-pass-rate must be between 0 and 1")
    rows = read_rows(args.file)
    criteria = [grader(spec, args.reference, i) for i, spec in enumerate(args.grader)]
    if args.prompt:
        template = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        messages: dict[str, Any] = {"type": "template", "template": template}
    else:
        messages = {"type": "item_reference", "item_reference": "item.messages"}
    with httpx.Client(base_url=f"{url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        ev = _call(http, "POST", "/evals", {
            "name": args.name, "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
            "testing_criteria": criteria,
        })
        runs = {}
        for model in args.model:
            runs[model] = _call(http, "POST", f"/evals/{ev['id']}/runs", {"name": model, "data_source": {
                "type": "completions", "model": model, "input_messages": messages,
                "sampling_params": {"max_completion_tokens": args.max_tokens, "temperature": args.temperature},
                "source": {"type": "file_content", "content": rows},
            }})["id"]
        finished = _wait(http, ev["id"], runs, args.timeout)
        items = {model: _items(http, ev["id"], run_id) for model, run_id in runs.items()}
    report = comparison(ev["id"], finished, items, [c["name"] for c in criteria])
    print(json.dumps(report, indent=2) if args.json else table(report))
    if args.min_pass_rate is not None:
        return 0 if all(m["pass_rate"] >= args.min_pass_rate for m in report["models"]) else 1
    return 0


def _wait(http, eval_id: str, runs: dict[str, str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    finished: dict[str, dict[str, Any]] = {}
    while len(finished) < len(runs):
        if time.monotonic() > deadline:
            raise SystemExit(f"llamahost: runs not finished after {timeout:g} s: {', '.join(set(runs) - set(finished))}")
        progress = []
        for model, run_id in runs.items():
            if model in finished:
                continue
            run = _call(http, "GET", f"/evals/{eval_id}/runs/{run_id}")
            if run["status"] in ("completed", "canceled", "failed"):
                finished[model] = run
            done = run["progress"]["done"]
            progress.append(f"{model} {done}/{run['progress']['total']}")
        if sys.stderr.isatty():
            print("\r" + "  ".join(progress), end="", file=sys.stderr, flush=True)
        if len(finished) < len(runs):
            time.sleep(1.0)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return finished


def _items(http, eval_id: str, run_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = None
    while True:
        page = _call(http, "GET", f"/evals/{eval_id}/runs/{run_id}/output_items?limit=100"
                     + (f"&after={after}" if after else ""))
        items += page["data"]
        if not page["has_more"]:
            return items
        after = page["last_id"]


def comparison(eval_id: str, runs: dict[str, dict[str, Any]], items: dict[str, list[dict[str, Any]]],
               criteria: list[str]) -> dict[str, Any]:
    models = []
    for model, run in runs.items():
        counts = run["result_counts"]
        per = {r["testing_criteria"]: r for r in run["per_testing_criteria_results"]}
        total = counts["total"] or 1
        models.append({
            "model": model, "run_id": run["id"], "status": run["status"], "passed": counts["passed"],
            "failed": counts["failed"], "errored": counts["errored"], "total": counts["total"],
            "pass_rate": counts["passed"] / total,
            "criteria": {name: per.get(name, {}).get("passed", 0) / total for name in criteria},
        })
    # Items the models disagree on: some passed, some did not.
    verdicts: dict[int, dict[str, str]] = {}
    for model, model_items in items.items():
        for item in model_items:
            verdicts.setdefault(item["datasource_item_id"], {})[model] = item["status"]
    disagreements = sorted(i for i, v in verdicts.items() if len(set(v.values())) > 1)
    return {"eval_id": eval_id, "models": models, "criteria": criteria, "disagreements": disagreements}


def table(report: dict[str, Any]) -> str:
    criteria = report["criteria"]
    width = max([len("MODEL")] + [len(m["model"]) for m in report["models"]])
    head = f"{'MODEL':<{width}}  {'PASS':>6}  {'FAIL':>5}  {'ERROR':>5}  {'TOTAL':>5}  " + "  ".join(
        f"{c[:14]:>14}" for c in criteria
    )
    lines = [head]
    for m in report["models"]:
        lines.append(
            f"{m['model']:<{width}}  {m['pass_rate']:>6.1%}  {m['failed']:>5}  {m['errored']:>5}  {m['total']:>5}  "
            + "  ".join(f"{m['criteria'][c]:>14.1%}" for c in criteria)
        )
    lines.append(f"eval {report['eval_id']}; items where the models disagree: "
                 + (", ".join(map(str, report["disagreements"][:20])) or "none")
                 + (" ..." if len(report["disagreements"]) > 20 else ""))
    return "\n".join(lines)
