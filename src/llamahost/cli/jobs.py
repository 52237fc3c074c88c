"""``llamahost jobs``: run a job loop on its own (``work``), list jobs, cancel one."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal

from ..config import load_config
from ..tenancy.scope import Scope
from .common import add_common, fmt_time, open_stores

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def register(commands) -> None:
    jobs = commands.add_parser("jobs", help="background jobs: run a worker, list, cancel").add_subparsers(
        dest="action", required=True
    )
    work = jobs.add_parser("work", help="run a job loop until SIGINT/SIGTERM (any number, on any hosts sharing the database)")
    add_common(work)
    work.add_argument("--concurrency", type=int, metavar="N", help="jobs run at once (default [jobs] concurrency)")
    work.add_argument("--kind", action="append", metavar="KIND", help="run only jobs of this kind (repeatable)")
    work.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    work.set_defaults(handler=run_work)

    listing = jobs.add_parser("list", help="list jobs, newest first: kind, status, attempts, error, times")
    add_common(listing)
    listing.add_argument("--team")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--kind")
    listing.add_argument("--limit", type=int, default=50, help="jobs listed (default 50)")
    listing.add_argument("--json", action="store_true", help="print JSON: {data: [...]}, as GET /admin/v1/jobs")
    listing.set_defaults(handler=run_list)

    cancel = jobs.add_parser("cancel", help="cancel a queued job at once, or ask a running one's handler to stop")
    add_common(cancel)
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=run_cancel)


def _stores_and_queue(args: argparse.Namespace):
    """Listing and cancelling need the table, not the kinds: no models or services."""
    from ..jobs.service import open_jobs

    stores = open_stores(args)
    return stores, open_jobs(stores, ()).queue


def run_work(args: argparse.Namespace) -> int:
    from ..observability import configure_logging

    config = load_config(args.config, data_dir=args.data_dir)
    if args.concurrency is not None and not 1 <= args.concurrency <= 64:
        raise SystemExit("llamahost: --concurrency must be between 1 and 64")
    configure_logging(args.log_level or config.server.log_level, config.server.log_format)
    from ..api.services import build_services

    services = build_services(config)
    unknown = sorted(set(args.kind or ()) - set(services.jobs.kinds.names))
    if unknown:
        raise SystemExit(f"llamahost: unknown job kind {', '.join(unknown)}; known: {', '.join(services.jobs.kinds.names)}")
    loop = services.jobs.loop(services, concurrency=args.concurrency, only=args.kind)

    async def main() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await loop.run(stop)

    try:
        asyncio.run(main())
    finally:
        services.db.close()
    logging.getLogger("llamahost").info("job loop %s stopped", loop.worker_id)
    return 0


def _view(stores, job) -> dict:
    from ..api.jobs import job_view

    return job_view(stores.teams, job).model_dump(mode="json")


def run_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise SystemExit("llamahost: --limit must be between 1 and 1000")
    stores, queue = _stores_and_queue(args)
    jobs = queue.list(Scope.operator(), team=args.team, status=args.status, kind=args.kind, limit=args.limit)
    views = [_view(stores, job) for job in jobs]
    if args.json:
        print(json.dumps({"data": views}, indent=2))
        return 0
    print(f"{'ID':<28} {'KIND':<20} {'STATUS':<10} {'TEAM':<16} {'TRIES':>5}  {'CREATED':<19}  {'STARTED':<19}  "
          f"{'FINISHED':<19}  ERROR")
    for job in jobs:
        team = stores.teams.name(job.team_id) if job.team_id is not None else "-"
        tries = f"{job.attempts}/{job.max_attempts}"
        error = (job.error or "-").replace("\n", " ")
        print(f"{job.id:<28} {job.kind:<20} {job.status:<10} {team:<16} {tries:>5}  {fmt_time(job.created_at):<19}  "
              f"{fmt_time(job.started_at):<19}  {fmt_time(job.finished_at):<19}  {error[:120]}")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    _, queue = _stores_and_queue(args)
    job = queue.cancel(Scope.operator(), args.job_id)
    state = "cancelled" if job.status == "cancelled" else "cancel requested (its handler stops at the next lease renewal)"
    print(f"{job.id}: {state}")
    return 0
