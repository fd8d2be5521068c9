"""Trusted browsers: "trust this browser for N days" skips the second factor there (issue 14)

Revision ID: 0014_trusted_browsers
Revises: 0013_api_idempotency
Create Date: 2026-12-07 01:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.models.base import UTCDateTime

revision: str = "0014_trusted_browsers"
down_revision: str | Sequence[str] | None = "0013_api_idempotency"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trusted_browsers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=400), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_trusted_browsers_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trusted_browsers")),
        sa.UniqueConstraint("public_id", name=op.f("uq_trusted_browsers_public_id")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_trusted_browsers_token_hash")),
    )
    op.create_index(op.f("ix_trusted_browsers_user_id"), "trusted_browsers", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_trusted_browsers_user_id"), table_name="trusted_browsers")
    op.drop_table("trusted_browsers")
