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
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BindParameter, bindparam, func, select, update

from ..errors import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied
from ..store.db import Database
from ..store.db import aware_utc as _aware
from ..store.keyring import Keyring, Sealed
from ..store.models import ApiKey
from .scope import OPERATOR, ROLES, Scope
from .teams import TeamInfo, TeamStore

KEY_PREFIX = "llh_"
_ALPHABET = string.ascii_letters + string.digits
_KEY_ID_LEN = 12
_SECRET_LEN = 40
# Writing last_used_at on every request would make every call a write; a minute's
# resolution is what an operator needs to spot an unused key.
_LAST_USED_RESOLUTION = timedelta(seconds=60)
# How long this process trusts a key it has checked before asking the database again:
# every request would otherwise pay a thread hop and a query (a fifth of a proxied
# request's cost). A revocation or team deletion through this process applies at once;
# one made elsewhere (the CLI, another replica) within this time.
AUTH_CACHE_SECONDS = 1.0
_AUTH_CACHE_MAX = 100_000

_KEY_ID_PARAM: BindParameter[int] = bindparam("key_id")
_AUTH_QUERY = select(
    ApiKey.id, ApiKey.secret_hash, ApiKey.team_id, ApiKey.role, ApiKey.revoked_at, ApiKey.expires_at,
    ApiKey.last_used_at,
).where(ApiKey.key_id == _KEY_ID_PARAM)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's row and its team, as authentication found them."""

    key_id: str
    key_pk: int
    team_id: int
    team_name: str
    role: str

    @property
    def scope(self) -> Scope:
        return Scope.of(self)


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
    def __init__(self, db: Database, keyring: Keyring, teams: TeamStore) -> None:
        self.db = db
        self.keyring = keyring
        self.teams = teams
        # Keys this process authenticated recently: hash of the whole key -> (valid until,
        # principal, key expiry). Revoking through this process forgets at once.
        self._recent: dict[str, tuple[float, Principal, datetime | None]] = {}

    # --- teams (kept here for the callers that manage both) ------------------------------

    def ensure_team(self, name: str) -> tuple[int, bool]:
        """Return (team id, created)."""
        return self.teams.ensure(name)

    def list_teams(self, scope: Scope | None = None) -> list[TeamInfo]:
        return self.teams.list((scope or Scope.operator()).team_id)

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
            name_sealed=self.keyring.seal(team_id, name, Sealed.key_label(key_id)) if name is not None else None,
            secret_hash=_hash(key),
            role=role,
            created_at=now,
            expires_at=now + expires_in if expires_in else None,
        )
        with self.db.session() as s:
            s.add(row)
        return key, self._info(row, team.strip(), name)

    def list_keys(self, scope: Scope, team: str | None = None) -> list[KeyInfo]:
        team_id = scope.team_filter(self.teams, team)
        with self.db.session() as s:
            query = select(ApiKey).order_by(ApiKey.created_at)
            if team_id is not None:
                query = query.where(ApiKey.team_id == team_id)
            rows = s.scalars(query).all()
        return [self._info(key, self.teams.name(key.team_id), self._label(key)) for key in rows]

    def revoke_key(self, key_id: str, scope: Scope | None = None, *, caller_role: str = OPERATOR) -> KeyInfo:
        """Revoke a key by id, prefix or whole key. A key outside ``scope`` is "not found",
        not "forbidden" (its existence is not told); a key of a higher role than the
        caller's is refused (a member must not lock out its admins, nor an admin the operators)."""
        scope = scope or Scope.operator()
        key_id = key_id.removeprefix(KEY_PREFIX).split("_", 1)[0]
        self.forget(key_id)
        with self.db.session() as s:
            key = s.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
            if key is None or (scope.team_id is not None and key.team_id != scope.team_id):
                raise NotFound(f"no API key with id {key_id!r}", param="key_id")
            if ROLES.index(key.role) < ROLES.index(caller_role):  # ROLES runs from most to least powerful
                raise PermissionDenied(f"only an {key.role} key can revoke an {key.role} key", param="key_id")
            if key.revoked_at is None:
                key.revoked_at = _now()
        return self._info(key, self.teams.name(key.team_id), self._label(key))

    def recently_authenticated(self, key: str | None) -> Principal | None:
        """The principal of ``key`` if ``authenticate`` would answer it from its caches
        alone (no database), else None. Cheap enough for the event loop: the request
        path skips a thread hop, which on a busy host costs milliseconds of latency."""
        if not key:
            return None
        recent = self._recent.get(_hash(key))
        if recent is None or recent[0] <= time.monotonic():
            return None
        _, principal, expires_at = recent
        deleted = self.teams.cached_deleted(principal.team_id)
        if deleted is None or deleted or (expires_at is not None and expires_at <= _now()):
            return None  # authenticate decides (and raises)
        return principal

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
        digest = _hash(key)
        recent = self._recent.get(digest)
        if recent is not None and recent[0] > time.monotonic():
            _, principal, expires_at = recent
            if (expires_at is None or expires_at > now) and not self.teams.is_deleted(principal.team_id):
                return principal
        # A Core query on a plain connection: this runs on every request the cache does
        # not answer, and the ORM's unit of work costs more than the lookup itself.
        with self.db.engine.begin() as connection:
            row = connection.execute(_AUTH_QUERY, {"key_id": key_id}).first()
            if row is None or not hmac.compare_digest(row.secret_hash, digest):
                raise invalid
            if row.revoked_at is not None:
                raise AuthenticationFailed("this API key has been revoked", param="authorization")
            expires_at = _aware(row.expires_at)
            if expires_at is not None and expires_at <= now:
                raise AuthenticationFailed("this API key has expired", param="authorization")
            last_used = _aware(row.last_used_at)
            if last_used is None or now - last_used >= _LAST_USED_RESOLUTION:
                connection.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        # The team's name is encrypted; the store keeps the names it has opened.
        team_name = self.teams.name(row.team_id)
        principal = Principal(key_id=key_id, key_pk=row.id, team_id=row.team_id, team_name=team_name, role=row.role)
        if len(self._recent) > _AUTH_CACHE_MAX:
            self._recent.clear()
        self._recent[digest] = (time.monotonic() + AUTH_CACHE_SECONDS, principal, expires_at)
        return principal

    def forget(self, key_id: str | None = None) -> None:
        """Drop recently authenticated keys (one key id, or all) from the cache."""
        for digest, (_, principal, _) in list(self._recent.items()):
            if key_id is None or principal.key_id == key_id:
                self._recent.pop(digest, None)

    def _label(self, row: ApiKey) -> str | None:
        if row.name_sealed is None:
            return None
        return self.keyring.open(row.team_id, row.name_sealed, Sealed.key_label(row.key_id))

    @staticmethod
    def _info(row: ApiKey, team_name: str, label: str | None) -> KeyInfo:
        return KeyInfo(
            key_id=row.key_id,
            prefix=f"{KEY_PREFIX}{row.key_id}",
            team=team_name,
            name=label,
            role=row.role,
            created_at=_aware(row.created_at),
            last_used_at=_aware(row.last_used_at),
            expires_at=_aware(row.expires_at),
            revoked_at=_aware(row.revoked_at),
        )
