"""at most one current value per secret (owner, field): a partial unique index; merges the feature heads

Two concurrent replacements of the same secret could each retire the old value and insert their own,
leaving two current rows (reads took the newest). Existing duplicates are retired (kept for the usual
7-day rollback window, newest stays current) before the index is created.

Revision ID: 0010_one_current_secret
Revises: 0003_lifecycle, 0004_mfa, 0005_api, 0006_connectors, 0007_oauth, 0009_dialogs
Create Date: 2026-11-25 07:10:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0010_one_current_secret"
down_revision: str | Sequence[str] | None = (
    "0003_lifecycle",
    "0004_mfa",
    "0005_api",
    "0006_connectors",
    "0007_oauth",
    "0009_dialogs",
)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT = sa.text("retired_at IS NULL")


def upgrade() -> None:
    secrets = sa.table(
        "secrets",
        sa.column("id", sa.Integer),
        sa.column("owner_type", sa.String),
        sa.column("owner_id", sa.Integer),
        sa.column("field", sa.String),
        sa.column("retired_at", sa.DateTime),
        sa.column("purge_after", sa.DateTime),
    )
    newer = secrets.alias("newer")
    now = datetime.now(UTC).replace(tzinfo=None)
    # A current row with a newer current row for the same (owner, field) is retired.
    op.execute(
        secrets.update()
        .where(
            secrets.c.retired_at.is_(None),
            sa.exists().where(
                newer.c.owner_type == secrets.c.owner_type,
                newer.c.owner_id == secrets.c.owner_id,
                newer.c.field == secrets.c.field,
                newer.c.retired_at.is_(None),
                newer.c.id > secrets.c.id,
            ),
        )
        .values(retired_at=now, purge_after=now + timedelta(days=7))
    )
    op.create_index(
        "uq_secrets_current",
        "secrets",
        ["owner_type", "owner_id", "field"],
        unique=True,
        postgresql_where=CURRENT,
        sqlite_where=CURRENT,
    )


def downgrade() -> None:
    op.drop_index("uq_secrets_current", table_name="secrets", postgresql_where=CURRENT, sqlite_where=CURRENT)
