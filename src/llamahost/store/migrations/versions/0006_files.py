"""uploads and files: resumable upload sessions, committed parts, files, encrypted chunks

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_sessions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("file_id", sa.String(40), nullable=False, unique=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("filename_sealed", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mime_type", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("received", sa.BigInteger, nullable=False),
        sa.Column("chunks", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_upload_sessions_team", "upload_sessions", ["team_id"])
    op.create_index("ix_upload_sessions_updated", "upload_sessions", ["updated_at"])
    op.create_table(
        "files",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("filename_sealed", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mime_type", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("surface", sa.String(16), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("sha256_sealed", sa.LargeBinary),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_details", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_files_team_created", "files", ["team_id", "created_at"])
    op.create_table(
        "file_parts",
        sa.Column("file_id", sa.String(40), primary_key=True),
        sa.Column("start", sa.BigInteger, primary_key=True),
        sa.Column("length", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.String(32), nullable=False),
        sa.Column("first_chunk", sa.Integer, nullable=False),
        sa.Column("chunks", sa.Integer, nullable=False),
    )
    op.create_table(
        "file_chunks",
        sa.Column("file_id", sa.String(40), primary_key=True),
        sa.Column("attempt", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("team_id", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_file_chunks_team", "file_chunks", ["team_id"])

def downgrade() -> None:
    op.drop_table("file_chunks")
    op.drop_table("file_parts")
    op.drop_table("files")
    op.drop_table("upload_sessions")
