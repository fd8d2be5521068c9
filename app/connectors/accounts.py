"""Connected accounts of API-key and SMTP providers: create, verify, set and replace secrets (with a
rollback grace period), delete (revoking first where the provider can), rotation policy.

Non-secret account fields live in ``ConnectedAccount.identifiers``; secret fields in the vault (owner
``connected_account``). A new account starts ``pending`` (no secret yet); saving a verified secret makes it
``active``; a failed "Test now" marks it ``failing`` (it stays usable: the failure may be a rate limit).
Every change is audited with field names only, never values.

Functions take a Session and never commit: the caller owns the transaction. The one exception: before a vendor is
called ("Test now", a revocation), the read is ended (:func:`app.extensions.end_read`, refused while changes are
pending), so that no pooled connection waits on the vendor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import audit
from app.connectors import headers
from app.connectors.headers import OWNER, account_values, load_secrets
from app.connectors.removal import (
    DeleteResult,
    delete_account,
    purge_retired_secrets,
    revoke_at_provider,
    scrub_deleted,
)
from app.connectors.verify import Verification, verify_account
from app.errors import AppError
from app.extensions import end_read
from app.i18n import gettext as _
from app.models import ConnectedAccount, ProviderConfig, StoredSecret
from app.models.base import ID_MAX, utcnow
from app.net import OutboundClient
from app.providers import configs
from app.providers.entries import ProviderEntry
from app.providers.registry import entry as catalog_entry
from app.providers.types import AuthMode
from app.providers.validation import effective_values, split_secrets
from app.settings import Settings
from app.vault import (
    Cipher,
    Secret,
    SecretMeta,
    put_secret,
    restore_previous,
    secret_meta,
)

__all__ = [
    "CONNECTABLE_MODES",
    "LABEL_MAX",
    "OWNER",
    "AccountStatus",
    "DeleteResult",
    "RotationState",
    "apply_verification",
    "connectable_configs",
    "create_account",
    "delete_account",
    "entry_for",
    "get_account",
    "list_accounts",
    "may_save_unverified",
    "purge_retired_secrets",
    "revoke_at_provider",
    "rollback_secrets",
    "rollback_until",
    "rotation_state",
    "save_secrets",
    "scrub_deleted",
    "secret_states",
    "test_secrets",
    "update_details",
    "verify_stored",
    "verify_unverified",
]

CONNECTABLE_MODES: Final = frozenset({AuthMode.API_KEY, AuthMode.SMTP})
LABEL_MAX: Final = 200
# "unverified": the secret was stored while the vendor could not be reached (an admin chose so, explicitly);
# the unverified-accounts job and the "Test now" button verify it later.
AccountStatus = Literal["pending", "active", "failing", "unverified"]
UNVERIFIED: Final = "unverified"
# The failures that say nothing about the secret: the vendor was not reached, or could not answer.
UNREACHABLE_CODES: Final = frozenset({"provider_unreachable", "service_unavailable"})


def may_save_unverified(provider: ProviderEntry, result: Verification) -> bool:
    """Whether this failed verification allows "save unverified": the vendor was not reached, and the
    provider's catalog entry allows it (``verify.save_unverified``)."""
    return (
        provider.verify is not None
        and provider.verify.save_unverified
        and result.error is not None
        and result.error.code in UNREACHABLE_CODES
    )


def entry_for(account: ConnectedAccount) -> ProviderEntry:
    return catalog_entry(account.provider_config.provider_type)


def _target(account: ConnectedAccount) -> str:
    return f"connected_account:{account.id}"


# ---------------------------------------------------------------------------------------------- queries


def connectable_configs(db: Session) -> list[ProviderConfig]:
    """Enabled provider configs whose type takes an API key or an SMTP login (what "Add account" offers)."""
    enabled = db.scalars(
        select(ProviderConfig).where(ProviderConfig.enabled.is_(True)).order_by(ProviderConfig.name)
    ).all()
    return [cfg for cfg in enabled if configs.entry_for(cfg).auth_mode in CONNECTABLE_MODES]


def list_accounts(db: Session) -> list[ConnectedAccount]:
    """API-key and SMTP accounts (OAuth sign-in accounts belong to their users and are listed elsewhere)."""
    rows = db.scalars(select(ConnectedAccount).order_by(ConnectedAccount.label, ConnectedAccount.id)).all()
    return [a for a in rows if entry_for(a).auth_mode in CONNECTABLE_MODES]


def get_account(db: Session, account_id: int) -> ConnectedAccount:
    account = db.get(ConnectedAccount, account_id) if 0 < account_id <= ID_MAX else None
    if account is None or entry_for(account).auth_mode not in CONNECTABLE_MODES:
        raise AppError("not_found", _("There is no such connected account."))
    return account


def secret_states(db: Session, account: ConnectedAccount) -> dict[str, SecretMeta | None]:
    """Per secret field: ``SecretMeta`` ("set · last changed …") or None."""
    return {
        spec.name: secret_meta(db, OWNER, account.id, spec.name) for spec in entry_for(account).secret_fields("account")
    }


@dataclass(frozen=True)
class RotationState:
    """The rotation policy applied to one account: the key's age is counted from ``since``."""

    days: int | None
    since: datetime | None
    due_at: datetime | None
    overdue: bool

    @property
    def days_overdue(self) -> int:
        return 0 if not self.overdue or self.due_at is None else max(1, (utcnow() - self.due_at).days)


def rotation_state(account: ConnectedAccount, now: datetime | None = None) -> RotationState:
    """``rotation_days`` of the account's provider config (the catalog's default when unset)."""
    provider = entry_for(account)
    config = effective_values(provider, "config", account.provider_config.config or {})
    days = config.get("rotation_days", provider.rotation_days)
    since = account.rotated_at
    if not isinstance(days, int) or since is None:
        return RotationState(days if isinstance(days, int) else None, since, None, False)
    due_at = since + timedelta(days=days)
    return RotationState(days, since, due_at, (now or utcnow()) >= due_at)


def rollback_until(db: Session, account: ConnectedAccount, now: datetime | None = None) -> datetime | None:
    """While the value(s) replaced by the last "Replace secret" can be restored: until this time."""
    retired_at, purge_after = _last_retired(db, account)
    if retired_at is None or (purge_after is not None and purge_after <= (now or utcnow())):
        return None
    return purge_after


def _last_retired(db: Session, account: ConnectedAccount) -> tuple[datetime | None, datetime | None]:
    row = db.execute(
        select(StoredSecret.retired_at, func.min(StoredSecret.purge_after))
        .where(
            StoredSecret.owner_type == OWNER,
            StoredSecret.owner_id == account.id,
            StoredSecret.retired_at.is_not(None),
        )
        .group_by(StoredSecret.retired_at)
        .order_by(StoredSecret.retired_at.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row is not None else (None, None)


# ------------------------------------------------------------------------------------------- changes


def _clean_label(provider: ProviderEntry, label: str | None, clean: Mapping[str, Any]) -> str:
    # An entry may declare its own `label` account field (generic API keys): that is the account's label.
    value = str(clean.get("label") or label or "").strip()
    if len(value) > LABEL_MAX:
        raise AppError("validation_failed", fields={"label": _("Use at most %(limit)s characters.", limit=LABEL_MAX)})
    return value or f"{provider.display_name} account"


def create_account(
    db: Session,
    ctx: audit.AuditContext,
    cfg: ProviderConfig,
    label: str | None,
    clean: Mapping[str, Any],
    *,
    user_id: int | None = None,
) -> ConnectedAccount:
    """A ``pending`` account from the non-secret fields of ``validate_submission`` output."""
    provider = configs.entry_for(cfg)
    if provider.auth_mode not in CONNECTABLE_MODES:
        raise AppError("invalid_config", _("%(provider)s accounts are not added here.", provider=provider.display_name))
    if not cfg.enabled:
        raise AppError(
            "invalid_config",
            _("The provider config “%(name)s” is disabled.", name=cfg.name),
            _("Enable it under Providers first."),
            fields={"provider_config": _("This provider config is disabled.")},
        )
    plain, _secrets = split_secrets(provider, "account", clean)
    account = ConnectedAccount(
        provider_config_id=cfg.id,
        provider_config=cfg,
        user_id=user_id,
        label=_clean_label(provider, label, plain),
        identifiers=plain,
        provider_data={},
        status="pending",
    )
    db.add(account)
    db.flush()
    audit.record(
        db,
        ctx,
        "account.create",
        target=_target(account),
        details={"type": provider.id, "provider_config": cfg.id, "label": account.label, "fields": sorted(plain)},
    )
    return account


def _values_with(provider: ProviderEntry, account: ConnectedAccount, identifiers: Mapping[str, Any]) -> Any:
    return {
        "config": effective_values(provider, "config", account.provider_config.config or {}),
        "account": effective_values(provider, "account", identifiers),
    }


def apply_verification(account: ConnectedAccount, result: Verification, now: datetime | None = None) -> None:
    """Record a verification of the account's *stored* credentials on the account."""
    at = now or utcnow()
    if result.status == "failed":
        assert result.error is not None
        # Still not reached: an unverified secret stays unverified (nothing was learned about it).
        still_unreachable = account.status == UNVERIFIED and result.error.code in UNREACHABLE_CODES
        account.status = UNVERIFIED if still_unreachable else "failing"
        account.last_error_code = result.error.code
        account.last_error_hint = _error_text(result.error)[:500]
        account.last_error_at = at
        account.error_attempts = (account.error_attempts or 0) + 1
        return
    account.status = "active"
    account.last_error_code = account.last_error_hint = None
    account.last_error_at = None
    account.error_attempts = 0
    if result.status == "ok":
        account.last_verified_at = at
        account.provider_data = dict(result.learned)


def _error_text(error: AppError) -> str:
    return f"{error.text} {error.help}".strip()


def update_details(
    db: Session,
    cipher: Cipher,
    client: OutboundClient,
    settings: Settings,
    ctx: audit.AuditContext,
    account: ConnectedAccount,
    label: str | None,
    clean: Mapping[str, Any],
) -> Verification | None:
    """Change the non-secret fields. An account with a secret is verified with the new values first
    (they change what is sent and where); a failure raises its AppError and changes nothing."""
    provider = entry_for(account)
    plain, _secrets = split_secrets(provider, "account", clean)
    new_label = _clean_label(provider, label, plain)
    before = dict(account.identifiers or {})
    changed = sorted(k for k in set(before) | set(plain) if before.get(k) != plain.get(k))
    if not changed and new_label == account.label:
        return None
    result: Verification | None = None
    if account.status != "pending" and changed:
        secrets = load_secrets(db, cipher, provider, account.id)
        values = _values_with(provider, account, plain)
        end_read(db)  # nothing held while the vendor answers
        result = verify_account(client, settings, provider, values, secrets)
        if result.error is not None:
            raise result.error
    account.identifiers = plain
    account.label = new_label
    if result is not None:
        apply_verification(account, result)
    headers.forget_account(db, account.id)
    audit.record(
        db,
        ctx,
        "account.update",
        target=_target(account),
        details={"fields": changed, "label": new_label, "verified": result.status if result else "not_needed"},
    )
    return result


def _trial_secrets(
    db: Session, cipher: Cipher, provider: ProviderEntry, account: ConnectedAccount, typed: Mapping[str, Secret]
) -> dict[str, Secret | None]:
    """What a verification should send: the typed values; for fields left blank, the stored value or the
    field's environment fallback (HF_TOKEN)."""
    secrets = load_secrets(db, cipher, provider, account.id)
    secrets.update(typed)
    return secrets


def test_secrets(
    db: Session,
    cipher: Cipher,
    client: OutboundClient,
    settings: Settings,
    ctx: audit.AuditContext,
    account: ConnectedAccount,
    typed: Mapping[str, Secret],
    *,
    send_test_to: str | None = None,
    before_send: Callable[[], None] | None = None,
) -> Verification:
    """The secret dialog's "Test connection": verify the typed values; nothing is stored. SMTP accounts may
    also send a test mail (``before_send`` counts it against the daily cap)."""
    provider = entry_for(account)
    secrets = _trial_secrets(db, cipher, provider, account, typed)
    values = account_values(provider, account)
    end_read(db)  # nothing held while the vendor answers
    result = verify_account(
        client, settings, provider, values, secrets, send_test_to=send_test_to, before_send=before_send
    )
    _audit_result(db, ctx, account, "account.secret.test", result, typed)
    return result


def _audit_result(
    db: Session,
    ctx: audit.AuditContext,
    account: ConnectedAccount,
    action: str,
    result: Verification,
    typed: Mapping[str, Secret],
    **extra: Any,
) -> None:
    details: dict[str, Any] = {"encrypted_fields": sorted(typed), "verification": result.status, **extra}
    if result.error is not None:
        details["code"] = result.error.code
        details["blamed_fields"] = sorted(result.error.fields)
    outcome: audit.Outcome = "failure" if result.error else "success"
    if extra.get("saved") == "unverified":
        outcome = "untested"  # stored, and nobody could say whether it works
    audit.record(db, ctx, action, target=_target(account), outcome=outcome, details=details)


def save_secrets(
    db: Session,
    cipher: Cipher,
    client: OutboundClient,
    settings: Settings,
    ctx: audit.AuditContext,
    account: ConnectedAccount,
    typed: Mapping[str, Secret],
    *,
    now: datetime | None = None,
    unverified_ok: bool = False,
) -> Verification:
    """Verify the typed secret(s), then store them. For an active account this is "Replace secret": the
    previous ciphertext is retired (kept for ``secret_grace_days`` for rollback) instead of overwritten.

    Raises the verification's AppError when the provider refuses (nothing is stored; the refusal is
    audited — commit it if you want the record). With ``unverified_ok`` (the admin ticked "save unverified")
    and a vendor that could not be reached (:func:`may_save_unverified`), the secret is stored anyway and the
    account marked ``unverified``; the failed verification is returned.
    """
    provider = entry_for(account)
    replacing = account.status != "pending"
    if replacing and not typed:
        raise AppError("validation_failed", _("Enter the new value to replace the stored one."))
    secrets = _trial_secrets(db, cipher, provider, account, typed)
    values = account_values(provider, account)
    end_read(db)  # nothing held while the vendor answers
    result = verify_account(client, settings, provider, values, secrets)
    action = "account.secret.replace" if replacing else "account.secret.set"
    unverified = result.error is not None and unverified_ok and may_save_unverified(provider, result)
    if result.error is not None and not unverified:
        _audit_result(db, ctx, account, action, result, typed)
        raise result.error
    at = now or utcnow()
    grace = timedelta(days=settings.secret_grace_days)
    for name, value in typed.items():
        put_secret(db, cipher, OWNER, account.id, name, value, grace=grace, now=at)
    if typed:
        account.rotated_at = at
    if unverified:
        account.status = UNVERIFIED  # apply_verification keeps it so: the vendor was not reached
    apply_verification(account, result, at)
    headers.forget_account(db, account.id)
    _audit_result(
        db,
        ctx,
        account,
        action,
        result,
        typed,
        grace_days=settings.secret_grace_days if replacing else 0,
        **({"saved": "unverified"} if unverified else {}),
    )
    return result


def verify_stored(
    db: Session,
    cipher: Cipher,
    client: OutboundClient,
    settings: Settings,
    ctx: audit.AuditContext,
    account: ConnectedAccount,
) -> Verification:
    """ "Test now": verify the stored credentials and record the outcome on the account."""
    provider = entry_for(account)
    if account.status == "pending":
        raise AppError(
            "invalid_config", _("This account has no secret yet."), _("Enter it in the secret dialog first.")
        )
    secrets = load_secrets(db, cipher, provider, account.id)
    values = account_values(provider, account)
    end_read(db)  # nothing held while the vendor answers
    result = verify_account(client, settings, provider, values, secrets)
    apply_verification(account, result)
    _audit_result(db, ctx, account, "account.verify", result, {})
    return result


def rollback_secrets(db: Session, ctx: audit.AuditContext, account: ConnectedAccount) -> list[str]:
    """Restore the value(s) the last replacement retired; the replacing value(s) are deleted."""
    retired_at, _purge_after = _last_retired(db, account)
    if rollback_until(db, account) is None or retired_at is None:
        raise AppError(
            "conflict",
            _("There is no earlier value to roll back to."),
            _("Replaced values are kept only for the grace period (AMI_AUTH_SECRET_GRACE_DAYS)."),
        )
    fields = sorted(
        db.scalars(
            select(StoredSecret.field).where(
                StoredSecret.owner_type == OWNER,
                StoredSecret.owner_id == account.id,
                StoredSecret.retired_at == retired_at,
            )
        ).all()
    )
    restored_at: list[datetime] = []
    for name in fields:
        row = restore_previous(db, OWNER, account.id, name)
        if row is not None:
            restored_at.append(row.created_at)
    # The restored value's age counts for the rotation policy, not the rollback's.
    account.rotated_at = max(restored_at) if restored_at else account.rotated_at
    account.updated_at = utcnow()
    headers.forget_account(db, account.id)
    audit.record(db, ctx, "account.secret.rollback", target=_target(account), details={"encrypted_fields": fields})
    return fields


def verify_unverified(
    db: Session, cipher: Cipher, client: OutboundClient, settings: Settings, ctx: audit.AuditContext
) -> Iterator[tuple[ConnectedAccount, Verification]]:
    """The job: verify every account saved unverified; each becomes active, failing, or stays unverified while
    its vendor still cannot be reached (app.jobs: `ami-auth jobs verify-unverified` and the scheduler).

    Yields each outcome before it calls the next vendor, for the caller to commit there: an outcome's audit event
    takes the write lock (SQLite's one writer; the audit chain's lock on PostgreSQL), and one transaction over the
    whole loop held it through every later vendor call, each up to the outbound timeout and its retries."""
    rows = db.scalars(
        select(ConnectedAccount).where(ConnectedAccount.status == UNVERIFIED).order_by(ConnectedAccount.id)
    ).all()
    for account in rows:
        yield account, verify_stored(db, cipher, client, settings, ctx, account)
