"""encryption at rest: wrapped keys, per-team settings, stored requests; team names, key
labels and usage `user` values encrypted with blind indexes (existing rows converted)

Revision ID: 0003
Revises: 0002
"""

import secrets
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from llamahost.store.crypto import DataKey
from llamahost.store.keyring import (
    CONTENT,
    INDEX,
    Sealed,
    seal_with,
    team_name_index,
    user_index,
    wrap_index_key,
)

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BATCH = 5000


def upgrade() -> None:
    config = op.get_context().config
    assert config is not None, "run through llamahost's migrator, which passes the master key"
    master = config.attributes["master_key"]
    now = datetime.now(UTC)
    _create_tables()
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("name_index", sa.String(64)))
        batch.add_column(sa.Column("name_sealed", sa.LargeBinary))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True)))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("name_sealed", sa.LargeBinary))
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("record_id", sa.String(32)))
        batch.add_column(sa.Column("user_index", sa.String(32)))
        batch.add_column(sa.Column("user_sealed", sa.LargeBinary))

    bind = op.get_bind()
    keys = sa.table(
        "encryption_keys",
        sa.column("team_id", sa.Integer), sa.column("purpose", sa.String), sa.column("version", sa.Integer),
        sa.column("wrapped", sa.LargeBinary), sa.column("master_key_id", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    index_key = secrets.token_bytes(32)
    bind.execute(
        keys.insert().values(
            team_id=None, purpose=INDEX, version=1, wrapped=wrap_index_key(master, index_key),
            master_key_id=master.key_id, created_at=now,
        )
    )
    converted = _convert_rows(bind, master, index_key, keys, now)
    if converted:
        config.attributes["plaintext_replaced"] = True

    op.create_index("uq_teams_name_index", "teams", ["name_index"], unique=True)
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("name")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("name")
    op.drop_index("ix_usage_records_end_user_created", "usage_records")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("end_user")
        batch.alter_column("record_id", existing_type=sa.String(32), nullable=False)
    op.create_index("ix_usage_records_user_created", "usage_records", ["user_index", "created_at"])
    op.create_index("uq_usage_records_record_id", "usage_records", ["record_id"], unique=True)


def _create_tables() -> None:
    op.create_table(
        "encryption_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE")),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("master_key_id", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("team_id", "purpose", "version", name="uq_encryption_keys_team_purpose_version"),
    )
    op.create_table(
        "team_settings",
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "stored_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("surface", sa.String(16), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("flagged", sa.Boolean, nullable=False),
        sa.Column("user_index", sa.String(32)),
        sa.Column("user_sealed", sa.LargeBinary),
        sa.Column("request_sealed", sa.LargeBinary, nullable=False),
        sa.Column("response_sealed", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_stored_requests_team_created", "stored_requests", ["team_id", "created_at"])
    op.create_index(
        "ix_stored_requests_team_user_created", "stored_requests", ["team_id", "user_index", "created_at"]
    )


def _convert_rows(bind, master, index_key: bytes, keys, now) -> int:
    """Give every existing team a data key; encrypt team names, key labels and usage
    `user` values. Returns how many plaintext values were replaced."""
    teams = sa.table("teams", sa.column("id"), sa.column("name"), sa.column("name_index"), sa.column("name_sealed"))
    api_keys = sa.table("api_keys", sa.column("id"), sa.column("key_id"), sa.column("team_id"), sa.column("name"),
                        sa.column("name_sealed"))
    usage = sa.table("usage_records", sa.column("id"), sa.column("team_id"), sa.column("end_user"),
                     sa.column("record_id"), sa.column("user_index"), sa.column("user_sealed"))
    data_keys: dict[int, DataKey] = {}
    converted = 0
    for team_id, name in bind.execute(sa.select(teams.c.id, teams.c.name)).all():
        key = data_keys[team_id] = DataKey.generate(team_id, 1)
        bind.execute(
            keys.insert().values(
                team_id=team_id, purpose=CONTENT, version=1, wrapped=master.wrap(key.key, team_id, 1),
                master_key_id=master.key_id, created_at=now,
            )
        )
        bind.execute(
            teams.update().where(teams.c.id == team_id).values(
                name_index=team_name_index(index_key, name),
                name_sealed=seal_with(key, name, Sealed.team_name(team_id)),
            )
        )
        converted += 1
    labelled = bind.execute(
        sa.select(api_keys.c.id, api_keys.c.key_id, api_keys.c.team_id, api_keys.c.name).where(api_keys.c.name.is_not(None))
    ).all()
    for row_id, key_id, team_id, name in labelled:
        sealed = seal_with(data_keys[team_id], name, Sealed.key_label(key_id))
        bind.execute(api_keys.update().where(api_keys.c.id == row_id).values(name_sealed=sealed))
        converted += 1
    while True:
        rows = bind.execute(
            sa.select(usage.c.id, usage.c.team_id, usage.c.end_user)
            .where(usage.c.record_id.is_(None))
            .order_by(usage.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        updates = []
        for row_id, team_id, user in rows:
            record_id = uuid.uuid4().hex
            values = {"row_id": row_id, "record_id": record_id, "user_index": None, "user_sealed": None}
            if user is not None:
                values["user_index"] = user_index(data_keys[team_id], user)
                values["user_sealed"] = seal_with(data_keys[team_id], user, Sealed.usage_user(record_id))
                converted += 1
            updates.append(values)
        bind.execute(
            usage.update()
            .where(usage.c.id == sa.bindparam("row_id"))
            .values(record_id=sa.bindparam("record_id"), user_index=sa.bindparam("user_index"),
                    user_sealed=sa.bindparam("user_sealed")),
            updates,
        )
    return converted


def downgrade() -> None:
    raise NotImplementedError(
        "0003 encrypted team names, key labels and usage `user` values; going back would need them in plaintext"
    )
