"""single-use secure-dialog links issued to the CMS (dialog_tokens)

Revision ID: 0009_dialogs
Revises: 0001
Create Date: 2026-11-25 04:52:41.348235
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = '0009_dialogs'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('dialog_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('provider_config_id', sa.Integer(), nullable=True),
    sa.Column('account_id', sa.Integer(), nullable=True),
    sa.Column('return_to', sa.String(length=2000), nullable=False),
    sa.Column('issued_by', sa.String(length=320), nullable=False),
    sa.Column('service_token_id', sa.Integer(), nullable=True),
    sa.Column('created_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('expires_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('opened_at', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('opened_by', sa.Integer(), nullable=True),
    sa.Column('opened_session', sa.String(length=64), nullable=True),
    sa.Column('used_at', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('outcome', sa.String(length=20), nullable=True),
    sa.Column('result_account_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['connected_accounts.id'], name=op.f('fk_dialog_tokens_account_id_connected_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['opened_by'], ['users.id'], name=op.f('fk_dialog_tokens_opened_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['provider_config_id'], ['provider_configs.id'], name=op.f('fk_dialog_tokens_provider_config_id_provider_configs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dialog_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_dialog_tokens_token_hash'))
    )
    with op.batch_alter_table('dialog_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dialog_tokens_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_dialog_tokens_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_dialog_tokens_provider_config_id'), ['provider_config_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('dialog_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dialog_tokens_provider_config_id'))
        batch_op.drop_index(batch_op.f('ix_dialog_tokens_expires_at'))
        batch_op.drop_index(batch_op.f('ix_dialog_tokens_account_id'))

    op.drop_table('dialog_tokens')
