"""Connected-account snapshots for the CMS: what an account is and whether it works — never a secret.

The stored ``ConnectedAccount.status`` is each feature's own word (API-key accounts: ``pending`` /
``active`` / ``failing`` / ``unverified``; OAuth accounts: ``active`` / ``consent_required`` / ``expired``).
The CMS gets one vocabulary, derived here, plus ``status_reason`` saying why:

=================  ==========================================================================================
``active``         usable (``ok``), or usable but saved while the vendor could not be reached, so the key has not
                   been checked yet; the verification job retries it (``unverified``)
``expiring``       usable, and the access token expires within AMI_AUTH_TOKEN_REFRESH_MARGIN_MINUTES (or
                   already has, with no failed refresh yet): the refresh job is on it (``refresh_due``)
``consent_required`` only the user can fix it by reconnecting: the provider refused the refresh token
                   (``consent_required``) or the token ran out without one (``token_expired``)
``error``          the last check failed: the API key's verification (``verification_failed``), or the token
                   expired and refreshing it keeps failing (``refresh_failing``); ``last_error`` says why
``disabled``       not usable until an admin acts: its provider config is disabled (``config_disabled``), or no
                   secret is stored — never entered, or revoked through the API (``no_secret``)
=================  ==========================================================================================

The same rules exist twice, as Python (:func:`derive_status`, for one row) and as SQL (:func:`status_filter`,
for the ``status`` filter with keyset paging); a test checks that they agree on every kind of row.
Logic only: no Flask request globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import ColumnElement, Select, and_, not_, or_, select
from sqlalchemy.orm import Session

from app.api.provider_types import identifier_names, sends_mail
from app.connectors.smtp import sends_today
from app.models import ConnectedAccount, ProviderConfig
from app.providers.registry import entry as catalog_entry

Status = Literal["active", "expiring", "consent_required", "error", "disabled"]
STATUSES: Final[tuple[Status, ...]] = ("active", "expiring", "consent_required", "error", "disabled")
Reason = Literal[
    "ok",
    "unverified",
    "refresh_due",
    "consent_required",
    "token_expired",
    "verification_failed",
    "refresh_failing",
    "config_disabled",
    "no_secret",
    "unknown",
]
REASONS: Final[tuple[Reason, ...]] = (
    "ok",
    "unverified",
    "refresh_due",
    "consent_required",
    "token_expired",
    "verification_failed",
    "refresh_failing",
    "config_disabled",
    "no_secret",
    "unknown",
)

# The stored statuses (see the module docstring) and what they are to the CMS.
NO_SECRET: Final = "pending"
FAILING: Final = "failing"
UNVERIFIED: Final = "unverified"
ACTIVE: Final = "active"
CONSENT_REQUIRED: Final = "consent_required"
EXPIRED: Final = "expired"
KNOWN: Final = (NO_SECRET, FAILING, UNVERIFIED, ACTIVE, CONSENT_REQUIRED, EXPIRED)

PAGE_MAX: Final = 100
PAGE_DEFAULT: Final = 50


def derive_status(account: ConnectedAccount, now: datetime, margin: timedelta) -> tuple[Status, Reason]:
    """The CMS's status of one account (its provider config loaded)."""
    if not account.provider_config.enabled:
        return "disabled", "config_disabled"
    raw = account.status
    if raw == NO_SECRET:
        return "disabled", "no_secret"
    if raw == CONSENT_REQUIRED:
        return "consent_required", "consent_required"
    if raw == EXPIRED:
        return "consent_required", "token_expired"
    if raw == FAILING:
        return "error", "verification_failed"
    if raw == UNVERIFIED:
        return "active", "unverified"
    if raw != ACTIVE:
        return "error", "unknown"
    expires_at = account.expires_at
    if expires_at is not None and expires_at <= now and account.last_error_code is not None:
        return "error", "refresh_failing"
    if expires_at is not None and expires_at <= now + margin:
        return "expiring", "refresh_due"
    return "active", "ok"


def status_filter(status: Status, now: datetime, margin: timedelta) -> ColumnElement[bool]:
    """:func:`derive_status` as a WHERE clause (the query joins ProviderConfig)."""
    ca = ConnectedAccount
    enabled = ProviderConfig.enabled.is_(True)
    refresh_failing = and_(ca.expires_at.is_not(None), ca.expires_at <= now, ca.last_error_code.is_not(None))
    due = and_(ca.expires_at.is_not(None), ca.expires_at <= now + margin)
    if status == "disabled":
        return or_(not_(enabled), ca.status == NO_SECRET)
    if status == "consent_required":
        return and_(enabled, ca.status.in_((CONSENT_REQUIRED, EXPIRED)))
    if status == "error":
        return and_(
            enabled,
            or_(ca.status == FAILING, ca.status.not_in(KNOWN), and_(ca.status == ACTIVE, refresh_failing)),
        )
    if status == "expiring":
        return and_(enabled, ca.status == ACTIVE, due, not_(refresh_failing))
    return and_(enabled, or_(ca.status == UNVERIFIED, and_(ca.status == ACTIVE, not_(due))))


@dataclass(frozen=True)
class Filters:
    provider_type: str | None = None
    provider_config_id: int | None = None
    status: Status | None = None
    user_id: int | None = None


def _query(filters: Filters, now: datetime, margin: timedelta) -> Select[ConnectedAccount]:
    query = select(ConnectedAccount).join(ProviderConfig, ConnectedAccount.provider_config_id == ProviderConfig.id)
    if filters.provider_type is not None:
        query = query.where(ProviderConfig.provider_type == filters.provider_type)
    if filters.provider_config_id is not None:
        query = query.where(ConnectedAccount.provider_config_id == filters.provider_config_id)
    if filters.user_id is not None:
        query = query.where(ConnectedAccount.user_id == filters.user_id)
    if filters.status is not None:
        query = query.where(status_filter(filters.status, now, margin))
    return query


@dataclass(frozen=True)
class Page:
    accounts: list[ConnectedAccount]
    next_cursor: str | None


def list_page(
    db: Session, filters: Filters, *, now: datetime, margin: timedelta, limit: int, after: int | None
) -> Page:
    """One page in id order (keyset paging: the cursor is the last id seen, so rows added or deleted
    meanwhile never make a page skip or repeat one)."""
    query = _query(filters, now, margin)
    if after is not None:
        query = query.where(ConnectedAccount.id > after)
    rows = list(db.scalars(query.order_by(ConnectedAccount.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, str(rows[-1].id) if more and rows else None)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# Kept on OAuth accounts for the claims mapping; the snapshot gives what the hooks made of it instead.
_RAW_CLAIMS: Final = "userinfo"


def snapshot(account: ConnectedAccount, now: datetime, margin: timedelta) -> dict[str, Any]:
    """The JSON snapshot (schema ``AccountSnapshot<Type>``). Identifiers are the account's non-secret fields:
    secret fields live in the vault and are never part of the row. ``provider_data`` is what the provider
    said at the last check (no raw claims); ``mail`` an SMTP account's cap and today's count."""
    cfg = account.provider_config
    provider = catalog_entry(cfg.provider_type)
    status, reason = derive_status(account, now, margin)
    stored = account.identifiers or {}
    identifiers = {name: stored[name] for name in identifier_names(provider) if name in stored}
    data = {key: value for key, value in (account.provider_data or {}).items() if key != _RAW_CLAIMS}
    body: dict[str, Any] = {}
    if sends_mail(provider):
        cap = stored.get("daily_send_cap")
        body["mail"] = {"daily_cap": cap if isinstance(cap, int) else None, "sent_today": sends_today(account, now)}
    last_error = None
    if account.last_error_code is not None:
        last_error = {
            "code": account.last_error_code,
            "hint": account.last_error_hint or "",
            "at": _iso(account.last_error_at),
        }
    return {
        "id": account.id,
        "provider_type": cfg.provider_type,
        "auth_mode": provider.auth_mode.value,
        "provider_config": {"id": cfg.id, "name": cfg.name, "enabled": cfg.enabled},
        "user_id": account.user_id,
        "label": account.label,
        "subject": account.subject,
        "identifiers": identifiers,
        "provider_data": data,
        "scopes": list(account.scopes or []),
        "status": status,
        "status_reason": reason,
        "expires_at": _iso(account.expires_at),
        "last_used_at": _iso(account.last_used_at),
        "last_verified_at": _iso(account.last_verified_at),
        "rotated_at": _iso(account.rotated_at),
        "created_at": _iso(account.created_at),
        "last_error": last_error,
        **body,
    }
