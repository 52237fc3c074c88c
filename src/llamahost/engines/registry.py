"""Model registry: every configured model id and alias, and the engine behind it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..config import Config, ConfigError, ModelConfig
from ..errors import NotFound
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

    @property
    def is_alias(self) -> bool:
        return self.name != self.config.id

    def card(self) -> dict:
        """The model as listed by /models. Beyond the SDKs' four fields it says what
        really serves the name, so an alias never passes for the model it is named after."""
        return {
            "id": self.name,
            "created": self.created,
            "owned_by": self.config.owned_by,
            "root": self.config.id,
            "engine": self.engine.description,
            "context_window": self.config.context_window,
            "capabilities": sorted(self.capabilities),
        }


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
        created = int(time.time())
        for model in config.models:
            engine = build_engine(model)
            capabilities = model_capabilities(model, engine)
            self.engines[model.id] = engine
            for name in model.names:
                self._entries[name] = ModelEntry(
                    name=name, config=model, engine=engine, created=created, capabilities=capabilities
                )

    def resolve(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(
                f"model {name!r} not found; available: {', '.join(self._entries)}", param="model", code="model_not_found"
            )
        return entry

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

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
