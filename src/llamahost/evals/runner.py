"""An eval run as job work (kind ``eval_run``): claim a batch of the run's items, generate
each answer (``completions`` runs) through the chat service as the key that started the
run, grade it, record its one result; until no item is left.

A run is split into ``[evals] jobs_per_run`` jobs, so that many job loops work on it;
each has its share of the run's ``max_concurrency`` slots. A loop that dies mid-batch
leaves its claims to expire (``item_lease_seconds``) and the surviving jobs generate
those items again; the job of the dead loop is re-queued by the job queue as well.

Generation runs on engines and a meter of the job loop's own (``EvalRuntime``), built
from the same configuration as the server's: engine clients and the usage writer
belong to the event loop that created them, and the job loop runs its own event loop
(in ``llamahost serve``'s parent process, or in ``llamahost jobs work``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..chat.service import ChatService
from ..config import Config
from ..engines.registry import ModelRegistry
from ..errors import APIError, NotFound, RateLimited, ServiceUnavailable
from ..jobs.kinds import JobContext, JobKinds
from ..jobs.loop import new_worker_id
from ..tenancy.journal import JOURNAL_DIRNAME
from ..tenancy.keys import Principal
from ..tenancy.limits import build_limiter
from ..tenancy.metering import Metering
from ..types.chat import ChatMessage, ChatRequest, ChatResult, SamplingParams, ToolSpec
from . import graders as g
from .store import CANCELED, COMPLETED, ERRORED, FAILED, IN_PROGRESS, PASSED, QUEUED, EvalStore, ItemResult

log = logging.getLogger(__name__)

KIND = "eval_run"
# A run may take hours; a loop that dies is noticed by the job lease, not this timeout.
JOB_TIMEOUT_SECONDS = 7 * 24 * 3600.0


PURGE_KIND = "evals.purge"


def register(kinds: JobKinds, config: Config) -> None:
    kinds.register_kind(KIND, run_job, timeout=JOB_TIMEOUT_SECONDS, max_attempts=5, retry_delay=5.0)
    # Output items are customer content: kept as long as the team's retention_days, as stored requests are.
    kinds.register_periodic(PURGE_KIND, purge_job, every=config.content.purge_interval_seconds)


async def purge_job(job: JobContext) -> dict[str, Any]:
    settings = job.services.settings
    runs = await asyncio.to_thread(
        job.services.evals.store.purge, lambda team_id: settings.effective(team_id).retention_days
    )
    return {"eval_runs": runs}


@dataclass
class EvalRuntime:
    """Engines, chat and metering for eval work in one event loop."""

    registry: ModelRegistry
    chat: ChatService
    metering: Metering
    _loading: dict[str, asyncio.Task] = field(default_factory=dict)
    _started: bool = False

    @classmethod
    def build(cls, services: Any) -> EvalRuntime:
        config: Config = services.config
        registry = ModelRegistry(config)
        # The team's tuned models (ft:...) resolve here as in the server: on their base
        # model's engine, with their adapter, for the team that started the run only.
        fine_tuning = getattr(services, "fine_tuning", None)
        if fine_tuning is not None:
            registry.set_tuned_source(fine_tuning.models)
        return cls(
            registry, ChatService(registry),
            # Journalled like a server's: a loop killed mid-item loses none of the usage
            # its generations already spent (the item is generated again, and both count).
            Metering(
                build_limiter(config), services.limits, services.usage, services.content,
                journal_dir=config.data_dir / JOURNAL_DIRNAME,
            ),
        )

    async def start(self) -> None:
        """Opens the usage journal once (in the loop that meters), replaying dead processes'."""
        if not self._started:
            self._started = True
            await self.metering.start()

    async def ready(self, model: str, team_id: int) -> None:
        entry = self.registry.resolve(model, team_id)
        if entry.engine.ready:
            return
        task = self._loading.get(entry.config.id)
        if task is None:
            task = self._loading[entry.config.id] = asyncio.ensure_future(entry.engine.load())
        await asyncio.shield(task)


_runtimes: dict[int, EvalRuntime] = {}


def runtime_for(services: Any) -> EvalRuntime:
    """One runtime per event loop (and services object) in this process."""
    key = id(asyncio.get_running_loop()) ^ id(services)
    runtime = _runtimes.get(key)
    if runtime is None:
        runtime = _runtimes[key] = EvalRuntime.build(services)
    return runtime


# Claim renewals get a thread of their own: on the shared default pool they queue behind
# the run's own work (token counting, result writes), and a late renewal loses the
# claim to another loop, which then generates the item again.
_renewals = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-claims")


class ItemFailed(Exception):
    """Generation for this item failed for good (the message is the item's error)."""


@dataclass
class RunContext:
    run_id: str
    team_id: int
    principal: Principal
    spec: dict[str, Any]
    graders: list[g.Grader]
    runtime: EvalRuntime
    retries: int
    tokens: list[int] = field(default_factory=lambda: [0, 0])  # of the item in hand


async def _complete(ctx: RunContext, request: ChatRequest, tokens: list[int]) -> ChatResult:
    """One metered completion as the run's key; 429 and "model busy/loading" wait for
    Retry-After and try again, ``retries`` times."""
    runtime = ctx.runtime
    await runtime.ready(request.model, ctx.team_id)
    attempt = 0
    while True:
        request.team, request.team_id = ctx.principal.team_name, ctx.team_id
        meter = runtime.metering.meter(ctx.principal, None, request, "native", kind="eval")
        try:
            result = await runtime.chat.complete(request, meter, guarded=False)
        except (RateLimited, ServiceUnavailable) as exc:
            attempt += 1
            if attempt > ctx.retries:
                raise ItemFailed(f"{exc.message} (gave up after {ctx.retries} retries)") from None
            await asyncio.sleep(_retry_after(exc))
            continue
        except APIError as exc:
            raise ItemFailed(exc.message) from None
        tokens[0] += result.usage.prompt_tokens
        tokens[1] += result.usage.completion_tokens
        return result


def _retry_after(exc: APIError) -> float:
    headers = {k.lower(): v for k, v in exc.headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.05, min(float(headers[name]) * scale, 300.0))
        except (KeyError, ValueError):
            continue
    return 1.0


def generation_request(source: dict[str, Any], item: dict[str, Any]) -> ChatRequest:
    """The chat request a ``completions`` data source makes for one item."""
    reference = source.get("item_reference")
    if reference is not None:
        messages = g.lookup("item", tuple(reference.split(".")[1:]), item, None)
        if not isinstance(messages, list):
            raise g.ItemError(f"{reference} is not a list of messages")
        rendered = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "system", "developer", "user", "assistant"
            ):
                raise g.ItemError(f"{reference}: each message needs a role and a string content")
            rendered.append({"role": m["role"], "content": m["content"]})
    else:
        rendered = [{"role": m["role"], "content": g.render(m["content"], item, None)} for m in source["template"]]
    sampling = source.get("sampling_params") or {}
    defaults = SamplingParams()
    return ChatRequest(
        model=source["model"],
        messages=[ChatMessage(role="system" if m["role"] == "developer" else m["role"], content=m["content"])
                  for m in rendered],
        max_tokens=sampling.get("max_completion_tokens"),
        sampling=SamplingParams(
            temperature=sampling.get("temperature", defaults.temperature),
            top_p=sampling.get("top_p", defaults.top_p),
            seed=sampling.get("seed"),
        ),
        tools=[ToolSpec(t["name"], t.get("description"), t.get("parameters")) for t in sampling.get("tools") or []],
        json_schema=sampling.get("json_schema"),
    )


def sample_of(result: ChatResult, request: ChatRequest) -> dict[str, Any]:
    try:
        output_json = json.loads(result.text)
    except ValueError:
        output_json = None
    return {
        "model": result.model,
        "input": [{"role": m.role, "content": m.content} for m in request.messages],
        "output": [{"role": "assistant", "content": result.text}],
        "output_text": result.text,
        "output_json": output_json,
        "output_tools": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.tool_calls],
        "finish_reason": result.stop_reason,
        "max_completion_tokens": request.max_tokens,
        "temperature": request.sampling.temperature,
        "top_p": request.sampling.top_p,
        "seed": request.sampling.seed,
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.total_tokens, "cached_tokens": 0,
        },
        "error": None,
    }


async def grade_item(ctx: RunContext, row: dict[str, Any]) -> ItemResult:
    """Generate (completions runs) and grade one row; never raises for the item's own faults."""
    item, sample = row["item"], row.get("sample")
    tokens = [0, 0]
    source = ctx.spec["data_source"]
    try:
        if source["type"] == "completions":
            request = generation_request(source, item)
            result = await _complete(ctx, request, tokens)
            sample = sample_of(result, request)
    except (g.ItemError, ItemFailed) as exc:
        error = {"code": "generation_failed", "message": str(exc)}
        return ItemResult(ERRORED, [None] * len(ctx.graders), {"sample": {"error": error}, "results": [], "error": error},
                          tokens[0], tokens[1])
    results: list[dict[str, Any]] = []
    passes: list[bool | None] = []
    errors: list[str] = []
    for grader in ctx.graders:
        try:
            if isinstance(grader, g.ModelGrader):
                judge = grader.judge_prompt(item, sample)
                verdict = await _complete(ctx, _judge_request(judge), tokens)
                graded = grader.verdict(verdict.text)
            else:
                graded = await asyncio.to_thread(grader.grade, item, sample)
        except (g.ItemError, ItemFailed) as exc:
            errors.append(f"{grader.name}: {exc}")
            passes.append(None)
            results.append({"name": grader.name, "type": grader.type, "score": 0.0, "passed": False,
                            "sample": {"error": str(exc)}})
            continue
        passes.append(graded.passed)
        results.append(graded.as_dict())
    status = ERRORED if errors else PASSED if all(passes) else FAILED
    grade_error = {"code": "grader_error", "message": "; ".join(errors)} if errors else None
    return ItemResult(status, passes, {"sample": sample, "results": results, "error": grade_error}, tokens[0], tokens[1])


def _judge_request(judge: g.JudgeRequest) -> ChatRequest:
    defaults = SamplingParams()
    return ChatRequest(
        model=judge.model,
        messages=[ChatMessage(role=m["role"], content=m["content"]) for m in judge.messages],  # type: ignore[arg-type]
        max_tokens=judge.max_tokens,
        sampling=SamplingParams(
            # Greedy unless the grader asks otherwise: a verdict should not depend on luck.
            temperature=0.0 if judge.temperature is None else judge.temperature,
            top_p=defaults.top_p if judge.top_p is None else judge.top_p,
            seed=judge.seed,
        ),
        json_schema=judge.schema,
    )


async def run_job(job: JobContext) -> dict[str, Any]:
    services = job.services
    config: Config = services.config
    evals: EvalStore = services.evals.store
    run_id = job.payload["run_id"]
    try:
        run = await asyncio.to_thread(evals.get_run, None, None, run_id)
    except NotFound:
        return {"run_id": run_id, "deleted": True}
    if run.status not in (QUEUED, IN_PROGRESS):
        return {"run_id": run_id, "status": run.status}
    definition = (await asyncio.to_thread(evals.get_eval, run.team_id, run.eval_id)).definition
    graders = services.evals.graders(definition, run.team_id)
    principal = Principal(
        key_id=run.key_id or "", key_pk=0, team_id=run.team_id, team_name=services.teams.name(run.team_id), role="member"
    )
    cfg = config.evals
    ctx = RunContext(run_id, run.team_id, principal, run.spec, graders, runtime_for(services), cfg.rate_limit_retries)
    await ctx.runtime.start()
    slots = max(1, math.ceil(cfg.max_concurrency / cfg.jobs_per_run)) if cfg.jobs_per_run > 1 else cfg.max_concurrency
    worker = f"{new_worker_id()}:{job.job_id}"
    await asyncio.to_thread(evals.set_run_status, run_id, IN_PROGRESS, only_from=(QUEUED,))
    recorded = 0
    try:
        while True:
            current = await asyncio.to_thread(_status, evals, run_id)
            if current not in (QUEUED, IN_PROGRESS):
                return {"run_id": run_id, "status": current, "recorded": recorded}
            batch = await asyncio.to_thread(evals.claim, run_id, worker, min(cfg.batch_size, slots * 4),
                                            cfg.item_lease_seconds)
            if not batch:
                if await asyncio.to_thread(evals.unfinished, run_id) == 0:
                    await asyncio.to_thread(evals.set_run_status, run_id, COMPLETED, only_from=(QUEUED, IN_PROGRESS))
                    return {"run_id": run_id, "status": COMPLETED, "recorded": recorded}
                # Items held by other loops: wait for them to finish or for their claims to expire.
                await asyncio.sleep(min(cfg.item_lease_seconds / 4, 2.0))
                continue
            recorded += await _work(ctx, evals, worker, batch, slots, cfg.item_lease_seconds)
    finally:
        await ctx.runtime.metering.drain()


def _status(evals: EvalStore, run_id: str) -> str:
    try:
        return evals.get_run(None, None, run_id).status
    except NotFound:
        return "deleted"


async def _work(ctx: RunContext, evals: EvalStore, worker: str, batch, slots: int, lease: float) -> int:
    held = {idx for idx, _ in batch}
    gate = asyncio.Semaphore(slots)

    async def one(idx: int, row: dict[str, Any]) -> bool:
        async with gate:
            outcome = await grade_item(ctx, row)
        # The generations' usage records are written before the result that used them:
        # a loop killed after recording a result has left its usage behind too.
        await ctx.runtime.metering.usage_writer.flush()
        held.discard(idx)
        recorded = await asyncio.to_thread(evals.finish, ctx.run_id, ctx.team_id, idx, worker, outcome)
        if not recorded:  # another loop took it over meanwhile; its tokens were still spent
            log.warning("eval run %s item %d: claim lost; this generation's result is dropped", ctx.run_id, idx)
            await asyncio.to_thread(evals.add_tokens, ctx.run_id, idx, outcome.prompt_tokens, outcome.completion_tokens)
        return recorded

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    _renewals, evals.renew, ctx.run_id, worker, sorted(held), lease
                )
            except Exception:  # the claims may lapse; another loop then redoes those items
                log.exception("eval run %s: renewing item claims failed", ctx.run_id)

    renewer = asyncio.ensure_future(renew())
    try:
        done = await asyncio.gather(*(one(idx, row) for idx, row in batch))
    finally:
        renewer.cancel()
    return sum(done)


__all__ = ["KIND", "CANCELED", "register", "run_job"]
