"""``llamahost purge`` and ``llamahost requests``: stored content past retention, and
stored requests for abuse review."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ..tenancy.scope import Scope
from ..tenancy.usage import parse_time
from .common import add_common, open_stores


def register(commands) -> None:
    purge = add_common(commands.add_parser("purge", help="delete stored content past its team's retention now"))

    requests = commands.add_parser("requests", help="stored requests, for abuse review").add_subparsers(
        dest="action", required=True
    )
    listing = requests.add_parser("list", help="stored requests, oldest first (the newest --limit)")
    add_common(listing)
    listing.add_argument("--team")
    listing.add_argument("--user", help="the requests' `user` value, exactly as sent")
    listing.add_argument("--since", help="ISO 8601 time (naive = UTC) or an age: 30m, 24h, 7d")
    listing.add_argument("--until", help="as --since")
    flagged = listing.add_mutually_exclusive_group()
    flagged.add_argument("--flagged", action="store_const", const=True, dest="flagged", help="flagged by moderation")
    flagged.add_argument("--not-flagged", action="store_const", const=False, dest="flagged")
    listing.add_argument("--kind", choices=["chat", "moderation"])
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="print JSON: {data: [...]} with the full content")
    show = requests.add_parser("show", help="one stored request, as JSON")
    add_common(show)
    show.add_argument("id")
    show.add_argument("--team")

    purge.set_defaults(handler=_purge)
    listing.set_defaults(handler=_requests)
    show.set_defaults(handler=_requests)


def _purge(args: argparse.Namespace) -> int:
    purged = open_stores(args).content.purge()
    if not purged:
        print("nothing has expired")
    for team, count in sorted(purged.items()):
        print(f"team {team}: purged {count} stored requests")
    return 0


def _entry_json(entry) -> dict:
    return {**asdict(entry), "created_at": entry.created_at.isoformat()}


def _summary(entry) -> str:
    if entry.error:
        return f"!! {entry.error}"
    messages = entry.request.get("messages") or [{}]
    text = str(messages[-1].get("content", "")).replace("\n", " ")
    return text if len(text) <= 48 else text[:47] + "…"


def _requests(args: argparse.Namespace) -> int:
    content = open_stores(args).content
    if args.action == "show":
        print(json.dumps(_entry_json(content.get(Scope.operator(), args.team, args.id)), indent=2, ensure_ascii=False))
        return 0
    if args.limit < 1:
        raise SystemExit("llamahost: --limit must be at least 1")
    entries = content.query(
        Scope.operator(),
        args.team,
        user=args.user,
        since=parse_time(args.since, "--since") if args.since else None,
        until=parse_time(args.until, "--until") if args.until else None,
        flagged=args.flagged,
        kind=args.kind,
        limit=args.limit,
    )
    if args.json:
        print(json.dumps({"data": [_entry_json(e) for e in entries]}, indent=2, ensure_ascii=False))
        return 0
    print(f"{'TIME (UTC)':<20} {'ID':<32} {'TEAM':<12} {'KIND':<10} {'USER':<14} {'STATUS':<16} {'FLAG':<4} CONTENT")
    for e in entries:
        print(
            f"{e.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20} {e.id:<32} {e.team:<12} {e.kind:<10} "
            f"{e.user or '-':<14} {e.status:<16} {'yes' if e.flagged else '-':<4} {_summary(e)}"
        )
    return 0
