"""``llamahost teams``: teams, their settings, and their deletion."""

from __future__ import annotations

import argparse
import json
import sys

from ..tenancy.scope import Scope
from .common import add_common, fmt_time, open_stores


def register(commands) -> None:
    teams = commands.add_parser("teams", help="manage teams").add_subparsers(dest="action", required=True)
    team_create = teams.add_parser("create", help="create a team")
    add_common(team_create)
    team_create.add_argument("name")
    team_list = add_common(teams.add_parser("list", help="list teams and their settings"))

    team_set = teams.add_parser("set", help="set a team's settings (only the values given change)")
    add_common(team_set)
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
    team_set.add_argument(
        "--files-quota-bytes", metavar="N|default",
        help="bytes of uploaded files (and open uploads) the team may hold ([files] team_quota_bytes by default)",
    )
    team_delete = teams.add_parser(
        "delete", help="delete a team: its keys, limits, settings, stored content, files, evals; shreds its data keys"
    )
    add_common(team_delete)
    team_delete.add_argument("name")
    team_delete.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")

    team_create.set_defaults(handler=_create)
    team_list.set_defaults(handler=_list)
    team_set.set_defaults(handler=_set)
    team_delete.set_defaults(handler=_delete)


def _create(args: argparse.Namespace) -> int:
    _, created = open_stores(args).keys.ensure_team(args.name)
    print(f"{'created' if created else 'exists'}: {args.name}")
    return 0


def _list(args: argparse.Namespace) -> int:
    stores = open_stores(args)
    print(f"{'TEAM':<24} {'CREATED':<20} {'ACTIVE KEYS':>11}  {'STORE CONTENT':<13} RETENTION")
    for team in stores.keys.list_teams():
        view = stores.settings.view(team.id)
        store = ("on" if view.settings.store_content else "off") + ("" if "store_content" in view.overridden else "*")
        days = f"{view.settings.retention_days} days" + ("" if "retention_days" in view.overridden else "*")
        print(f"{team.name:<24} {fmt_time(team.created_at):<20} {team.active_keys:>11}  {store:<13} {days}")
    print("* the server's default ([content] in the config file)")
    return 0


def _set(args: argparse.Namespace) -> int:
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
    if args.files_quota_bytes is not None:
        if args.files_quota_bytes == "default":
            changes["files_quota_bytes"] = None
        elif args.files_quota_bytes.isdigit():
            changes["files_quota_bytes"] = int(args.files_quota_bytes)
        else:
            raise SystemExit(f"llamahost: --files-quota-bytes: expected a whole number of bytes or 'default', "
                             f"got {args.files_quota_bytes!r}")
    for name in ("moderation", "moderation_action"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = None if value == "default" else value
    stores = open_stores(args)
    team_id = Scope.operator().team(stores.teams, args.name)
    view = stores.settings.update(team_id, changes)
    for name, value in view.settings.model_dump().items():
        source = "" if name in view.overridden else " (server default)"
        print(f"{name} = {json.dumps(value)}{source}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    if not args.yes:
        print(
            f"llamahost: deleting team {args.name!r} removes its keys, limits, settings, stored content, files, evals, "
            "fine-tuning jobs and tuned models and shreds its data keys (its content can never be read again); "
            "add --yes to do it",
            file=sys.stderr,
        )
        return 2
    from ..evals.store import EvalStore
    from ..files.service import open_files
    from ..fine_tuning.store import FineTuningStore

    stores = open_stores(args)
    stores.teams.on_delete.append(open_files(stores.config, stores.db, stores.keyring).delete_team)
    stores.teams.on_delete.append(EvalStore(stores.db, stores.keyring).delete_team)
    stores.teams.on_delete.append(FineTuningStore(stores.db, stores.keyring).delete_team)
    deleted = stores.teams.delete(args.name)
    print(
        f"deleted team {deleted.team}: {deleted.api_keys} API keys, {deleted.stored_requests} stored requests, "
        f"{deleted.files} files, {deleted.data_keys} data keys shredded (usage records stay, without their users)"
    )
    return 0
