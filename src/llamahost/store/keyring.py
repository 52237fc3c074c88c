"""The keys of the envelope scheme, as stored in the ``encryption_keys`` table, and what
this process has unwrapped of them.

- Each team has data keys (versions 1, 2, ...; the highest seals new records, older
  ones still open what they sealed). Deleting them crypto-shreds the team's content.
- Encrypted values that must still be found by equality get a blind index (a keyed
  hash) beside them. Team names use one server-wide **index key**: a random key wrapped
  by the master like the data keys (not derived from the master, so rotating the master
  re-wraps it instead of invalidating every index). ``user`` values use a key derived
  from the team's first data key: one end user's records in two teams cannot be linked,
  and shredding the team's keys shreds the index too.
- The master key only wraps keys: rotating it rewrites the wrapped keys, never content.
- Two more per-deployment keys are derived from the index key (so they outlive a master
  rotation): the usage journal's key (``journal_key``: the end user's ``user`` value
  is written encrypted to the crash journal, ``tenancy/journal.py``) and the key of the
  request log's hashed ``user`` value (``log_user_hash``, ``[server] log_users``).

Unwrapped keys are cached for ``KEY_CACHE_SECONDS``, then their row is read again: a
team deleted by another process is forgotten (its keys shredded in memory too) within
that time. The active version of a team's key is re-read every
``ACTIVE_KEY_CACHE_SECONDS``, so a data key rotation reaches every process within it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, func, inspect, select, update
from sqlalchemy.orm import Session

from .crypto import CryptoError, DataKey, MasterKey, blind_index, key_version, open_sealed, subkey
from .db import Database, affected_rows, database_url
from .models import EncryptionKey

log = logging.getLogger(__name__)

CONTENT = "content"
INDEX = "index"
INDEX_TEAM_ID = 0  # the index key's team id in its wrapping context (it has no team)
ACTIVE_KEY_CACHE_SECONDS = 5.0
KEY_CACHE_SECONDS = 60.0


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Sealed:
    """Where an encrypted value lives, which its ciphertext is bound to."""

    table: str
    record: object
    field: str

    @classmethod
    def team_name(cls, team_id: int) -> Sealed:
        return cls("teams", team_id, "name")

    @classmethod
    def key_label(cls, key_id: str) -> Sealed:
        return cls("api_keys", key_id, "name")

    @classmethod
    def usage_user(cls, record_id: str) -> Sealed:
        return cls("usage_records", record_id, "user")


def seal_with(key: DataKey, value: str | bytes, where: Sealed) -> bytes:
    return key.seal(value, where.table, where.record, where.field)


def team_name_index(index_key: bytes, name: str) -> str:
    return blind_index(subkey(index_key, "team-name"), name, length=64)


def user_index_key(first_data_key: DataKey) -> bytes:
    return subkey(first_data_key.key, "user-index", first_data_key.team_id)


def user_index(first_data_key: DataKey, user: str) -> str:
    return blind_index(user_index_key(first_data_key), user)


class Keyring:
    def __init__(self, db: Database, master: MasterKey, index_key: bytes) -> None:
        self.db = db
        self.master = master
        self._team_name_key = subkey(index_key, "team-name")
        self.journal_key = DataKey(INDEX_TEAM_ID, 0, subkey(index_key, "usage-journal"))
        self._log_user_key = subkey(index_key, "log-user")
        self._team_opaque_key = subkey(index_key, "team-opaque")
        self._user_keys: dict[int, tuple[DataKey, bytes]] = {}
        self._keys: dict[tuple[int, int], tuple[float, DataKey]] = {}
        self._active: dict[int, tuple[float, int]] = {}
        # The usage writer's thread and the request threadpool both unwrap keys.
        self._lock = threading.Lock()

    # --- opening --------------------------------------------------------------------

    @classmethod
    def load(cls, db: Database, master: MasterKey) -> Keyring:
        """Unwrap the index key: this is where a wrong master key is caught, at start."""
        with db.session() as s:
            row = s.scalar(select(EncryptionKey).where(EncryptionKey.team_id.is_(None), EncryptionKey.purpose == INDEX))
        if row is None:
            raise CryptoError("the database has no index key: its migrations did not complete")
        return cls(db, master, _unwrap(master, row))

    # --- blind indexes ---------------------------------------------------------------

    def team_name_index(self, name: str) -> str:
        return blind_index(self._team_name_key, name, length=64)  # = team_name_index(index key, name)

    def user_index(self, team_id: int, user: str) -> str:
        """= ``user_index(the team's data key v1, user)``, with the team's subkey cached."""
        first = self.data_key(team_id, 1)
        cached = self._user_keys.get(team_id)
        if cached is None or cached[0] is not first:
            cached = self._user_keys[team_id] = (first, user_index_key(first))
        return blind_index(cached[1], user)

    def log_user_hash(self, user: str) -> str:
        """The request log's name for an end user: stable for this deployment (an operator
        can follow one user's requests), says nothing about the value without the key."""
        return blind_index(self._log_user_key, user, length=16)

    def team_opaque_id(self, team_id: int) -> str:
        """A team's name in identifiers others may see (tuned model ids: OpenAI puts the
        organization there): stable for this deployment, neither the team's name nor its
        row number, and says nothing about either without the key."""
        return "t" + blind_index(self._team_opaque_key, team_id, length=11)

    # --- data keys --------------------------------------------------------------------

    def data_key(self, team_id: int, version: int) -> DataKey:
        cached = self._keys.get((team_id, version))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        with self.db.session() as s:
            row = s.scalar(
                select(EncryptionKey).where(
                    EncryptionKey.team_id == team_id, EncryptionKey.purpose == CONTENT, EncryptionKey.version == version
                )
            )
        if row is None:
            self._keys.pop((team_id, version), None)
            raise CryptoError(
                f"team {team_id} has no data key v{version}: the team was deleted (its content crypto-shredded) "
                "or the ciphertext was moved here from elsewhere"
            )
        unwrapped = _unwrap(self.master, row)
        if cached is not None and cached[1].key == unwrapped:
            key = cached[1]  # the same key: keep the object (and what is derived from it)
        else:
            key = DataKey(team_id, version, unwrapped)
        with self._lock:
            self._keys[(team_id, version)] = (time.monotonic() + KEY_CACHE_SECONDS, key)
        return key

    def active_key(self, team_id: int) -> DataKey:
        cached = self._active.get(team_id)
        if cached is not None and cached[0] > time.monotonic():
            return self.data_key(team_id, cached[1])
        with self.db.session() as s:
            version = s.scalar(
                select(func.max(EncryptionKey.version)).where(
                    EncryptionKey.team_id == team_id, EncryptionKey.purpose == CONTENT
                )
            )
        if version is None:
            raise CryptoError(f"team {team_id} has no data key: it was deleted")
        self._active[team_id] = (time.monotonic() + ACTIVE_KEY_CACHE_SECONDS, version)
        return self.data_key(team_id, version)

    def seal(self, team_id: int, value: str | bytes, where: Sealed) -> bytes:
        return seal_with(self.active_key(team_id), value, where)

    def open(self, team_id: int, blob: bytes, where: Sealed) -> str:
        """The plaintext, or CryptoError (never another record's or team's plaintext)."""
        key = self.data_key(team_id, key_version(blob))
        try:
            return open_sealed(key, blob, where.table, where.record, where.field).decode()
        except CryptoError as exc:
            raise CryptoError(f"{where.table} {where.record} {where.field}: {exc}") from None

    def add_team_key(self, session: Session, team_id: int) -> DataKey:
        """Create the team's next data key version in ``session``'s transaction. Not cached
        here: the transaction may still roll back (and SQLite reuse the team id)."""
        self._check_master_current(session)
        version = 1 + (
            session.scalar(
                select(func.max(EncryptionKey.version)).where(
                    EncryptionKey.team_id == team_id, EncryptionKey.purpose == CONTENT
                )
            )
            or 0
        )
        key = DataKey.generate(team_id, version)
        session.add(
            EncryptionKey(
                team_id=team_id,
                purpose=CONTENT,
                version=version,
                wrapped=self.master.wrap(key.key, team_id, version),
                master_key_id=self.master.key_id,
                created_at=_now(),
            )
        )
        session.flush()
        return key

    def rotate_team_key(self, team_id: int) -> int:
        """A new data key version for the team's new records; the old ones stay to open old records."""
        with self.db.session() as s:
            version = self.add_team_key(s, team_id).version
        self._active.pop(team_id, None)  # this process switches at once, others within the cache time
        return version

    def shred(self, session: Session, team_id: int) -> int:
        """Delete every data key of the team (in ``session``'s transaction): whatever they
        sealed can never be opened again, wherever copies of it are."""
        deleted = affected_rows(session.execute(delete(EncryptionKey).where(EncryptionKey.team_id == team_id)))
        with self._lock:
            for cached in [k for k in self._keys if k[0] == team_id]:
                del self._keys[cached]
            self._active.pop(team_id, None)
            self._user_keys.pop(team_id, None)
        return deleted

    def key_versions(self, team_id: int) -> list[int]:
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(EncryptionKey.version)
                    .where(EncryptionKey.team_id == team_id, EncryptionKey.purpose == CONTENT)
                    .order_by(EncryptionKey.version)
                )
            )

    def _check_master_current(self, session: Session) -> None:
        # A server started before `rotate-master` still holds the old key: keys it wrapped
        # now would open only with the old key. Refuse instead of mixing masters.
        current = session.scalar(
            select(EncryptionKey.master_key_id).where(EncryptionKey.team_id.is_(None), EncryptionKey.purpose == INDEX)
        )
        if current is not None and current != self.master.key_id:
            raise CryptoError(
                f"the master key was rotated (the database's keys are wrapped by master key {current}, this process "
                f"has {self.master.key_id}): restart this process with the current master key"
            )

    # --- master rotation ------------------------------------------------------------------

    def rotate_master(self, new: MasterKey) -> int:
        """Re-wrap every key under ``new`` in one transaction; content is not touched.
        Returns the number of keys re-wrapped."""
        with self.db.session() as s:
            rows = s.scalars(select(EncryptionKey).with_for_update()).all()
            for row in rows:
                key = _unwrap(self.master, row)
                team_id = INDEX_TEAM_ID if row.team_id is None else row.team_id
                s.execute(
                    update(EncryptionKey)
                    .where(EncryptionKey.id == row.id)
                    .values(
                        wrapped=new.wrap(key, team_id, row.version, _wrap_purpose(row.purpose)),
                        master_key_id=new.key_id,
                    )
                )
        self.master = new
        return len(rows)


def _wrap_purpose(purpose: str) -> str:
    return "data-key" if purpose == CONTENT else "index-key"


def wrap_index_key(master: MasterKey, key: bytes) -> bytes:
    return master.wrap(key, INDEX_TEAM_ID, 1, _wrap_purpose(INDEX))


def _unwrap(master: MasterKey, row: EncryptionKey) -> bytes:
    team_id = INDEX_TEAM_ID if row.team_id is None else row.team_id
    what = "the index key" if row.team_id is None else f"data key v{row.version} of team {row.team_id}"
    if row.master_key_id != master.key_id:
        raise CryptoError(
            f"wrong master key: {what} is wrapped by master key {row.master_key_id}, and the one given "
            f"(LLAMAHOST_MASTER_KEY or the key file) is {master.key_id}"
        )
    try:
        return master.unwrap(row.wrapped, team_id, row.version, _wrap_purpose(row.purpose))
    except CryptoError:
        raise CryptoError(f"{what} does not unwrap under master key {master.key_id}: its row was tampered with") from None


def _has_keys(db: Database) -> bool:
    if not inspect(db.engine).has_table("encryption_keys"):
        return False
    with db.session() as s:
        return (s.scalar(select(func.count(EncryptionKey.id))) or 0) > 0


def open_store(data_dir: Path) -> tuple[Database, Keyring]:
    """The database, migrated, and its keyring; every process (server or CLI) starts here.

    The master key comes from ``LLAMAHOST_MASTER_KEY``, else the key file. For the
    embedded SQLite default the key file is generated on the first start; a database
    with keys and no key to open them, or PostgreSQL with no key given, is an error
    (replicas with a key each would each wrap keys the others cannot open)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(database_url(data_dir))
    master = MasterKey.configured(data_dir)
    if master is None:
        path = MasterKey.key_file(data_dir)
        if _has_keys(db):
            raise CryptoError(
                f"no master key: this database's keys are encrypted, and neither LLAMAHOST_MASTER_KEY nor the key "
                f"file {path} is there; restore the key file from your backup or set LLAMAHOST_MASTER_KEY"
            )
        if db.engine.dialect.name != "sqlite":
            raise CryptoError(
                f"LLAMAHOST_DATABASE_URL is not SQLite and there is no master key (LLAMAHOST_MASTER_KEY is not set, "
                f"no key file at {path}): set LLAMAHOST_MASTER_KEY (or LLAMAHOST_MASTER_KEY_FILE), the same key on "
                "every replica; make one with `openssl rand -hex 32`"
            )
        master = MasterKey.create_file(path)
    db.migrate(master)
    try:
        return db, Keyring.load(db, master)
    except CryptoError as exc:
        pending = rotation_pending_file(MasterKey.key_file(data_dir))
        if pending.exists():
            raise CryptoError(
                f"{exc}. A master key rotation was interrupted after the database switched keys: the current key is "
                f"in {pending}; move it to {MasterKey.key_file(data_dir)}"
            ) from None
        raise


def rotation_pending_file(key_file: Path) -> Path:
    """Where ``keys rotate-master`` writes the new key before the database switches to it."""
    return key_file.with_name(key_file.name + ".new")
