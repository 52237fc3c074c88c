"""Tuned models for the serving tests, without a fine-tuning run: a ``TunedModelSource``
over a directory (one JSON file and one adapter GGUF per model), and a server launcher
that serves it.

The fine-tuning slice's own source (its store) is what ``llamahost serve`` wires; these
tests are about serving, so they add and delete tuned models by writing and removing
files, which every server process sharing the directory sees at once, as processes
sharing a database do. ``python tests/tuned_models.py --dir D --port P [--config F]``
runs ``llamahost serve``'s app with this source.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from llamahost.types.tuned import TunedModel  # noqa: E402


class DirectorySource:
    """``TunedModelSource`` over ``root``: ``<hash>.json`` (the model) and ``<hash>.gguf``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.reads: list[str] = []  # adapters read, in order (this process's)

    def _stem(self, model_id: str) -> Path:
        return self.root / hashlib.sha256(model_id.encode()).hexdigest()[:32]

    def add(self, model: TunedModel, gguf: bytes) -> TunedModel:
        stem = self._stem(model.id)
        stem.with_suffix(".gguf").write_bytes(gguf)
        # The JSON last, renamed into place: a reader never sees a model without its adapter.
        tmp = stem.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(model)))
        tmp.rename(stem.with_suffix(".json"))
        return model

    def _all(self) -> list[TunedModel]:
        models = []
        for path in self.root.glob("*.json"):
            try:
                models.append(TunedModel(**json.loads(path.read_text())))
            except FileNotFoundError:  # deleted meanwhile
                continue
        return sorted(models, key=lambda m: (m.created, m.id))

    def get(self, team_id: int, model_id: str) -> TunedModel | None:
        path = self._stem(model_id).with_suffix(".json")
        if not path.is_file():
            return None
        model = TunedModel(**json.loads(path.read_text()))
        return model if model.team_id == team_id and model.id == model_id else None

    def list(self, team_id: int) -> list[TunedModel]:
        return [m for m in self._all() if m.team_id == team_id]

    def all_for_base(self, base_model: str) -> list[TunedModel]:
        return [m for m in self._all() if m.base_model == base_model]

    def adapter_gguf(self, model: TunedModel) -> bytes:
        self.reads.append(model.id)
        return self._stem(model.id).with_suffix(".gguf").read_bytes()

    def delete(self, team_id: int, model_id: str) -> bool:
        if self.get(team_id, model_id) is None:
            return False
        stem = self._stem(model_id)
        stem.with_suffix(".json").unlink()
        stem.with_suffix(".gguf").unlink(missing_ok=True)
        return True


def tuned_model(base: str, team_opaque: str, suffix: str, team_id: int, job: str) -> TunedModel:
    return TunedModel(
        id=f"ft:{base}:{team_opaque}:{suffix}:{job}",
        team_id=team_id,
        base_model=base,
        job_id=job,
        adapter_ref=job,
        created=int(time.time()),
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--config")
    args = parser.parse_args()

    from llamahost.api.app import create_app
    from llamahost.api.server import run
    from llamahost.api.services import build_services
    from llamahost.config import load_config
    from llamahost.observability import configure_logging

    config = load_config(args.config, port=args.port)
    configure_logging(config.server.log_level, config.server.log_format)
    services = build_services(config)
    services.registry.set_tuned_source(DirectorySource(args.dir))
    run(create_app(config, services), workers=1, host="127.0.0.1", port=args.port, log_level="info", log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
