"""Model registry: every configured model id and alias, and the engine behind it; and the
calling team's tuned models (``ft:...``), which run on their base model's engine with
their LoRA adapter (``types/tuned.py``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..config import Config, ConfigError, ModelConfig
from ..errors import NotFound, PermissionDenied
from ..types.tuned import TUNED_PREFIX, TunedModel, TunedModelSource
from .base import Engine
from .llamacpp import LlamaCppEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    name: str  # the id a client uses: a model id or an alias
    config: ModelConfig
    engine: Engine
    created: int
    # What this model serves of "vision", "tools", "json_schema".
    capabilities: frozenset[str] = frozenset()
    # A tuned model: its base model's config and engine, with this adapter.
    tuned: TunedModel | None = None

    @property
    def is_alias(self) -> bool:
        return self.tuned is None and self.name != self.config.id

    @property
    def adapter(self) -> str | None:
        """What ``ChatRequest.adapter`` must say for this entry (None: the base model)."""
        return self.tuned.id if self.tuned is not None else None

    @property
    def label(self) -> str:
        """The ``model`` label of Prometheus metrics: a tuned model counts as its base
        model, so team-specific names never become label values (one series each)."""
        return self.config.id if self.tuned is not None else self.name

    def card(self) -> dict:
        """The model as listed by /models. Beyond the SDKs' four fields it says what
        really serves the name, so an alias never passes for the model it is named after."""
        return {
            "id": self.name,
            "created": self.created,
            "owned_by": self.owner,
            "root": self.config.id,
            "engine": self.engine.description + (", LoRA adapter" if self.tuned is not None else ""),
            "context_window": self.config.context_window,
            "capabilities": sorted(self.capabilities),
        }

    @property
    def owner(self) -> str:
        if self.tuned is None:
            return self.config.owned_by
        # OpenAI's tuned models are owned by the organization: here the team's opaque id,
        # the segment after the base in ``ft:<base>:<team>:...`` (never the team's name).
        rest = self.tuned.id.removeprefix(f"{TUNED_PREFIX}{self.tuned.base_model}:")
        return rest.split(":", 1)[0] if rest != self.tuned.id and rest else "llamahost"


CAPABILITIES = ("vision", "tools", "json_schema")


def build_engine(config: ModelConfig) -> Engine:
    if config.engine == "llamacpp":
        return LlamaCppEngine(config)
    if config.engine == "openai":
        from .openai_upstream import OpenAIUpstreamEngine

        return OpenAIUpstreamEngine(config)
    raise ValueError(f"unknown engine {config.engine!r}")


def model_capabilities(config: ModelConfig, engine: Engine) -> frozenset[str]:
    """The config's capability flags where set, else the engine's defaults; a flag the
    engine cannot honour is a configuration error rather than a silent no-op."""
    chosen = set()
    for name in CAPABILITIES:
        flag = getattr(config, name)
        if flag and name not in engine.capabilities:
            hint = " without a vision projector: set mmproj" if name == "vision" and config.engine == "llamacpp" else " yet"
            raise ConfigError(f"model {config.id!r}: {name} = true, but engine {config.engine!r} cannot serve {name}{hint}")
        if flag or (flag is None and name in engine.default_capabilities):
            chosen.add(name)
    return frozenset(chosen)


class ModelRegistry:
    def __init__(self, config: Config) -> None:
        self.engines: dict[str, Engine] = {}
        self._entries: dict[str, ModelEntry] = {}
        # Where tuned models come from (the fine-tuning store); None: no tuned models.
        self.tuned: TunedModelSource | None = None
        created = int(time.time())
        for model in config.models:
            engine = build_engine(model)
            capabilities = model_capabilities(model, engine)
            self.engines[model.id] = engine
            for name in model.names:
                self._entries[name] = ModelEntry(
                    name=name, config=model, engine=engine, created=created, capabilities=capabilities
                )

    def set_tuned_source(self, source: TunedModelSource) -> None:
        """Serve the tuned models ``source`` holds (set once, before the engines load:
        they preload their base model's adapters from it)."""
        self.tuned = source
        for engine in self.engines.values():
            engine.tuned_source = source

    def resolve(self, name: str, team_id: int | None = None) -> ModelEntry:
        """The entry serving ``name`` for the calling team. A tuned model resolves for its
        own team only, asked of the source on every call so a deleted one stops at once;
        another team's is not found, exactly like a name that never existed."""
        entry = self._entries.get(name)
        if entry is None and name.startswith(TUNED_PREFIX):
            entry = self._tuned_entry(name, team_id)
        if entry is None:
            raise NotFound(
                f"model {name!r} not found; available: {', '.join(self._entries)}", param="model", code="model_not_found"
            )
        return entry

    def _tuned_entry(self, name: str, team_id: int | None) -> ModelEntry | None:
        if self.tuned is None or team_id is None:
            return None
        tuned = self.tuned.get(team_id, name)
        return self._entry_of(tuned) if tuned is not None else None

    def _entry_of(self, tuned: TunedModel) -> ModelEntry | None:
        base = self._entries.get(tuned.base_model)
        if base is None:
            return None  # its base model is no longer configured here
        return ModelEntry(
            name=tuned.id, config=base.config, engine=base.engine, created=tuned.created,
            capabilities=base.capabilities, tuned=tuned,
        )

    def delete_tuned(self, name: str, team_id: int) -> None:
        """Delete the team's tuned model ``name``: it stops resolving at once, in every
        process (each asks the source); engines drop its adapter at their next reload."""
        if name in self._entries:
            raise PermissionDenied(
                f"model {name!r} is configured on this server, not a tuned model: only tuned models can be deleted",
                param="model",
            )
        if self.tuned is None or not name.startswith(TUNED_PREFIX) or not self.tuned.delete(team_id, name):
            raise NotFound(f"model {name!r} not found", param="model", code="model_not_found")

    def entries(self, team_id: int | None = None) -> list[ModelEntry]:
        """Every configured name, then the team's tuned models (oldest first)."""
        entries = list(self._entries.values())
        if self.tuned is not None and team_id is not None:
            entries += [e for e in map(self._entry_of, self.tuned.list(team_id)) if e is not None]
        return entries

    @property
    def ready(self) -> bool:
        return all(engine.ready for engine in self.engines.values())

    def describe(self) -> list[str]:
        """One line per model name saying what serves it (for the startup log)."""
        lines = []
        for entry in self._entries.values():
            backing = f"alias of {entry.config.id}" if entry.is_alias else entry.engine.description
            lines.append(f"{entry.name}: {backing}, context window {entry.config.context_window} tokens")
        return lines
