"""Command line for data commitments: team settings and deletion, encryption key
rotation, retention purge, and stored requests for abuse review. Registered by
``cli.py``; every command runs with operator scope (it runs on the server's host, with
its database and master key)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict


def add_data_commands(commands, keys, teams, common) -> None:
    rotate = keys.add_parser(
        "rotate-master", help="re-wrap every data key under a new master key (content is not rewritten)"
    )
    common(rotate)
    rotate_team = keys.add_parser("rotate-data-key", help="a new data key for a team's new records")
    common(rotate_team)
    rotate_team.add_argument("--team", required=True)

    team_set = teams.add_parser("set", help="set a team's settings (only the values given change)")
    common(team_set)
    team_set.add_argument("name")
    team_set.add_argument(
        "--store-content", choices=["on", "off", "default"],
        help="keep the content of its chat and moderation calls, encrypted, for review",
    )
    team_set.add_argument("--retention-days", metavar="N|default", help="days stored content is kept")
    team_set.add_argument(
        "--moderation", choices=["off", "input", "input+output", "default"],
        help="guardrails: moderate chat inputs, or inputs and replies, automatically",
    )
    team_set.add_argument(
        "--moderation-action", choices=["flag", "block", "default"],
        help="guardrails: what a flagged message does (flag: record it; block: refuse it)",
    )
    team_delete = teams.add_parser(
        "delete", help="delete a team: its keys, limits, settings, stored content; shreds its data keys"
    )
    common(team_delete)
    team_delete.add_argument("name")
    team_delete.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")

    common(commands.add_parser("purge", help="delete stored content past its team's retention now"))

    requests = commands.add_parser("requests", help="stored requests, for abuse review").add_subparsers(
        dest="action", required=True
    )
    listing = requests.add_parser("list", help="stored requests, oldest first (the newest --limit)")
    common(listing)
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
    common(show)
    show.add_argument("id")
    show.add_argument("--team")


def _stores(args):
    from .cli import open_stores

    return open_stores(args)


def _rotate_master(args) -> int:
    from .store.crypto import MasterKey
    from .store.keyring import rotation_pending_file

    stores = _stores(args)
    old_id = stores.keyring.master.key_id
    new = MasterKey.generate()
    if os.environ.get("LLAMAHOST_MASTER_KEY"):
        count = stores.keyring.rotate_master(new)
        print(new.encoded())
        print(
            f"re-wrapped {count} keys: master key {old_id} -> {new.key_id}. The new key is printed above, only "
            "this once: set LLAMAHOST_MASTER_KEY to it for every llamahost process and restart them; the old "
            "key opens nothing any more.",
            file=sys.stderr,
        )
        return 0
    path = MasterKey.key_file(stores.config.data_dir)
    pending = rotation_pending_file(path)
    # Written (and synced) before the database switches, so no crash leaves the
    # database wrapped under a key that exists nowhere.
    new.write(pending)
    count = stores.keyring.rotate_master(new)
    os.replace(pending, path)
    print(
        f"re-wrapped {count} keys: master key {old_id} -> {new.key_id}, written to {path} (back it up; the old "
        "key opens nothing any more). Restart running servers: they keep the keys they have opened, but need "
        "the new master for any other.",
        file=sys.stderr,
    )
    return 0


def _rotate_data_key(args) -> int:
    from .tenancy.scope import Scope

    stores = _stores(args)
    team_id = Scope.operator().team(stores.teams, args.team)
    version = stores.keyring.rotate_team_key(team_id)
    print(f"team {args.team}: data key v{version} seals new records from now on (older versions still open older ones)")
    return 0


def _set_team(args) -> int:
    from .tenancy.scope import Scope

    changes: dict[str, object] = {}
    if args.store_content is not None:
        changes["store_content"] = None if args.store_content == "default" else args.store_content == "on"
    if args.retention_days is not None:
        if args.retention_days == "default":
            changes["retention_days"] = None
        else:
            try:
                changes["retention_days"] = int(args.retention_days)
            except ValueError:
                raise SystemExit(f"llamahost: --retention-days: expected a whole number of days or 'default', "
                                 f"got {args.retention_days!r}") from None
    for name in ("moderation", "moderation_action"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = None if value == "default" else value
    stores = _stores(args)
    team_id = Scope.operator().team(stores.teams, args.name)
    view = stores.settings.update(team_id, changes)
    for name, value in view.settings.model_dump().items():
        source = "" if name in view.overridden else " (server default)"
        print(f"{name} = {json.dumps(value)}{source}")
    return 0


def _delete_team(args) -> int:
    if not args.yes:
        print(
            f"llamahost: deleting team {args.name!r} removes its keys, limits, settings and stored content and "
            "shreds its data keys (its content can never be read again); add --yes to do it",
            file=sys.stderr,
        )
        return 2
    deleted = _stores(args).teams.delete(args.name)
    print(
        f"deleted team {deleted.team}: {deleted.api_keys} API keys, {deleted.stored_requests} stored requests, "
        f"{deleted.data_keys} data keys shredded (usage records stay, without their users)"
    )
    return 0


def _purge(args) -> int:
    purged = _stores(args).content.purge()
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


def _requests(args) -> int:
    from .tenancy.scope import Scope
    from .tenancy.usage import parse_time

    content = _stores(args).content
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


key_actions = {"rotate-master": _rotate_master, "rotate-data-key": _rotate_data_key}
team_actions = {"set": _set_team, "delete": _delete_team}
data_commands = {"purge": _purge, "requests": _requests}
