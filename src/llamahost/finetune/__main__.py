"""`python -m llamahost.finetune --spec job.json`: one training run, the same entrypoint for
the local job loop, a `command` backend and a Kubernetes Job.

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
    parser.add_argument("--spec", type=Path, required=True, help="the job spec (JSON)")
    args = parser.parse_args(argv)
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
