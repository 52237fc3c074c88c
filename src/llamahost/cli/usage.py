"""``llamahost usage``: usage records and their totals; ``llamahost log-user``: how the
request log names an end user."""

from __future__ import annotations

import argparse
import json

from ..observability import UserLogging
from ..tenancy.scope import Scope
from ..tenancy.usage import parse_time
from .common import add_common, fmt_time, open_stores


def register(commands) -> None:
    usage = commands.add_parser("usage", help="show usage records and totals")
    add_common(usage)
    usage.add_argument("--team")
    usage.add_argument("--user", help="the requests' `user` value, exactly as sent")
    usage.add_argument("--model", help="the model name as requested")
    usage.add_argument("--since", help="ISO 8601 time (naive = UTC) or an age: 30m, 24h, 7d")
    usage.add_argument("--until", help="as --since")
    usage.add_argument("--limit", type=int, default=50, help="records listed, newest kept (totals count all)")
    usage.add_argument("--json", action="store_true", help="print JSON: {data: [...], totals: {...}}")
    usage.set_defaults(handler=run)

    log_user = commands.add_parser(
        "log-user", help="how request logs name an end user (with [server] log_users = \"hashed\")"
    )
    add_common(log_user)
    log_user.add_argument("user", help="the requests' `user` value, exactly as sent")
    log_user.set_defaults(handler=run_log_user)


def run_log_user(args: argparse.Namespace) -> int:
    """Prints the label to grep the logs for: the deployment's keyed hash of the value."""
    stores = open_stores(args)
    print(UserLogging("hashed", stores.keyring.log_user_hash).label(args.user))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise SystemExit("llamahost: --limit must be at least 1")
    entries, totals = open_stores(args).usage.query(
        Scope.operator(),
        team=args.team,
        user=args.user,
        model=args.model,
        since=parse_time(args.since, "--since") if args.since else None,
        until=parse_time(args.until, "--until") if args.until else None,
        limit=args.limit,
    )
    if args.json:
        data = [{**e.__dict__, "created_at": e.created_at.isoformat(), "total_tokens": e.total_tokens} for e in entries]
        print(json.dumps({"data": data, "totals": {**totals.__dict__, "total_tokens": totals.total_tokens}}, indent=2))
        return 0
    print(
        f"{'TIME (UTC)':<20} {'TEAM':<12} {'KEY':<13} {'KIND':<16} {'MODEL':<28} {'USER':<16} {'STATUS':<22} "
        f"{'STOP':<7} {'PROMPT':>7} {'COMPL':>7} {'MS':>7}"
    )
    for e in entries:
        print(
            f"{fmt_time(e.created_at):<20} {e.team:<12} {e.key_id or '-':<13} {e.kind:<16} {e.model:<28} {e.user or '-':<16} "
            f"{e.status:<22} {e.stop_reason or '-':<7} {e.prompt_tokens:>7} {e.completion_tokens:>7} {e.latency_ms:>7}"
        )
    shown = f" ({len(entries)} listed)" if len(entries) < totals.requests else ""
    print(
        f"TOTAL {totals.requests} requests{shown}: {totals.prompt_tokens} prompt + "
        f"{totals.completion_tokens} completion = {totals.total_tokens} tokens"
    )
    return 0
