"""What every command shares: the --config/--data-dir options, the stores opened with
operator scope (a command runs on the server's host, with its database and master key),
and how times are printed."""

from __future__ import annotations

import argparse

from ..config import load_config


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (env LLAMAHOST_CONFIG)")
    parser.add_argument(
        "--data-dir", metavar="DIR", help="where state lives (env LLAMAHOST_DATA_DIR; default a per-user directory)"
    )
    return parser


def open_stores(args: argparse.Namespace):
    """Every store, for a command run on the server's host: operator scope."""
    from ..tenancy.stores import open_stores as open_all

    return open_all(load_config(args.config, data_dir=args.data_dir))


def fmt_time(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"
