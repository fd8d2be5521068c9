"""Connected OAuth accounts: a user's grant at a provider config, its token set encrypted in the vault.

The token set (:class:`~app.oauth.TokenSet` as JSON: access and refresh token, expiry, scopes, ID token)
is one vault secret, owner ``connected_account``, field ``token_set``; the row keeps what may be read
without decrypting: subject, scopes, ``expires_at`` (which the refresh job scans), userinfo in
``provider_data``, status and the last error. Connecting stores it (:func:`store_connection`);
disconnecting revokes the grant at the provider first (:func:`revoke_account`); refreshing is
:mod:`app.oauth.renewal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit
from app.errors import N_, AppError
from app.models import ConnectedAccount, ProviderConfig, utcnow
from app.oauth.identity import ProviderIdentity
from app.oauth.provider import DEVICE_CLIENT_MARK, OAuthProvider, revoke_tokens
from app.oauth.runtime import OAuthRuntime, build_provider
from app.oauth.tokens import TokenSet, token_set_from_json, token_set_json
from app.vault import Cipher, SecretUnreadable, delete_secrets, get_secret, put_secret

__all__ = [
    "ACTIVE",
    "CONSENT_REQUIRED",
    "EXPIRED",
    "OWNER",
    "TOKEN_FIELD",
    "DisconnectResult",
    "RevokeOutcome",
    "account_for_user",
    "load_tokens",
    "oauth_accounts_for_user",
    "revoke_account",
    "save_tokens",
    "store_connection",
]

OWNER: Final = "connected_account"
TOKEN_FIELD: Final = "token_set"
# Statuses an OAuth account moves through (the column is shared with API-key accounts).
ACTIVE: Final = "active"
CONSENT_REQUIRED: Final = "consent_required"  # the provider refused the refresh token: reconnect
EXPIRED: Final = "expired"  # no refresh token and the access token ran out (e.g. Google "online" access)
SYSTEM: Final = audit.AuditContext(actor="system:token-refresh")


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
        raise AppError("not_found", N_("There is no such connected account."))
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
            raise AppError("not_found", N_("There is no such connected account."))
        if account.subject is not None and account.subject != identity.subject:
            raise AppError(
                "conflict",
                N_(
                    "You signed in as a different %(display_name)s account (%(identity)s) than the one you are "
                    "reconnecting (%(label)s).",
                    display_name=provider.entry.display_name,
                    identity=_label(identity),
                    label=account.label,
                ),
                N_("Reconnect with the same account, or connect the other one as a new account."),
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
            raise AppError("not_found", N_("There is no such provider config."))
        account = ConnectedAccount(provider_config_id=provider.config_id, user_id=user_id, created_at=now)
        db.add(account)
    data: dict[str, Any] = dict(identity.provider_data)
    if provider.via_device_client:
        # Its refresh token belongs to the device client: the refresh job must use that client too.
        data[DEVICE_CLIENT_MARK] = "device"
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
            "type": provider.type,
            "scopes": list(tokens.scopes),
            "refresh_token": tokens.refresh_token is not None,
        },
    )
    return account


# --- disconnect ---------------------------------------------------------------------------------------------

RevokeOutcome = Literal["revoked", "already_invalid", "unsupported", "not_revoked"]


@dataclass(frozen=True)
class DisconnectResult:
    outcome: RevokeOutcome
    # For "unsupported": when the access token stops working on its own (None: unknown or never).
    access_token_expires_at: datetime | None = None
    error: AppError | None = None


def revoke_account(
    db: Session,
    account: ConnectedAccount,
    rt: OAuthRuntime,
    ctx: audit.AuditContext = SYSTEM,
    *,
    force: bool = False,
) -> DisconnectResult:
    """Revoke the account's grant at the provider, then delete it and its tokens here; commits.

    Azure AD has no revocation endpoint (``unsupported``): the account is deleted here and the result says
    when the access token expires by itself. When the provider cannot be reached, nothing is deleted unless
    ``force`` (the user chose "remove here only"), and the error is returned.
    """
    account_id = account.id
    expires_at = account.expires_at
    outcome: RevokeOutcome
    error: AppError | None = None
    try:
        tokens = load_tokens(db, rt.cipher, account_id)
    except SecretUnreadable as exc:
        tokens, error = None, AppError("secret_unreadable", exc.text)
    cfg = db.get(ProviderConfig, account.provider_config_id)
    provider: OAuthProvider | None = None
    if cfg is not None and error is None:
        try:
            provider = build_provider(db, rt, cfg)
        except SecretUnreadable as exc:
            error = AppError("secret_unreadable", exc.text)
        except AppError as exc:
            error = exc
    if tokens is None and error is None:
        outcome = "already_invalid"
    elif provider is None or tokens is None:
        outcome = "not_revoked"
    elif not provider.revoke_supported:
        outcome = "unsupported"
        expires_at = tokens.expires_at
    else:
        try:
            outcome = revoke_tokens(rt.client, provider, tokens)
        except AppError as exc:
            outcome, error = "not_revoked", exc
    if outcome == "not_revoked" and not force:
        db.rollback()
        return DisconnectResult("not_revoked", error=error)
    deleted = delete_secrets(db, OWNER, account_id)
    audit.record(
        db,
        ctx,
        "connected_account.disconnect",
        target=f"connected_account:{account_id}",
        outcome="success" if outcome != "not_revoked" else "failure",
        details={
            "provider_config": account.provider_config_id,
            "revoke": outcome,
            "vault_rows_deleted": deleted,
            "error": error.code if error is not None else None,
        },
    )
    db.delete(account)
    db.commit()
    return DisconnectResult(
        outcome, access_token_expires_at=expires_at if outcome == "unsupported" else None, error=error
    )
