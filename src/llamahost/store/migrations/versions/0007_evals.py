"""evals, their runs and each run's items (results sealed under the team's data key)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("definition_sealed", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_evals_team_created", "evals", ["team_id", "created_at"])
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("eval_id", sa.String(40), sa.ForeignKey("evals.id", ondelete="CASCADE"), nullable=False),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spec_sealed", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_eval_runs_eval_created", "eval_runs", ["eval_id", "created_at"])
    op.create_table(
        "eval_items",
        sa.Column("run_id", sa.String(40), sa.ForeignKey("eval_runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("claimed_until", sa.DateTime(timezone=True)),
        sa.Column("generations", sa.Integer, nullable=False, server_default="0"),
        sa.Column("passes", sa.JSON),
        sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("row_sealed", sa.LargeBinary, nullable=False),
        sa.Column("result_sealed", sa.LargeBinary),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_eval_items_run_status", "eval_items", ["run_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_eval_items_run_status", "eval_items")
    op.drop_table("eval_items")
    op.drop_index("ix_eval_runs_eval_created", "eval_runs")
    op.drop_table("eval_runs")
    op.drop_index("ix_evals_team_created", "evals")
    op.drop_table("evals")
