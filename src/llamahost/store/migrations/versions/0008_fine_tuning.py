"""fine-tuning jobs, their events and checkpoints, and the tuned models they made
(events, metrics, metadata and errors sealed under the team's data key; adapters are
sealed chunks in the files backend)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

MODEL_ID = 320  # ft:<base (128)>:<team>:<suffix (40)>:<job id>:ckpt-step-<n>


def upgrade() -> None:
    op.create_table(
        "fine_tuning_jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("queue_job_id", sa.String(32)),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("training_file", sa.String(40), nullable=False),
        sa.Column("validation_file", sa.String(40)),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("suffix", sa.String(64)),
        sa.Column("fine_tuned_model", sa.String(MODEL_ID)),
        sa.Column("trained_tokens", sa.BigInteger),
        sa.Column("error_sealed", sa.LargeBinary),
        sa.Column("metadata_sealed", sa.LargeBinary),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("estimated_finish", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_fine_tuning_jobs_team_created", "fine_tuning_jobs", ["team_id", "created_at"])
    op.create_index("ix_fine_tuning_jobs_team_status", "fine_tuning_jobs", ["team_id", "status"])
    op.create_table(
        "fine_tuning_events",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("step", sa.Integer),
        sa.Column("body_sealed", sa.LargeBinary, nullable=False),
    )
    op.create_index("uq_fine_tuning_events_job_seq", "fine_tuning_events", ["job_id", "seq"], unique=True)
    op.create_table(
        "fine_tuning_checkpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("trained_tokens", sa.BigInteger, nullable=False),
        sa.Column("model_id", sa.String(MODEL_ID), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metrics_sealed", sa.LargeBinary, nullable=False),
        sa.Column("gguf_blob", sa.String(40)),
        sa.Column("gguf_chunks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("gguf_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("archive_blob", sa.String(40)),
        sa.Column("archive_chunks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("archive_bytes", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("uq_fine_tuning_checkpoints_job_epoch", "fine_tuning_checkpoints", ["job_id", "epoch"], unique=True)
    op.create_table(
        "tuned_models",
        sa.Column("id", sa.String(MODEL_ID), primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "checkpoint_id", sa.String(40), sa.ForeignKey("fine_tuning_checkpoints.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("base_model", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tuned_models_team", "tuned_models", ["team_id", "created_at"])
    op.create_index("ix_tuned_models_base", "tuned_models", ["base_model"])


def downgrade() -> None:
    op.drop_index("ix_tuned_models_base", "tuned_models")
    op.drop_index("ix_tuned_models_team", "tuned_models")
    op.drop_table("tuned_models")
    op.drop_index("uq_fine_tuning_checkpoints_job_epoch", "fine_tuning_checkpoints")
    op.drop_table("fine_tuning_checkpoints")
    op.drop_index("uq_fine_tuning_events_job_seq", "fine_tuning_events")
    op.drop_table("fine_tuning_events")
    op.drop_index("ix_fine_tuning_jobs_team_status", "fine_tuning_jobs")
    op.drop_index("ix_fine_tuning_jobs_team_created", "fine_tuning_jobs")
    op.drop_table("fine_tuning_jobs")
