"""The ``llamahost`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import timedelta

from . import __version__
from .cli_data import add_data_commands, data_commands, key_actions, team_actions
from .config import ConfigError, load_config
from .protocol.errors import APIError
from .store.crypto import CryptoError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (env LLAMAHOST_CONFIG)")
    parser.add_argument(
        "--data-dir", metavar="DIR", help="where state lives (env LLAMAHOST_DATA_DIR; default a per-user directory)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamahost", description="The Llama API, self-hosted.")
    parser.add_argument("--version", action="version", version=f"llamahost {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the API server")
    _common(serve)
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) to serve HTTPS with")
    serve.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    serve.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or one JSON object each")
    serve.add_argument("--workers", type=int, metavar="N", help="server processes sharing the port (default 1)")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key; prints only the key on stdout")
    _common(create)
    create.add_argument("--team", required=True, help="team the key belongs to (created if new)")
    create.add_argument("--name", help="a label to recognise the key by")
    create.add_argument(
        "--role", choices=["member", "admin", "operator"], default="member",
        help="member: the inference API; admin: also its own team's admin API; operator: every team's",
    )
    create.add_argument("--expires-in-days", type=float, metavar="DAYS")
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    _common(listing)
    listing.add_argument("--team")
    revoke = keys.add_parser("revoke", help="revoke a key by its id or prefix")
    _common(revoke)
    revoke.add_argument("key_id")

    teams = commands.add_parser("teams", help="manage teams").add_subparsers(dest="action", required=True)
    team_create = teams.add_parser("create", help="create a team")
    _common(team_create)
    team_create.add_argument("name")
    _common(teams.add_parser("list", help="list teams and their settings"))

    limits = commands.add_parser("limits", help="per-team rate limits").add_subparsers(dest="action", required=True)
    limit_set = limits.add_parser("set", help="set a team's limits (only the values given change)")
    _common(limit_set)
    limit_set.add_argument("--team", required=True)
    limit_set.add_argument("--model", help="a model id or alias (default: the team's default for every model)")
    limit_set.add_argument("--rpm", type=int, help="requests per minute")
    limit_set.add_argument("--tpm", type=int, help="tokens (prompt + completion) per minute")
    limit_list = limits.add_parser("list", help="list the limits teams have set, and the server defaults")
    _common(limit_list)
    limit_list.add_argument("--team")
    limit_clear = limits.add_parser("clear", help="remove a team's limits row (back to its default / the server's)")
    _common(limit_clear)
    limit_clear.add_argument("--team", required=True)
    limit_clear.add_argument("--model")

    usage = commands.add_parser("usage", help="show usage records and totals")
    _common(usage)
    usage.add_argument("--team")
    usage.add_argument("--user", help="the requests' `user` value, exactly as sent")
    usage.add_argument("--model", help="the model name as requested")
    usage.add_argument("--since", help="ISO 8601 time (naive = UTC) or an age: 30m, 24h, 7d")
    usage.add_argument("--until", help="as --since")
    usage.add_argument("--limit", type=int, default=50, help="records listed, newest kept (totals count all)")
    usage.add_argument("--json", action="store_true", help="print JSON: {data: [...], totals: {...}}")
    add_data_commands(commands, keys, teams, _common)
    return parser


def open_stores(args):
    """Every store, for a command run on the server's host: operator scope."""
    from .tenancy.stores import open_stores as open_all

    return open_all(load_config(args.config, data_dir=args.data_dir))


def _key_store(args):
    return open_stores(args).keys


def _fmt(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _serve(args) -> int:
    import os
    import shutil
    import tempfile

    config = load_config(
        args.config, data_dir=args.data_dir, host=args.host, port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key
    )
    if args.log_level:
        config.server.log_level = args.log_level
    if args.log_format:
        config.server.log_format = args.log_format
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError("--workers must be at least 1")
        config.server.workers = args.workers
    workers = config.server.workers
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Must be set before prometheus-client is first imported (by the app modules
        # below): each worker then writes its samples to files that /metrics sums.
        metrics_dir = tempfile.mkdtemp(prefix="llamahost-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    from .api.app import WORKER_CONFIG_ENV, build_services, create_app
    from .api.server import run as run_server
    from .observability import configure_logging

    level = config.server.log_level
    configure_logging(level, config.server.log_format)
    log = logging.getLogger("llamahost")
    log.info("data directory: %s", config.data_dir)
    services = build_services(config)
    if services.keys.count_keys() == 0:
        # The quickstart expects a key to exist; the first start makes one, shown once.
        key, info = services.keys.create_key("default", name="first key", role="operator")
        print(
            f"\nNo API keys existed, so an operator key (team 'default') was created.\n"
            f"It is shown only this once; store it now:\n\n    export LLAMA_API_KEY='{key}'\n",
            flush=True,
        )
    common = dict(host=config.server.host, port=config.server.port, log_level=level, log_config=None, access_log=False)
    if config.server.tls_cert is not None:
        common |= dict(ssl_certfile=str(config.server.tls_cert), ssl_keyfile=str(config.server.tls_key))
    if workers == 1:
        run_server(create_app(config, services), workers=1, **common)
        return 0
    # Migrations ran and the first key exists; each worker opens its own connections.
    services.db.close()
    os.environ[WORKER_CONFIG_ENV] = config.model_dump_json(exclude_defaults=True)
    log.info("starting %d worker processes", workers)
    try:
        run_server("llamahost.api.app:worker_app", workers=workers, **common)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _keys(args) -> int:
    from .tenancy.scope import Scope

    if args.action in key_actions:
        return key_actions[args.action](args)
    store = _key_store(args)
    if args.action == "create":
        expires = timedelta(days=args.expires_in_days) if args.expires_in_days is not None else None
        _, created = store.ensure_team(args.team)
        if created:
            print(f"created team {args.team!r}", file=sys.stderr)
        key, _ = store.create_key(args.team, name=args.name, role=args.role, expires_in=expires)
        print(key)
    elif args.action == "list":
        print(f"{'PREFIX':<20} {'TEAM':<16} {'ROLE':<8} {'NAME':<20} {'CREATED':<20} {'LAST USED':<20} STATUS")
        for k in store.list_keys(Scope.operator(), args.team):
            status = "revoked" if k.revoked_at else (f"expires {_fmt(k.expires_at)}" if k.expires_at else "active")
            print(
                f"{k.prefix:<20} {k.team:<16} {k.role:<8} {(k.name or '-'):<20} "
                f"{_fmt(k.created_at):<20} {_fmt(k.last_used_at):<20} {status}"
            )
    elif args.action == "revoke":
        info = store.revoke_key(args.key_id)
        print(f"revoked {info.prefix} (team {info.team})", file=sys.stderr)
    return 0


def _teams(args) -> int:
    if args.action in team_actions:
        return team_actions[args.action](args)
    stores = open_stores(args)
    if args.action == "create":
        _, created = stores.keys.ensure_team(args.name)
        print(f"{'created' if created else 'exists'}: {args.name}")
    else:
        print(f"{'TEAM':<24} {'CREATED':<20} {'ACTIVE KEYS':>11}  {'STORE CONTENT':<13} RETENTION")
        for team in stores.keys.list_teams():
            view = stores.settings.view(team.id)
            store = ("on" if view.settings.store_content else "off") + ("" if "store_content" in view.overridden else "*")
            days = f"{view.settings.retention_days} days" + ("" if "retention_days" in view.overridden else "*")
            print(f"{team.name:<24} {_fmt(team.created_at):<20} {team.active_keys:>11}  {store:<13} {days}")
        print("* the server's default ([content] in the config file)")
    return 0


def _limits(args) -> int:
    from .tenancy.limits import limits_model_id
    from .tenancy.scope import Scope

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


def _usage(args) -> int:
    import json

    from .tenancy.scope import Scope
    from .tenancy.usage import parse_time

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
            f"{_fmt(e.created_at):<20} {e.team:<12} {e.key_id or '-':<13} {e.kind:<16} {e.model:<28} {e.user or '-':<16} "
            f"{e.status:<22} {e.stop_reason or '-':<7} {e.prompt_tokens:>7} {e.completion_tokens:>7} {e.latency_ms:>7}"
        )
    shown = f" ({len(entries)} listed)" if len(entries) < totals.requests else ""
    print(
        f"TOTAL {totals.requests} requests{shown}: {totals.prompt_tokens} prompt + "
        f"{totals.completion_tokens} completion = {totals.total_tokens} tokens"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"serve": _serve, "keys": _keys, "teams": _teams, "limits": _limits, "usage": _usage, **data_commands}
    try:
        return handlers[args.command](args)
    except CryptoError as exc:
        print(f"llamahost: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"llamahost: {exc}", file=sys.stderr)
        return 2
    except APIError as exc:
        print(f"llamahost: {exc.message}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"llamahost: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
