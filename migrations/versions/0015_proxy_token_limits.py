"""Service tokens: optional limits on which connected accounts (ids, provider types) they may use

Revision ID: 0015_proxy_token_limits
Revises: 0014_trusted_browsers
Create Date: 2026-12-07 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_proxy_token_limits"
down_revision: str | Sequence[str] | None = "0014_trusted_browsers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("service_tokens") as batch:
        batch.add_column(sa.Column("account_limits", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("service_tokens") as batch:
        batch.drop_column("account_limits")
