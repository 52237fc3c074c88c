"""What a run tells its watcher: events and metrics as JSONL in the output dir, one line per
record and flushed at once, so a job loop tailing the files sees progress as it happens.

The shapes follow OpenAI's fine-tuning events (`level`, `message`, `type` message|metrics,
`data`) so the API can pass them through.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

EVENTS = "events.jsonl"
METRICS = "metrics.jsonl"
RESULT = "result.json"


class Journal:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.events_path = out_dir / EVENTS
        self.metrics_path = out_dir / METRICS

    def _append(self, path: Path, record: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")

    def event(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        self._event(level, message, "message", data or {})

    def _event(self, level: str, message: str, kind: str, data: dict[str, Any]) -> None:
        record = {"created_at": int(time.time()), "level": level, "message": message, "type": kind, "data": data}
        self._append(self.events_path, record)

    def metrics(self, row: dict[str, Any]) -> None:
        self._append(self.metrics_path, row)
        summary = f"Step {row['step']}: training loss={row['train_loss']:.4f}"
        if row.get("valid_loss") is not None:
            summary += f", validation loss={row['valid_loss']:.4f}"
        self._event("info", summary, "metrics", row)

    def forget_metrics_after(self, step: int) -> None:
        """A resumed run replays the steps after its checkpoint: drop their first rows so the
        learning curve has one point per step."""
        if not self.metrics_path.exists():
            return
        kept = [line for line in read_jsonl(self.metrics_path) if line.get("step", 0) <= step]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(self.metrics_path)

    def result(self, record: dict[str, Any]) -> None:
        tmp = self.out_dir / (RESULT + ".tmp")
        tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
        tmp.replace(self.out_dir / RESULT)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines only: a reader may race the writer's last, unfinished line."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
