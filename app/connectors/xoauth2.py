"""SMTP XOAUTH2: the access token of a connected Google, Microsoft (Entra) or OpenID account, for the mailer.

An SMTP account with ``auth_mechanism: XOAUTH2`` names a connected OAuth account (``oauth_account_id``).
Before each login the mailer asks :func:`smtp_access_token` for that account's current access token:

* the account must exist, be on an enabled Google, Entra ID or generic OIDC provider config (GitHub has
  no mail server), belong to an admin (a member's own Google account never sends the app's mail: only
  admins manage SMTP accounts, and they may only lend their own kind of account) and be ``active``;
  otherwise ``invalid_config`` / ``consent_required`` on ``oauth_account_id``;
* a token that expires within :data:`MARGIN` is refreshed first, through the same claimed refresh the job
  and "Refresh now" use (:func:`app.oauth.renewal.refresh_access_token`), so a rotated refresh token is
  stored before it is used and never raced;
* every hand-out is audited (``account.token.used``, ``details.for = smtp_xoauth2``).

The token is read in its own short transaction on the app's engine, never in the caller's: the caller may
be in the middle of saving a form, and a refresh commits.

The SMTP login (:mod:`app.connectors.smtp_login`) only knows ``Settings``; :func:`register` (called by
the app factory) maps the app's database URL to the app, so the lookup works in a request, a CLI command
and the scheduler's threads alike.
"""

from __future__ import annotations

import threading
import weakref
from datetime import timedelta
from typing import Final

from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app import audit
from app.connectors.smtp_login import set_xoauth2_token_provider
from app.errors import AppError, ErrorCode
from app.extensions import get_database
from app.i18n import gettext as _
from app.models import ConnectedAccount, ProviderConfig, User, utcnow
from app.oauth.connections import ACTIVE, load_tokens
from app.oauth.renewal import refresh_access_token
from app.oauth.runtime import OAuthRuntime, runtime
from app.providers.registry import get_catalog
from app.settings import Settings

__all__ = ["MARGIN", "access_token", "eligible_accounts", "register", "smtp_access_token"]

# Refresh a token this close to expiry: an SMTP session must not outlive it.
MARGIN: Final = timedelta(seconds=120)
FIELD: Final = "oauth_account_id"

_APPS: dict[str, weakref.ref[Flask]] = {}
_LOCK = threading.Lock()


def eligible_accounts(db: Session, account_id: int | None = None) -> list[ConnectedAccount]:
    """Connected accounts whose token XOAUTH2 may send (or just ``account_id`` if it is one): an admin's, on
    an enabled config of a type whose tokens a mail server can accept (the catalog's ``xoauth2`` capability:
    Google, Entra ID, OpenID). The console offers these; :func:`access_token` checks."""
    eligible = get_catalog().ids(lambda e: e.capabilities.xoauth2)
    query = (
        select(ConnectedAccount)
        .join(ProviderConfig, ProviderConfig.id == ConnectedAccount.provider_config_id)
        .join(User, User.id == ConnectedAccount.user_id)
        .where(ProviderConfig.provider_type.in_(eligible), ProviderConfig.enabled.is_(True), User.role == "admin")
        .order_by(ConnectedAccount.id)
        .limit(200)
    )
    if account_id is not None:
        query = query.where(ConnectedAccount.id == account_id)
    return list(db.scalars(query))


def _field_error(code: ErrorCode, message: str, hint: str, field_text: str) -> AppError:
    return AppError(code, message, hint, fields={FIELD: field_text})


def access_token(rt: OAuthRuntime, engine: Engine, account_id: int) -> str:
    """The current access token of connected OAuth account ``account_id`` (refreshed when due); audited."""
    with Session(engine, expire_on_commit=False) as db:
        found = eligible_accounts(db, account_id)
        account = found[0] if found else None
        if account is None:
            raise _field_error(
                "invalid_config",
                _("There is no admin's connected Google, Microsoft or OpenID account with id %(id)s.", id=account_id),
                _("Connect the mailbox's account under Connections, then enter the id shown on its card."),
                _("Enter the id of a connected Google, Microsoft or OpenID account."),
            )
        if account.status != ACTIVE:
            raise _field_error(
                "consent_required",
                _(
                    "The connected account “%(label)s” needs to be reconnected (%(status)s).",
                    label=account.label,
                    status=account.status,
                ),
                _("Its owner reconnects it under Connections; mail through this account stops until then."),
                _("This OAuth account must be reconnected."),
            )
        tokens = load_tokens(db, rt.cipher, account.id)
        if tokens is None:
            raise _field_error(
                "invalid_config",
                _("The connected account “%(label)s” holds no token.", label=account.label),
                _("Reconnect it under Connections."),
                _("This OAuth account holds no token."),
            )
        if tokens.expires_at is not None and tokens.expires_at <= utcnow() + MARGIN:
            try:
                tokens = refresh_access_token(db, account, rt)
            except AppError as exc:
                raise AppError(
                    exc.code, exc.message, exc.hint, fields={FIELD: exc.text}, retry_after=exc.retry_after
                ) from None
        audit.record(
            db,
            audit.AuditContext(actor="system"),
            "account.token.used",
            target=f"connected_account:{account.id}",
            details={"for": "smtp_xoauth2"},
        )
        db.commit()
        return tokens.access_token


def smtp_access_token(settings: Settings, account_id: int) -> str:
    """The hook the SMTP connector calls: finds the app serving ``settings``' database."""
    with _LOCK:
        ref = _APPS.get(settings.database_url)
    app = ref() if ref is not None else None
    if app is None:
        raise _field_error(
            "invalid_config",
            _("XOAUTH2 tokens are only available inside the AMI Auth app."),
            _("Send mail through the app, its CLI or its jobs."),
            _("XOAUTH2 is not available here."),
        )
    return access_token(runtime(app), get_database(app).engine, account_id)


def register(app: Flask) -> None:
    """Let SMTP accounts of this app's database use XOAUTH2 (the app factory calls this)."""
    settings: Settings = app.extensions["ami_settings"]
    with _LOCK:
        _APPS[settings.database_url] = weakref.ref(app)
    set_xoauth2_token_provider(smtp_access_token)
