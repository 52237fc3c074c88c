"""Teams. A team's name is PII: its row holds the name encrypted under the team's own
data key, and a blind index (keyed hash) to find the row by name. This process keeps
the names it has opened for NAME_CACHE_SECONDS (a name never changes, but a team
deleted by another process must stop showing its name).

Deleting a team removes its API keys, limits, settings and stored content and
crypto-shreds its data keys; the row stays as a tombstone without a name, because
usage records (metadata, kept for accounting) point at it. What features above this
layer keep for a team (uploaded files) is removed by the hooks they add to
``TeamStore.on_delete``, run once the keys are shredded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import InvalidRequest, NotFound
from ..store.db import Database, affected_rows, aware_utc
from ..store.keyring import Keyring, Sealed, seal_with
from ..store.models import ApiKey, RateLimit, StoredRequest, Team, TeamSetting

MAX_NAME = 128
NAME_CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class TeamInfo:
    id: int
    name: str
    created_at: datetime
    active_keys: int


@dataclass(frozen=True)
class TeamDeletion:
    team: str
    api_keys: int
    stored_requests: int
    data_keys: int
    files: int = 0  # uploaded files (the files slice's hook)


def deleted_name(team_id: int) -> str:
    return f"(deleted team {team_id})"


class TeamStore:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self.db = db
        self.keyring = keyring
        self._names: dict[int, tuple[float, str | None]] = {}  # None: deleted
        # Run with the team id after a deletion; each returns what it removed by kind
        # ({"files": 3}). Features above tenancy (files) register here.
        self.on_delete: list[Callable[[int], dict[str, int]]] = []

    @staticmethod
    def clean(name: str, param: str = "team") -> str:
        name = name.strip()
        if not name or len(name) > MAX_NAME:
            raise InvalidRequest(f"team name must be 1 to {MAX_NAME} characters", param=param)
        return name

    def find(self, name: str) -> int | None:
        """The live team named ``name``, by its blind index."""
        with self.db.session() as s:
            return s.scalar(select(Team.id).where(Team.name_index == self.keyring.team_name_index(name.strip())))

    def require(self, name: str) -> int:
        team_id = self.find(name)
        if team_id is None:
            raise NotFound(f"no team named {name!r}", param="team")
        return team_id

    def ensure(self, name: str) -> tuple[int, bool]:
        """(team id, created)."""
        name = self.clean(name)
        index = self.keyring.team_name_index(name)
        try:
            with self.db.session() as s:
                found = s.scalar(select(Team.id).where(Team.name_index == index))
                if found is not None:
                    return found, False
                team = Team(name_index=index, created_at=datetime.now(UTC))
                s.add(team)
                s.flush()
                key = self.keyring.add_team_key(s, team.id)
                team.name_sealed = seal_with(key, name, Sealed.team_name(team.id))
                team_id = team.id
        except IntegrityError:  # another process created it between our lookup and insert
            found = self.find(name)
            if found is None:
                raise
            return found, False
        self._names[team_id] = (time.monotonic() + NAME_CACHE_SECONDS, name)
        return team_id, True

    def _lookup(self, team_id: int) -> str | None:
        """The team's name, None if it was deleted."""
        cached = self._names.get(team_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        with self.db.session() as s:
            sealed = s.scalar(select(Team.name_sealed).where(Team.id == team_id))
        name = None if sealed is None else self.keyring.open(team_id, sealed, Sealed.team_name(team_id))
        self._names[team_id] = (time.monotonic() + NAME_CACHE_SECONDS, name)
        return name

    def name(self, team_id: int) -> str:
        name = self._lookup(team_id)
        return deleted_name(team_id) if name is None else name

    def cached_deleted(self, team_id: int) -> bool | None:
        """``is_deleted`` from the name cache alone; None when it would ask the database."""
        cached = self._names.get(team_id)
        if cached is None or cached[0] <= time.monotonic():
            return None
        return cached[1] is None

    def is_deleted(self, team_id: int) -> bool:
        return self._lookup(team_id) is None

    def list(self, team_id: int | None = None) -> list[TeamInfo]:
        """Live teams (only ``team_id`` if given), by name."""
        with self.db.session() as s:
            query = (
                select(Team.id, Team.created_at, func.count(ApiKey.id))
                .outerjoin(ApiKey, (ApiKey.team_id == Team.id) & ApiKey.revoked_at.is_(None))
                .where(Team.deleted_at.is_(None))
                .group_by(Team.id)
            )
            if team_id is not None:
                query = query.where(Team.id == team_id)
            rows = s.execute(query).all()
        teams = [TeamInfo(id, self.name(id), aware_utc(created), count) for id, created, count in rows]
        return sorted(teams, key=lambda t: t.name)

    def delete(self, name: str) -> TeamDeletion:
        """Delete the team's keys, limits, settings and content, and shred its data keys."""
        team_id = self.require(name)
        with self.db.session() as s:
            stored = affected_rows(s.execute(delete(StoredRequest).where(StoredRequest.team_id == team_id)))
            api_keys = affected_rows(s.execute(delete(ApiKey).where(ApiKey.team_id == team_id)))
            s.execute(delete(RateLimit).where(RateLimit.team_id == team_id))
            s.execute(delete(TeamSetting).where(TeamSetting.team_id == team_id))
            data_keys = self.keyring.shred(s, team_id)
            s.execute(
                update(Team)
                .where(Team.id == team_id)
                .values(deleted_at=datetime.now(UTC), name_index=None, name_sealed=None)
            )
        self._names[team_id] = (time.monotonic() + NAME_CACHE_SECONDS, None)
        removed: dict[str, int] = {}
        for hook in self.on_delete:
            removed.update(hook(team_id))
        return TeamDeletion(name.strip(), api_keys, stored, data_keys, files=removed.get("files", 0))
