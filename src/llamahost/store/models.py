"""SQLAlchemy ORM tables. Schema changes go through Alembic migrations
(``store/migrations/versions``), never ``create_all``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    keys: Mapped[list[ApiKey]] = relationship(back_populates="team")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The visible part of the key ("llh_<key_id>_..."), safe to show and log.
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(256))
    # SHA-256 of the whole key; the key itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16), default="member")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    team: Mapped[Team] = relationship(back_populates="keys")


class RateLimit(Base):
    """A team's limits for one model (by its configured id), or its default for every
    model when ``model`` is NULL. A NULL ``rpm``/``tpm`` falls through to the team
    default, then to the server's ``[limits]``."""

    __tablename__ = "rate_limits"
    __table_args__ = (
        UniqueConstraint("team_id", "model", name="uq_rate_limits_team_model"),
        # NULLs never collide in a unique constraint, so the team default needs its own index.
        Index(
            "uq_rate_limits_team_default",
            "team_id",
            unique=True,
            sqlite_where=text("model IS NULL"),
            postgresql_where=text("model IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    model: Mapped[str | None] = mapped_column(String(128))
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UsageRecord(Base):
    """One chat request that reached the service, however it ended."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_team_created", "team_id", "created_at"),
        Index("ix_usage_records_end_user_created", "end_user", "created_at"),
        Index("ix_usage_records_created", "created_at"),
    )

    # SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL needs 64 bits for a long-lived log.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    key_id: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    # The request's ``user`` field as the client sent it ("user" is reserved in SQL).
    end_user: Mapped[str | None] = mapped_column(String(256))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    stop_reason: Mapped[str | None] = mapped_column(String(16))
