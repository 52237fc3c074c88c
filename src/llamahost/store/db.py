"""Database connection and migrations.

SQLite under the data directory by default; ``LLAMAHOST_DATABASE_URL`` points at
PostgreSQL (or another SQLite file) instead. Both run the same Alembic migrations.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, overload

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event, text
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.orm import Session, sessionmaker

from ..config import ENV_DATABASE_URL, env

if TYPE_CHECKING:
    from .crypto import MasterKey

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed 64-bit number; names llamahost's migration lock among other advisory locks.
_MIGRATION_LOCK_ID = 0x6C6C6D6867  # "llmhg"


def database_url(data_dir: Path) -> str:
    url = env(ENV_DATABASE_URL)
    if url:
        # SQLAlchemy names the psycopg 3 driver explicitly; accept the plain scheme people paste.
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url
    return f"sqlite:///{data_dir / 'llamahost.db'}"


def affected_rows(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE touched (``Session.execute`` is typed as returning a
    plain ``Result``; for DML it is a ``CursorResult``, which counts them)."""
    return cast(CursorResult[Any], result).rowcount


@overload
def aware_utc(value: datetime) -> datetime: ...
@overload
def aware_utc(value: None) -> None: ...
def aware_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes even for timezone=True columns; they were written as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def utc_now() -> datetime:
    """What a row's timestamp columns are written with: aware, in UTC."""
    return datetime.now(UTC)


def new_id(prefix: str, sep: str = "-") -> str:
    """A row's public id: ``prefix``, ``sep`` and 96 random bits in hex (unguessable, so an
    id names one row of one team and says nothing about how many others there are)."""
    return f"{prefix}{sep}{secrets.token_hex(12)}"


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self, master: MasterKey) -> None:
        """Upgrade to the newest schema. Migrations that encrypt existing rows use
        ``master`` (see ``store/keyring.py``)."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["master_key"] = master
        sqlite = self.engine.dialect.name == "sqlite"
        with self.engine.connect() as connection:
            if sqlite:
                # SQLite alters a table by copying it and dropping the original; with
                # foreign keys on, the drop would cascade into every referencing table.
                # The pragma is a no-op inside a transaction: set it before the first write.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    # Replicas starting together would otherwise race to create the same
                    # tables; the lock is released when this transaction ends.
                    connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                if cfg.attributes.get("plaintext_replaced"):
                    # The pages that held the plaintext are free pages and WAL frames now:
                    # rebuild the file and empty the WAL so no copy of it remains on disk.
                    connection.exec_driver_sql("VACUUM")
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                connection.commit()
        if cfg.attributes.get("plaintext_replaced") and not sqlite:
            log.warning(
                "existing team names, key labels and usage `user` values were encrypted; their old plaintext row "
                "versions stay in PostgreSQL's files until vacuumed: run VACUUM FULL teams, api_keys, usage_records"
            )

    def insert_if_absent(self, model, *unique: str):
        """``INSERT ... ON CONFLICT (unique) DO NOTHING`` in this database's dialect: a
        row replayed after a crash (``tenancy/journal.py``) is stored once."""
        dialect = {"postgresql": postgresql_dialect, "sqlite": sqlite_dialect}[self.engine.dialect.name]
        return dialect.insert(model).on_conflict_do_nothing(index_elements=list(unique))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the server read while the CLI writes; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL is durable against a crash of the process (a power cut may
    # lose the last commits); FULL would fsync on every commit, i.e. on every usage
    # record on a request's response path.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
