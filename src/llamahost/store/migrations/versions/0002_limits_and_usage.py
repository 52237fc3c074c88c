"""per-team rate limits and usage records

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model", sa.String(128)),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.BigInteger),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("team_id", "model", name="uq_rate_limits_team_model"),
    )
    op.create_index(
        "uq_rate_limits_team_default",
        "rate_limits",
        ["team_id"],
        unique=True,
        sqlite_where=sa.text("model IS NULL"),
        postgresql_where=sa.text("model IS NULL"),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("end_user", sa.String(256)),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("stop_reason", sa.String(16)),
    )
    op.create_index("ix_usage_records_team_created", "usage_records", ["team_id", "created_at"])
    op.create_index("ix_usage_records_end_user_created", "usage_records", ["end_user", "created_at"])
    op.create_index("ix_usage_records_created", "usage_records", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_created", "usage_records")
    op.drop_index("ix_usage_records_end_user_created", "usage_records")
    op.drop_index("ix_usage_records_team_created", "usage_records")
    op.drop_table("usage_records")
    op.drop_index("uq_rate_limits_team_default", "rate_limits")
    op.drop_table("rate_limits")
