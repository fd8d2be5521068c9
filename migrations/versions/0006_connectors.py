"""connectors: SMTP system-mailer flag and daily send counter on connected_accounts

Revision ID: 0006_connectors
Revises: 0001
Create Date: 2026-11-25 04:13:21.694765
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006_connectors'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('connected_accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('system_mailer', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('send_day', sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column('send_count', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('connected_accounts', schema=None) as batch_op:
        batch_op.drop_column('send_count')
        batch_op.drop_column('send_day')
        batch_op.drop_column('system_mailer')
