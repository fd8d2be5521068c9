"""Connected OAuth accounts: a user's grant at a provider config, its token set encrypted in the vault.

The token set (:class:`~app.oauth.TokenSet` as JSON: access and refresh token, expiry, scopes, ID token)
is one vault secret, owner ``connected_account``, field ``token_set``; the row keeps what may be read
without decrypting: subject, scopes, ``expires_at`` (which the refresh job scans), userinfo in
``provider_data``, status and the last error. Refresh and revoke live in :mod:`app.jobs.refresh`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit
from app.errors import AppError
from app.models import ConnectedAccount, ProviderConfig, utcnow
from app.oauth.glue import OAuthProvider, ProviderIdentity, token_set_from_json, token_set_json
from app.oauth.tokens import TokenSet
from app.vault import Cipher, get_secret, put_secret

__all__ = [
    "ACTIVE",
    "CONSENT_REQUIRED",
    "EXPIRED",
    "OWNER",
    "TOKEN_FIELD",
    "account_for_user",
    "load_tokens",
    "oauth_accounts_for_user",
    "save_tokens",
    "store_connection",
]

OWNER: Final = "connected_account"
TOKEN_FIELD: Final = "token_set"
# Statuses an OAuth account moves through (the column is shared with API-key accounts).
ACTIVE: Final = "active"
CONSENT_REQUIRED: Final = "consent_required"  # the provider refused the refresh token: reconnect
EXPIRED: Final = "expired"  # no refresh token and the access token ran out (e.g. Google "online" access)


def load_tokens(db: Session, cipher: Cipher, account_id: int) -> TokenSet | None:
    """The account's token set, decrypted (``None`` if none is stored); ``SecretUnreadable`` on a key problem."""
    secret = get_secret(db, cipher, OWNER, account_id, TOKEN_FIELD)
    return token_set_from_json(secret.reveal()) if secret is not None else None


def save_tokens(db: Session, cipher: Cipher, account_id: int, tokens: TokenSet) -> None:
    """Replace the stored token set in the caller's transaction (the old one is deleted, not retired:
    a superseded access token is useless and a rotated refresh token must not linger)."""
    put_secret(db, cipher, OWNER, account_id, TOKEN_FIELD, token_set_json(tokens), grace=None)


def oauth_accounts_for_user(db: Session, user_id: int, config_ids: list[int]) -> list[ConnectedAccount]:
    if not config_ids:
        return []
    return list(
        db.scalars(
            select(ConnectedAccount)
            .where(ConnectedAccount.user_id == user_id, ConnectedAccount.provider_config_id.in_(config_ids))
            .order_by(ConnectedAccount.created_at)
        )
    )


def account_for_user(db: Session, account_id: int, user_id: int) -> ConnectedAccount:
    """The user's own account, or ``not_found`` (never reveal that someone else's exists)."""
    account = db.get(ConnectedAccount, account_id)
    if account is None or account.user_id != user_id:
        raise AppError("not_found", "There is no such connected account.")
    return account


def _label(identity: ProviderIdentity) -> str:
    login = identity.provider_data.get("login")
    return str(identity.email or login or identity.name or identity.subject)[:200]


def store_connection(
    db: Session,
    cipher: Cipher,
    ctx: audit.AuditContext,
    provider: OAuthProvider,
    user_id: int,
    tokens: TokenSet,
    identity: ProviderIdentity,
    *,
    reconnect_id: int | None = None,
    now: datetime | None = None,
) -> ConnectedAccount:
    """Create or update the user's account for this provider account; never commits.

    Reconnecting (``reconnect_id``) must come back with the same provider account; connecting one that is
    already connected updates it instead of adding a duplicate.
    """
    now = now or utcnow()
    account: ConnectedAccount | None
    if reconnect_id is not None:
        account = account_for_user(db, reconnect_id, user_id)
        if account.provider_config_id != provider.config_id:
            raise AppError("not_found", "There is no such connected account.")
        if account.subject is not None and account.subject != identity.subject:
            raise AppError(
                "conflict",
                f"You signed in as a different {provider.entry.display_name} account ({_label(identity)}) "
                f"than the one you are reconnecting ({account.label}).",
                "Reconnect with the same account, or connect the other one as a new account.",
            )
    else:
        account = db.scalars(
            select(ConnectedAccount).where(
                ConnectedAccount.user_id == user_id,
                ConnectedAccount.provider_config_id == provider.config_id,
                ConnectedAccount.subject == identity.subject,
            )
        ).first()
    created = account is None
    if account is None:
        config = db.get(ProviderConfig, provider.config_id)
        if config is None:
            raise AppError("not_found", "There is no such provider config.")
        account = ConnectedAccount(provider_config_id=provider.config_id, user_id=user_id, created_at=now)
        db.add(account)
    data: dict[str, Any] = dict(identity.provider_data)
    account.subject = identity.subject
    account.label = _label(identity)
    account.identifiers = {"email": identity.email} if identity.email else {}
    account.provider_data = data
    account.scopes = list(tokens.scopes)
    account.expires_at = tokens.expires_at
    account.status = ACTIVE
    account.last_verified_at = now
    account.rotated_at = now
    account.last_error_code = None
    account.last_error_hint = None
    account.last_error_at = None
    account.error_attempts = 0
    account.next_attempt_at = None
    account.lease_owner = None
    account.lease_until = None
    account.updated_at = now
    db.flush()
    save_tokens(db, cipher, account.id, tokens)
    audit.record(
        db,
        ctx,
        "connected_account.connect" if created else "connected_account.reconnect",
        target=f"connected_account:{account.id}",
        details={
            "provider_config": provider.config_id,
            "type": provider.type.value,
            "scopes": list(tokens.scopes),
            "refresh_token": tokens.refresh_token is not None,
        },
    )
    return account
