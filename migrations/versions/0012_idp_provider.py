"""the OpenID Provider: clients, signing keys, consents, codes, tokens, session links, back-channel logout outbox

Revision ID: 0012_idp_provider
Revises: 0010_one_current_secret
Create Date: 2026-12-06 23:05:12.613205
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.models.base

revision: str = '0012_idp_provider'
down_revision: str | Sequence[str] | None = '0010_one_current_secret'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('oidc_signing_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('alg', sa.String(length=10), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('public_jwk', sa.JSON(), nullable=False),
    sa.Column('created_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('activated_at', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('rotated_out_at', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('retired_at', app.models.base.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oidc_signing_keys')),
    sa.UniqueConstraint('kid', name=op.f('uq_oidc_signing_keys_kid'))
    )
    with op.batch_alter_table('oidc_signing_keys', schema=None) as batch_op:
        batch_op.create_index('uq_oidc_signing_keys_alg_state', ['alg', 'state'], unique=True, postgresql_where=sa.text("state IN ('current', 'next')"), sqlite_where=sa.text("state IN ('current', 'next')"))

    op.create_table('oidc_clients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('client_type', sa.String(length=20), nullable=False),
    sa.Column('auth_method', sa.String(length=40), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=True),
    sa.Column('jwks_uri', sa.String(length=2000), nullable=True),
    sa.Column('redirect_uris', sa.JSON(), nullable=False),
    sa.Column('post_logout_redirect_uris', sa.JSON(), nullable=False),
    sa.Column('backchannel_logout_uri', sa.String(length=2000), nullable=True),
    sa.Column('grant_types', sa.JSON(), nullable=False),
    sa.Column('scopes', sa.JSON(), nullable=False),
    sa.Column('audiences', sa.JSON(), nullable=False),
    sa.Column('require_pkce', sa.Boolean(), nullable=False),
    sa.Column('first_party', sa.Boolean(), nullable=False),
    sa.Column('id_token_alg', sa.String(length=10), nullable=False),
    sa.Column('access_token_ttl', sa.Integer(), nullable=False),
    sa.Column('refresh_token_ttl', sa.Integer(), nullable=False),
    sa.Column('id_token_ttl', sa.Integer(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('updated_at', app.models.base.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_oidc_clients_created_by_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oidc_clients')),
    sa.UniqueConstraint('client_id', name=op.f('uq_oidc_clients_client_id'))
    )
    op.create_table('oidc_codes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('redirect_uri', sa.String(length=2000), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('nonce', sa.String(length=512), nullable=True),
    sa.Column('code_challenge', sa.String(length=128), nullable=True),
    sa.Column('code_challenge_method', sa.String(length=10), nullable=True),
    sa.Column('session_id', sa.String(length=64), nullable=True),
    sa.Column('sid', sa.String(length=64), nullable=True),
    sa.Column('auth_time', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('amr', sa.JSON(), nullable=False),
    sa.Column('acr', sa.String(length=100), nullable=True),
    sa.Column('created_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('expires_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('used_at', app.models.base.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['oidc_clients.id'], name=op.f('fk_oidc_codes_client_id_oidc_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_oidc_codes_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oidc_codes')),
    sa.UniqueConstraint('code_hash', name=op.f('uq_oidc_codes_code_hash'))
    )
    with op.batch_alter_table('oidc_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_codes_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_oidc_codes_user_id'), ['user_id'], unique=False)

    op.create_table('oidc_consents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=False),
    sa.Column('scopes', sa.JSON(), nullable=False),
    sa.Column('created_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('updated_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('last_used_at', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('revoked_at', app.models.base.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['oidc_clients.id'], name=op.f('fk_oidc_consents_client_id_oidc_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_oidc_consents_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oidc_consents')),
    sa.UniqueConstraint('user_id', 'client_id', name='uq_oidc_consents_user_client')
    )
    with op.batch_alter_table('oidc_consents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_consents_client_id'), ['client_id'], unique=False)

    op.create_table('oidc_logout_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=False),
    sa.Column('uri', sa.String(length=2000), nullable=False),
    sa.Column('sub', sa.String(length=64), nullable=False),
    sa.Column('sid', sa.String(length=64), nullable=True),
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=False),
    sa.Column('created_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('next_attempt_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('claimed_until', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('delivered_at', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('failed_at', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.String(length=300), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['oidc_clients.id'], name=op.f('fk_oidc_logout_deliveries_client_id_oidc_clients'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oidc_logout_deliveries')),
    sa.UniqueConstraint('jti', name=op.f('uq_oidc_logout_deliveries_jti'))
    )
    with op.batch_alter_table('oidc_logout_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_logout_deliveries_client_id'), ['client_id'], unique=False)
        batch_op.create_index('ix_oidc_logout_deliveries_due', ['delivered_at', 'failed_at', 'next_attempt_at'], unique=False)

    op.create_table('oidc_session_clients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('session_id', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('sid', sa.String(length=64), nullable=False),
    sa.Column('created_at', app.models.base.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['client_id'], ['oidc_clients.id'], name=op.f('fk_oidc_session_clients_client_id_oidc_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_oidc_session_clients_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oidc_session_clients')),
    sa.UniqueConstraint('session_id', 'client_id', name='uq_oidc_session_clients_session_client')
    )
    with op.batch_alter_table('oidc_session_clients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_session_clients_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_oidc_session_clients_user_id'), ['user_id'], unique=False)

    op.create_table('oidc_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('family', sa.String(length=32), nullable=False),
    sa.Column('code_id', sa.Integer(), nullable=True),
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('refresh_hash', sa.String(length=64), nullable=True),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('audience', sa.JSON(), nullable=False),
    sa.Column('session_id', sa.String(length=64), nullable=True),
    sa.Column('sid', sa.String(length=64), nullable=True),
    sa.Column('auth_time', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('amr', sa.JSON(), nullable=False),
    sa.Column('acr', sa.String(length=100), nullable=True),
    sa.Column('issued_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('access_expires_at', app.models.base.UTCDateTime(), nullable=False),
    sa.Column('refresh_expires_at', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('refresh_used_at', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('revoked_at', app.models.base.UTCDateTime(), nullable=True),
    sa.Column('revoked_reason', sa.String(length=40), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['oidc_clients.id'], name=op.f('fk_oidc_tokens_client_id_oidc_clients'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['code_id'], ['oidc_codes.id'], name=op.f('fk_oidc_tokens_code_id_oidc_codes'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_oidc_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oidc_tokens')),
    sa.UniqueConstraint('jti', name=op.f('uq_oidc_tokens_jti')),
    sa.UniqueConstraint('refresh_hash', name=op.f('uq_oidc_tokens_refresh_hash'))
    )
    with op.batch_alter_table('oidc_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_tokens_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_oidc_tokens_code_id'), ['code_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_oidc_tokens_family'), ['family'], unique=False)
        batch_op.create_index(batch_op.f('ix_oidc_tokens_session_id'), ['session_id'], unique=False)
        batch_op.create_index('ix_oidc_tokens_user_client', ['user_id', 'client_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('oidc_tokens', schema=None) as batch_op:
        batch_op.drop_index('ix_oidc_tokens_user_client')
        batch_op.drop_index(batch_op.f('ix_oidc_tokens_session_id'))
        batch_op.drop_index(batch_op.f('ix_oidc_tokens_family'))
        batch_op.drop_index(batch_op.f('ix_oidc_tokens_code_id'))
        batch_op.drop_index(batch_op.f('ix_oidc_tokens_client_id'))

    op.drop_table('oidc_tokens')
    with op.batch_alter_table('oidc_session_clients', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oidc_session_clients_user_id'))
        batch_op.drop_index(batch_op.f('ix_oidc_session_clients_client_id'))

    op.drop_table('oidc_session_clients')
    with op.batch_alter_table('oidc_logout_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_oidc_logout_deliveries_due')
        batch_op.drop_index(batch_op.f('ix_oidc_logout_deliveries_client_id'))

    op.drop_table('oidc_logout_deliveries')
    with op.batch_alter_table('oidc_consents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oidc_consents_client_id'))

    op.drop_table('oidc_consents')
    with op.batch_alter_table('oidc_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oidc_codes_user_id'))
        batch_op.drop_index(batch_op.f('ix_oidc_codes_client_id'))

    op.drop_table('oidc_codes')
    op.drop_table('oidc_clients')
    with op.batch_alter_table('oidc_signing_keys', schema=None) as batch_op:
        batch_op.drop_index('uq_oidc_signing_keys_alg_state', postgresql_where=sa.text("state IN ('current', 'next')"), sqlite_where=sa.text("state IN ('current', 'next')"))

    op.drop_table('oidc_signing_keys')
