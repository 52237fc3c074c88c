"""Who may see which team's data: the one place admin access is scoped by team.

- An **operator** key (and the CLI, which runs on the server's host with its database
  and master key) sees every team.
- A team's **admin** key sees and administers its own team only: its keys, limits,
  settings, usage and stored content. Any other team is "not found" (404), whether or
  not it exists, so its name does not leak either.
- A **member** key calls the inference API only (the admin API answers 403).

Every store method that reads team data takes a ``Scope`` and builds its team filter
from ``Scope.team_filter``, instead of each caller remembering to filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import and_, false, or_

from ..errors import NotFound, PermissionDenied

if TYPE_CHECKING:
    from ..store.keyring import Keyring
    from .teams import TeamStore

OPERATOR, ADMIN, MEMBER = "operator", "admin", "member"
ROLES = (OPERATOR, ADMIN, MEMBER)


class Caller(Protocol):
    """An authenticated key as a scope sees it (``keys.Principal`` has this shape)."""

    @property
    def role(self) -> str: ...

    @property
    def team_id(self) -> int: ...


@dataclass(frozen=True)
class Scope:
    team_id: int | None  # None: every team

    @classmethod
    def operator(cls) -> Scope:
        return cls(None)

    @classmethod
    def of(cls, principal: Caller) -> Scope:
        return cls(None) if principal.role == OPERATOR else cls(principal.team_id)

    @property
    def is_operator(self) -> bool:
        return self.team_id is None

    def require_operator(self, what: str) -> None:
        if not self.is_operator:
            raise PermissionDenied(f"{what} needs an operator key; a team admin key administers its own team only",
                                   param="authorization")

    def team(self, teams: TeamStore, name: str, param: str = "team") -> int:
        """The id of the team named ``name``, if this scope may see it; else 404."""
        team_id = teams.find(name)
        if team_id is None or (self.team_id is not None and team_id != self.team_id):
            raise NotFound(f"no team named {name!r}", param=param)
        return team_id

    def team_filter(self, teams: TeamStore, name: str | None) -> int | None:
        """For listings: the named team (if visible), else this scope's own team; None
        means every team (operator scope, no name given)."""
        if name is not None:
            return self.team(teams, name)
        return self.team_id


def user_filter(keyring: Keyring, team_ids: list[int], user: str, team_column, index_column):
    """Rows of these teams whose ``user`` is ``user``: its blind index differs per team,
    so it is one (team, index) pair per team."""
    pairs = [and_(team_column == team_id, index_column == keyring.user_index(team_id, user)) for team_id in team_ids]
    return or_(*pairs) if pairs else false()
