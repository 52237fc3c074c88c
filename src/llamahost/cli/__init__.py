"""The ``llamahost`` command line: one module per command group, each registering its
own subcommands (with their handler) on the parser built here."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..config import ConfigError
from ..errors import APIError
from ..store.crypto import CryptoError
from . import content, evals, jobs, keys, limits, serve, teams, usage

GROUPS = (serve, keys, teams, limits, usage, content, jobs, evals)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamahost", description="The Llama API, self-hosted.")
    parser.add_argument("--version", action="version", version=f"llamahost {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except (CryptoError, ConfigError, FileNotFoundError) as exc:
        print(f"llamahost: {exc}", file=sys.stderr)
        return 2
    except APIError as exc:
        print(f"llamahost: {exc.message}", file=sys.stderr)
        return 1
