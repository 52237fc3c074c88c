"""Per-team settings: what a team has set overrides the server-wide default.

A setting is a field of ``TeamSettings`` (its type and bounds) whose server default
comes from the configuration (``TeamSettings.defaults``). The table holds one
name/value row per setting a team has set, so adding a setting (the moderation
guardrail mode, say) needs no migration: a field here, its default, a CLI flag and a
field of the wire model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, select

from ..config import MAX_RETENTION_DAYS, Config
from ..errors import InvalidRequest
from ..store.db import Database, aware_utc
from ..store.models import TeamSetting

SETTINGS_CACHE_SECONDS = 5.0


class TeamSettings(BaseModel):
    """A team's effective settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # Keep the request/response content of chat and moderation calls (encrypted) for review.
    store_content: bool
    # Days stored content is kept before the purge deletes it.
    retention_days: int = Field(ge=1, le=MAX_RETENTION_DAYS)
    # Guardrails: which chat messages are moderated automatically, and what a flag does.
    moderation: Literal["off", "input", "input+output"]
    moderation_action: Literal["flag", "block"]
    # Bytes of uploaded files (and open uploads) the team may hold; None: no quota. Only an
    # operator sets it (it is a limit on the team, not the team's choice).
    files_quota_bytes: int | None = Field(default=None, ge=0)

    @classmethod
    def defaults(cls, config: Config) -> TeamSettings:
        return cls(
            store_content=config.content.store_content,
            retention_days=config.content.retention_days,
            moderation=config.moderation.mode,
            moderation_action=config.moderation.action,
            files_quota_bytes=config.files.team_quota_bytes,
        )


SETTING_NAMES = tuple(TeamSettings.model_fields)


@dataclass(frozen=True)
class SettingsView:
    settings: TeamSettings
    overridden: tuple[str, ...]  # set by the team; the others are the server's defaults
    updated_at: datetime | None


class SettingsStore:
    def __init__(self, db: Database, defaults: TeamSettings) -> None:
        self.db = db
        self.defaults = defaults
        self._cache: dict[int, tuple[float, TeamSettings]] = {}

    def _rows(self, team_id: int) -> list[TeamSetting]:
        with self.db.session() as s:
            return list(s.scalars(select(TeamSetting).where(TeamSetting.team_id == team_id)))

    @staticmethod
    def _overrides(rows: list[TeamSetting]) -> dict[str, Any]:
        # A row for a setting this version does not know (written by a newer one) is ignored.
        return {r.name: json.loads(r.value) for r in rows if r.name in SETTING_NAMES}

    def cached(self, team_id: int) -> TeamSettings | None:
        """The settings if this process read them less than SETTINGS_CACHE_SECONDS ago
        (no database access: safe on the event loop)."""
        hit = self._cache.get(team_id)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def effective(self, team_id: int) -> TeamSettings:
        """Cached for SETTINGS_CACHE_SECONDS: a change reaches every process within that time."""
        hit = self._cache.get(team_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        settings = self._resolve(self._overrides(self._rows(team_id)))
        self._cache[team_id] = (time.monotonic() + SETTINGS_CACHE_SECONDS, settings)
        return settings

    def _resolve(self, overrides: dict[str, Any]) -> TeamSettings:
        try:
            return TeamSettings.model_validate({**self.defaults.model_dump(), **overrides})
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            name = str(error["loc"][0]) if error["loc"] else None
            raise InvalidRequest(f"{name}: {error['msg']}" if name else error["msg"], param=name) from None

    def view(self, team_id: int) -> SettingsView:
        rows = self._rows(team_id)
        overrides = self._overrides(rows)
        updated = max((aware_utc(r.updated_at) for r in rows if r.name in overrides), default=None)
        return SettingsView(self._resolve(overrides), tuple(n for n in SETTING_NAMES if n in overrides), updated)

    def update(self, team_id: int, changes: dict[str, Any]) -> SettingsView:
        """Set the given settings; a value of None returns that setting to the server default."""
        unknown = [n for n in changes if n not in SETTING_NAMES]
        if unknown:
            raise InvalidRequest(f"unknown setting {unknown[0]!r}; settings: {', '.join(SETTING_NAMES)}", param=unknown[0])
        if not changes:
            raise InvalidRequest(f"give at least one setting: {', '.join(SETTING_NAMES)}", param=SETTING_NAMES[0])
        current = self._overrides(self._rows(team_id))
        wanted = {**current, **{k: v for k, v in changes.items() if v is not None}}
        for name, value in changes.items():
            if value is None:
                wanted.pop(name, None)
        self._resolve(wanted)  # validates before anything is written
        now = datetime.now(UTC)
        with self.db.session() as s:
            s.execute(delete(TeamSetting).where(TeamSetting.team_id == team_id, TeamSetting.name.in_(list(changes))))
            for name in changes:
                if name in wanted:
                    s.add(TeamSetting(team_id=team_id, name=name, value=json.dumps(wanted[name]), updated_at=now))
        self._cache.pop(team_id, None)
        return self.view(team_id)
