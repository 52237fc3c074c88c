"""Tuned models: what the fine-tuning slice produces and the serving side (registry, engines,
the /models routes) consumes.

The two meet only here. Fine-tuning implements ``TunedModelSource`` over its store; the
registry is handed one at start and asks it when a name it does not configure arrives, so
``engines/`` never imports the fine-tuning slice (which itself needs the registry to check
that a base model can be tuned).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Protocol

# The prefix of every tuned model id: ``ft:<base>:<team-opaque>:<suffix>:<job id>`` (OpenAI's
# shape), and ``...:ckpt-step-<n>`` for an earlier checkpoint made callable.
TUNED_PREFIX = "ft:"


@dataclass(frozen=True)
class TunedModel:
    id: str  # the callable name, e.g. "ft:smollm2-135m:t3f9a1c2:support:ftjob-abc123"
    team_id: int  # only this team's keys may call, list or delete it
    base_model: str  # the configured model id it was tuned from (rate limits and labels follow it)
    job_id: str  # the fine-tuning job that made it
    adapter_ref: str  # opaque to the serving side; handed back to ``adapter_gguf``
    created: int  # unix seconds


class TunedModelSource(Protocol):
    def get(self, team_id: int, model_id: str) -> TunedModel | None:
        """The team's tuned model of that id, or None (another team's model is None too)."""
        ...

    def list(self, team_id: int) -> list[TunedModel]:
        """Every callable tuned model of the team, oldest first."""
        ...

    # builtins.list: inside this class body `list` names the method above.
    def all_for_base(self, base_model: str) -> builtins.list[TunedModel]:
        """Every team's tuned models of one base model (what an engine preloads at start)."""
        ...

    def adapter_gguf(self, model: TunedModel) -> bytes:
        """The llama.cpp LoRA GGUF of the model, decrypted (kept in memory or a private
        temporary file only while the engine loads it)."""
        ...

    def adapter_peft(self, model: TunedModel) -> dict[str, bytes]:
        """The PEFT folder of the model, decrypted: relative file name -> bytes
        (adapter_config.json, adapter_model.safetensors). Upstream engines (vLLM) load it."""
        ...

    def delete(self, team_id: int, model_id: str) -> bool:
        """Removes the model (and its adapter); False when the team has no such model."""
        ...
