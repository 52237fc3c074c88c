"""``llamahost keys``: API keys, and the encryption keys behind stored data."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

from ..config import ENV_MASTER_KEY, MAX_KEY_EXPIRY_DAYS, env
from ..tenancy.scope import Scope
from .common import add_common, fmt_time, open_stores


def register(commands) -> None:
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key; prints only the key on stdout")
    add_common(create)
    create.add_argument("--team", required=True, help="team the key belongs to (created if new)")
    create.add_argument("--name", help="a label to recognise the key by")
    create.add_argument(
        "--role", choices=["member", "admin", "operator"], default="member",
        help="member: the inference API; admin: also its own team's admin API; operator: every team's",
    )
    create.add_argument("--expires-in-days", type=float, metavar="DAYS")
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    add_common(listing)
    listing.add_argument("--team")
    revoke = keys.add_parser("revoke", help="revoke a key by its id or prefix")
    add_common(revoke)
    revoke.add_argument("key_id")

    rotate = keys.add_parser(
        "rotate-master", help="re-wrap every data key under a new master key (content is not rewritten)"
    )
    add_common(rotate)
    rotate_team = keys.add_parser("rotate-data-key", help="a new data key for a team's new records")
    add_common(rotate_team)
    rotate_team.add_argument("--team", required=True)

    create.set_defaults(handler=_create)
    listing.set_defaults(handler=_list)
    revoke.set_defaults(handler=_revoke)
    rotate.set_defaults(handler=_rotate_master)
    rotate_team.set_defaults(handler=_rotate_data_key)


def _create(args: argparse.Namespace) -> int:
    if args.expires_in_days is not None and not 0 < args.expires_in_days <= MAX_KEY_EXPIRY_DAYS:
        raise SystemExit(f"llamahost: --expires-in-days must be more than 0 and at most {MAX_KEY_EXPIRY_DAYS}")
    store = open_stores(args).keys
    expires = timedelta(days=args.expires_in_days) if args.expires_in_days is not None else None
    _, created = store.ensure_team(args.team)
    if created:
        print(f"created team {args.team!r}", file=sys.stderr)
    key, _ = store.create_key(args.team, name=args.name, role=args.role, expires_in=expires)
    print(key)
    return 0


def _list(args: argparse.Namespace) -> int:
    store = open_stores(args).keys
    print(f"{'PREFIX':<20} {'TEAM':<16} {'ROLE':<8} {'NAME':<20} {'CREATED':<20} {'LAST USED':<20} STATUS")
    for k in store.list_keys(Scope.operator(), args.team):
        status = "revoked" if k.revoked_at else (f"expires {fmt_time(k.expires_at)}" if k.expires_at else "active")
        print(
            f"{k.prefix:<20} {k.team:<16} {k.role:<8} {(k.name or '-'):<20} "
            f"{fmt_time(k.created_at):<20} {fmt_time(k.last_used_at):<20} {status}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    info = open_stores(args).keys.revoke_key(args.key_id)
    print(f"revoked {info.prefix} (team {info.team})", file=sys.stderr)
    return 0


def _rotate_master(args: argparse.Namespace) -> int:
    from ..store.crypto import MasterKey
    from ..store.keyring import rotation_pending_file

    stores = open_stores(args)
    old_id = stores.keyring.master.key_id
    new = MasterKey.generate()
    if env(ENV_MASTER_KEY):
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


def _rotate_data_key(args: argparse.Namespace) -> int:
    stores = open_stores(args)
    team_id = Scope.operator().team(stores.teams, args.team)
    version = stores.keyring.rotate_team_key(team_id)
    print(f"team {args.team}: data key v{version} seals new records from now on (older versions still open older ones)")
    return 0
