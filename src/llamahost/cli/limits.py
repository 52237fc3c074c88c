"""``llamahost limits``: per-team rate limits."""

from __future__ import annotations

import argparse
import sys

from ..tenancy.limits import limits_model_id
from ..tenancy.scope import Scope
from .common import add_common, open_stores


def register(commands) -> None:
    limits = commands.add_parser("limits", help="per-team rate limits").add_subparsers(dest="action", required=True)
    limit_set = limits.add_parser("set", help="set a team's limits (only the values given change)")
    add_common(limit_set)
    limit_set.add_argument("--team", required=True)
    limit_set.add_argument("--model", help="a model id or alias (default: the team's default for every model)")
    limit_set.add_argument("--rpm", type=int, help="requests per minute")
    limit_set.add_argument("--tpm", type=int, help="tokens (prompt + completion) per minute")
    limit_list = limits.add_parser("list", help="list the limits teams have set, and the server defaults")
    add_common(limit_list)
    limit_list.add_argument("--team")
    limit_clear = limits.add_parser("clear", help="remove a team's limits row (back to its default / the server's)")
    add_common(limit_clear)
    limit_clear.add_argument("--team", required=True)
    limit_clear.add_argument("--model")

    for parser in (limit_set, limit_list, limit_clear):
        parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    stores = open_stores(args)
    config, store, scope = stores.config, stores.limits, Scope.operator()
    if args.action in ("set", "clear"):
        model = limits_model_id(config, args.model)
        if model != args.model:
            print(f"{args.model!r} is an alias: the limit applies to model {model!r}", file=sys.stderr)
        if args.action == "set":
            row = store.set(scope, args.team, model, rpm=args.rpm, tpm=args.tpm)
            print(f"team {row.team}, model {row.model or '(default)'}: rpm {row.rpm or 'inherited'}, "
                  f"tpm {row.tpm or 'inherited'}")
        else:
            store.clear(scope, args.team, model)
            print(f"cleared: team {args.team}, model {model or '(default)'}")
        return 0
    state = "on" if config.limits.enabled else "OFF ([limits] enabled = false)"
    print(f"server defaults: rpm {config.limits.rpm}, tpm {config.limits.tpm} (limits {state})")
    print(f"{'TEAM':<24} {'MODEL':<40} {'RPM':>10} {'TPM':>12}")
    for row in store.list(scope, args.team):
        print(f"{row.team:<24} {row.model or '(default)':<40} {row.rpm or '-':>10} {row.tpm or '-':>12}")
    return 0
