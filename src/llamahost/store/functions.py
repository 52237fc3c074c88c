"""SQL functions that SQLite and PostgreSQL spell differently, as SQLAlchemy constructs
compiled per dialect (SQLAlchemy has no portable "seconds since the epoch")."""

from __future__ import annotations

from sqlalchemy import BigInteger
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class epoch_seconds(FunctionElement[int]):  # noqa: N801 - named like the SQL functions it stands for
    """Whole seconds since 1970-01-01 UTC of a UTC timestamp column (floored)."""

    type = BigInteger()
    inherit_cache = True


@compiles(epoch_seconds, "sqlite")
def _epoch_seconds_sqlite(element, compiler, **kw) -> str:
    # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (written as UTC here).
    return f"CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


@compiles(epoch_seconds, "postgresql")
def _epoch_seconds_postgresql(element, compiler, **kw) -> str:
    # FLOOR: a plain cast to BIGINT would round 12:00:59.7 up into the next minute.
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)})) AS BIGINT)"
