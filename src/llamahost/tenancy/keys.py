"""Teams and API keys.

A key looks like ``llh_<key_id>_<secret>``: the key id is the visible prefix used to
find the row, the whole key's SHA-256 is what is stored. A fast hash is right here
(unlike for passwords) because the secret is 238 random bits, not something a person
chose; the constant-time comparison avoids timing leaks.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, func, select, update

from ..protocol.errors import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied
from ..store.db import Database
from ..store.db import aware_utc as _aware
from ..store.models import ApiKey, Team

KEY_PREFIX = "llh_"
_ALPHABET = string.ascii_letters + string.digits
_KEY_ID_LEN = 12
_SECRET_LEN = 40
# Writing last_used_at on every request would make every call a write; a minute's
# resolution is what an operator needs to spot an unused key.
_LAST_USED_RESOLUTION = timedelta(seconds=60)
ROLES = ("admin", "member")

_KEY_ID_PARAM = bindparam("key_id")
_AUTH_QUERY = (
    select(
        ApiKey.id, ApiKey.secret_hash, ApiKey.team_id, ApiKey.role, ApiKey.revoked_at, ApiKey.expires_at,
        ApiKey.last_used_at, Team.name.label("team_name"),
    )
    .join(Team, Team.id == ApiKey.team_id)
    .where(ApiKey.key_id == _KEY_ID_PARAM)
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's row and its team, as authentication found them."""

    key_id: str
    key_pk: int
    team_id: int
    team_name: str
    role: str


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    prefix: str
    team: str
    name: str | None
    role: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


def _now() -> datetime:
    return datetime.now(UTC)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- teams ---------------------------------------------------------------

    def ensure_team(self, name: str) -> tuple[int, bool]:
        """Return (team id, created)."""
        name = name.strip()
        if not name or len(name) > 128:
            raise InvalidRequest("team name must be 1 to 128 characters", param="team")
        with self.db.session() as s:
            team = s.scalar(select(Team).where(Team.name == name))
            if team is not None:
                return team.id, False
            team = Team(name=name, created_at=_now())
            s.add(team)
            s.flush()
            return team.id, True

    def list_teams(self) -> list[tuple[str, datetime, int]]:
        with self.db.session() as s:
            rows = s.execute(
                select(Team.name, Team.created_at, func.count(ApiKey.id))
                .outerjoin(ApiKey, (ApiKey.team_id == Team.id) & ApiKey.revoked_at.is_(None))
                .group_by(Team.id)
                .order_by(Team.name)
            ).all()
            return [(name, _aware(created), count) for name, created, count in rows]

    # --- keys ------------------------------------------------------------------

    def count_keys(self) -> int:
        with self.db.session() as s:
            return s.scalar(select(func.count(ApiKey.id))) or 0

    def create_key(
        self,
        team: str,
        *,
        name: str | None = None,
        role: str = "member",
        expires_in: timedelta | None = None,
    ) -> tuple[str, KeyInfo]:
        """Create a key; returns (the secret key, shown once; its info)."""
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
        team_id, _ = self.ensure_team(team)
        key_id = _random(_KEY_ID_LEN)
        key = f"{KEY_PREFIX}{key_id}_{_random(_SECRET_LEN)}"
        now = _now()
        row = ApiKey(
            key_id=key_id,
            team_id=team_id,
            name=name,
            secret_hash=_hash(key),
            role=role,
            created_at=now,
            expires_at=now + expires_in if expires_in else None,
        )
        with self.db.session() as s:
            s.add(row)
        return key, self._info(row, team.strip())

    def list_keys(self, team: str | None = None) -> list[KeyInfo]:
        with self.db.session() as s:
            query = select(ApiKey, Team.name).join(Team).order_by(ApiKey.created_at)
            if team is not None:
                query = query.where(Team.name == team)
            return [self._info(key, team_name) for key, team_name in s.execute(query).all()]

    def revoke_key(self, key_id: str, *, team: str | None = None, admin_keys: bool = True) -> KeyInfo:
        """Revoke a key by id, prefix or whole key. ``team`` confines it to that team's keys
        (another team's key is "not found", not "forbidden": its existence is not told);
        ``admin_keys=False`` refuses admin keys (a member must not lock out its admins)."""
        key_id = key_id.removeprefix(KEY_PREFIX).split("_", 1)[0]
        with self.db.session() as s:
            query = select(ApiKey, Team.name).join(Team).where(ApiKey.key_id == key_id)
            if team is not None:
                query = query.where(Team.name == team)
            found = s.execute(query).first()
            if found is None:
                where = f" in team {team!r}" if team is not None else ""
                raise NotFound(f"no API key with id {key_id!r}{where}", param="key_id")
            key, team_name = found
            if key.role == "admin" and not admin_keys:
                raise PermissionDenied("only an admin key can revoke an admin key", param="key_id")
            if key.revoked_at is None:
                key.revoked_at = _now()
            return self._info(key, team_name)

    def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise AuthenticationFailed(
                "missing API key: send it as 'Authorization: Bearer <key>'", param="authorization"
            )
        invalid = AuthenticationFailed("invalid API key", param="authorization")
        if not key.startswith(KEY_PREFIX):
            raise invalid
        key_id = key[len(KEY_PREFIX) :].split("_", 1)[0]
        now = _now()
        # A Core query on a plain connection: this runs on every request, and the ORM's
        # unit of work costs more than the lookup itself.
        with self.db.engine.begin() as connection:
            row = connection.execute(_AUTH_QUERY, {"key_id": key_id}).first()
            if row is None or not hmac.compare_digest(row.secret_hash, _hash(key)):
                raise invalid
            if row.revoked_at is not None:
                raise AuthenticationFailed("this API key has been revoked", param="authorization")
            expires_at = _aware(row.expires_at)
            if expires_at is not None and expires_at <= now:
                raise AuthenticationFailed("this API key has expired", param="authorization")
            last_used = _aware(row.last_used_at)
            if last_used is None or now - last_used >= _LAST_USED_RESOLUTION:
                connection.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
            return Principal(key_id=key_id, key_pk=row.id, team_id=row.team_id, team_name=row.team_name, role=row.role)

    @staticmethod
    def _info(row: ApiKey, team_name: str) -> KeyInfo:
        return KeyInfo(
            key_id=row.key_id,
            prefix=f"{KEY_PREFIX}{row.key_id}",
            team=team_name,
            name=row.name,
            role=row.role,
            created_at=_aware(row.created_at),
            last_used_at=_aware(row.last_used_at),
            expires_at=_aware(row.expires_at),
            revoked_at=_aware(row.revoked_at),
        )
