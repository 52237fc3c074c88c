"""durable background jobs (the job loop's queue)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE")),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("dedupe_key", sa.String(160)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("worker_id", sa.String(128)),
        sa.Column("leased_until", sa.DateTime(timezone=True)),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_jobs_status_run_after", "jobs", ["status", "run_after"])
    op.create_index("ix_jobs_team_created", "jobs", ["team_id", "created_at"])
    op.create_index("ix_jobs_created", "jobs", ["created_at"])
    op.create_index("uq_jobs_dedupe_key", "jobs", ["dedupe_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_jobs_dedupe_key", "jobs")
    op.drop_index("ix_jobs_created", "jobs")
    op.drop_index("ix_jobs_team_created", "jobs")
    op.drop_index("ix_jobs_status_run_after", "jobs")
    op.drop_table("jobs")
