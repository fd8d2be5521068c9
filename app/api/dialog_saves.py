"""What the CMS dialogs save: a new API-key/SMTP account with its secret, and a provider config's secrets.
(Replacing an account's secret is ``app.connectors.accounts.save_secrets`` as is.) Logic only.

A new account is verified against the provider *before* anything is written, so no database write lock
is held while the provider answers and a refused key leaves nothing behind — not even a pending account.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from app import audit
from app.connectors import accounts, headers
from app.connectors.verify import Verification, verify_account
from app.errors import AppError
from app.extensions import end_read
from app.models import ConnectedAccount, ProviderConfig, utcnow
from app.net import OutboundClient
from app.providers import configs
from app.providers.validation import ValuesByScope, effective_values, split_secrets
from app.settings import Settings
from app.vault import Cipher, Secret, put_secret


def verify_new_account(
    client: OutboundClient, settings: Settings, cfg: ProviderConfig, clean: Mapping[str, Any]
) -> Verification:
    """Check a new account's values and typed secrets with the provider; nothing is stored."""
    provider = configs.entry_for(cfg)
    plain, typed = split_secrets(provider, "account", clean)
    values: ValuesByScope = {
        "config": effective_values(provider, "config", cfg.config or {}),
        "account": effective_values(provider, "account", plain),
    }
    secrets: dict[str, Secret | None] = {spec.name: typed.get(spec.name) for spec in provider.secret_fields("account")}
    return verify_account(client, settings, provider, values, secrets)


def add_account(
    db: Session,
    cipher: Cipher,
    client: OutboundClient,
    settings: Settings,
    ctx: audit.AuditContext,
    cfg: ProviderConfig,
    label: str | None,
    clean: Mapping[str, Any],
    *,
    user_id: int | None,
) -> ConnectedAccount:
    """Verify, then create the account and store its secret(s) (the caller commits). A refusal by the
    provider raises its AppError (blaming the field) and writes nothing but its audit record."""
    provider = configs.entry_for(cfg)
    end_read(db)  # nothing held while the vendor answers
    result = verify_new_account(client, settings, cfg, clean)
    _plain, typed = split_secrets(provider, "account", clean)
    if result.error is not None:
        audit.record(
            db,
            ctx,
            "account.secret.set",
            target=f"provider_config:{cfg.id}",
            outcome="failure",
            details={
                "type": provider.id,
                "encrypted_fields": sorted(typed),
                "code": result.error.code,
                "blamed_fields": sorted(result.error.fields),
                "via": "dialog",
            },
        )
        raise result.error
    account = accounts.create_account(db, ctx, cfg, label, clean, user_id=user_id)
    at = utcnow()
    grace = timedelta(days=settings.secret_grace_days)
    for name, value in typed.items():
        put_secret(db, cipher, accounts.OWNER, account.id, name, value, grace=grace, now=at)
    if typed:
        account.rotated_at = at
    accounts.apply_verification(account, result, at)
    headers.forget_account(db, account.id)
    audit.record(
        db,
        ctx,
        "account.secret.set",
        target=f"connected_account:{account.id}",
        details={"encrypted_fields": sorted(typed), "verification": result.status, "via": "dialog"},
    )
    return account


def set_config_secrets(
    db: Session,
    cipher: Cipher,
    settings: Settings,
    ctx: audit.AuditContext,
    cfg: ProviderConfig,
    clean: Mapping[str, Any],
) -> list[str]:
    """Store the typed secret fields of a provider config (blank ones keep their value); returns the names
    of the fields replaced. The config's other values are saved unchanged."""
    provider = configs.entry_for(cfg)
    _plain, typed = split_secrets(provider, "config", clean)
    if not typed:
        raise AppError("validation_failed", "Enter at least one value to save.", "Or cancel to keep what is stored.")
    changes = configs.update_config(db, cipher, settings, ctx, cfg, cfg.name, clean)
    return changes.secrets
