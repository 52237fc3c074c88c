"""`python -m llamahost.finetune --spec job.json`: one training run, the same entrypoint for
the local job loop, a `command` backend and a Kubernetes Job (which runs it as
`--remote RUN`: inputs from and output to the files backend, see remote.py).

Exit status: 0 succeeded, 1 failed, 3 cancelled; the output dir's result.json says the same
with details, events.jsonl and metrics.jsonl tell the story as it happens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import APIError
from .deps import require_training_deps
from .spec import load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamahost.finetune", description="Run one LoRA fine-tuning job.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", type=Path, help="the job spec (JSON)")
    source.add_argument(
        "--remote",
        metavar="JSON",
        help="a run whose inputs and output travel through the files backend (a Kubernetes pod): "
        '{"team_id", "run", "input_chunks"}; the server\'s stores come from the environment',
    )
    parser.add_argument("--work-dir", type=Path, default=Path.cwd(), help="with --remote: where to unpack the run")
    args = parser.parse_args(argv)
    if args.remote is not None:
        from .remote import RemoteRun, run_remote

        try:
            remote = RemoteRun.from_arg(args.remote)
        except (ValueError, KeyError, TypeError) as exc:
            print(f"error: --remote: {exc}", file=sys.stderr)
            return 2
        return run_remote(remote, args.work_dir / remote.run)
    try:
        require_training_deps()
        spec = load_spec(args.spec)
    except APIError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    from .train import run

    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
