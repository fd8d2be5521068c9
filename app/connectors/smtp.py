"""SMTP accounts as mailers: the daily send cap, the admin-marked system mailer, test mails.

The cap is counted in the account row (``send_day`` + ``send_count``) by one conditional UPDATE in its own
short transaction: concurrent workers cannot overshoot it, and a refused send is ``rate_limited`` with the
seconds until the next UTC day. The system mailer is the one SMTP account with ``system_mailer`` set; the
:class:`~app.mailer.Mailer` finds it through :func:`system_mailer` (which the app factory registers with it)
and every mail it sends through that account counts against the cap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, and_, case, or_, select, update
from sqlalchemy.orm import Session

from app import audit
from app.connectors import accounts
from app.connectors.headers import account_values, load_secrets
from app.connectors.smtp_login import smtp_target
from app.connectors.verify import Verification, verify_account
from app.errors import AppError
from app.i18n import gettext as _
from app.mailer import SmtpTarget
from app.models import ConnectedAccount
from app.models.base import utcnow
from app.net import OutboundClient
from app.providers.registry import get_catalog
from app.providers.types import AuthMode
from app.settings import Settings
from app.vault import Cipher

log = logging.getLogger("ami_auth.smtp")


def _day(now: datetime) -> str:
    return now.date().isoformat()


def _seconds_to_midnight(now: datetime) -> int:
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


def reserve_send(engine: Engine, account_id: int, cap: int | None, now: datetime | None = None) -> None:
    """Count one mail against the account's daily cap (UTC day); ``rate_limited`` when it is reached."""
    at = now or utcnow()
    today = _day(at)
    same_day = ConnectedAccount.send_day == today
    allowed = ConnectedAccount.id == account_id
    if cap is not None:
        allowed = and_(allowed, or_(ConnectedAccount.send_day.is_(None), ~same_day, ConnectedAccount.send_count < cap))
    statement = (
        update(ConnectedAccount)
        .where(allowed)
        .values(
            send_count=case((same_day, ConnectedAccount.send_count + 1), else_=1),
            send_day=today,
            updated_at=ConnectedAccount.updated_at,  # a counter is not a change to the account
        )
        .execution_options(synchronize_session=False)
    )
    with Session(engine) as session, session.begin():
        result = cast(CursorResult[Any], session.execute(statement))
    if result.rowcount == 0:
        wait = _seconds_to_midnight(at)
        raise AppError(
            "rate_limited",
            _("This SMTP account reached its daily send cap (%(cap)s mails).", cap=cap),
            _("Mail resumes at 00:00 UTC; raise the account's daily send cap if this is normal traffic."),
            retry_after=wait,
        )


def sends_today(account: ConnectedAccount, now: datetime | None = None) -> int:
    return account.send_count if account.send_day == _day(now or utcnow()) else 0


def _cap(account: ConnectedAccount) -> int | None:
    cap = (account.identifiers or {}).get("daily_send_cap")
    return cap if isinstance(cap, int) else None


def send_cap_check(db: Session, account: ConnectedAccount) -> Callable[[], None]:
    """A callable that counts one mail against the account's cap (``SmtpTarget.before_send``)."""
    bind = db.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    account_id, cap = account.id, _cap(account)
    return lambda: reserve_send(engine, account_id, cap)


def is_smtp(account: ConnectedAccount) -> bool:
    found = get_catalog().get(account.provider_config.provider_type)
    return found is not None and found.auth_mode == AuthMode.SMTP


def account_target(db: Session, cipher: Cipher, settings: Settings, account: ConnectedAccount) -> SmtpTarget:
    """The mailer target for a stored SMTP account; each delivery through it counts against its cap."""
    provider = accounts.entry_for(account)
    secrets = load_secrets(db, cipher, provider, account.id)
    return smtp_target(account_values(provider, account), secrets, settings, before_send=send_cap_check(db, account))


def system_mailer(db: Session, settings: Settings) -> SmtpTarget | None:
    """The admin-marked SMTP account's target, or None (the Mailer then uses AMI_AUTH_SMTP_URL)."""
    account = db.scalars(select(ConnectedAccount).where(ConnectedAccount.system_mailer.is_(True)).limit(1)).first()
    if account is None or not is_smtp(account):
        return None
    if not account.provider_config.enabled or account.status == "pending":
        log.warning("system mailer account %s is not usable (config disabled or no secret)", account.id)
        return None
    return account_target(db, Cipher(settings.master_keys), settings, account)


def set_system_mailer(db: Session, ctx: audit.AuditContext, account: ConnectedAccount, on: bool) -> None:
    """Mark (or unmark) the account as the app's mailer; at most one account is marked."""
    if not is_smtp(account):
        raise AppError("invalid_config", _("Only an SMTP account can be the system mailer."))
    if on and account.status == "pending":
        raise AppError("invalid_config", _("Enter and verify the account's password first."))
    if on:
        db.execute(
            update(ConnectedAccount)
            .where(ConnectedAccount.system_mailer.is_(True), ConnectedAccount.id != account.id)
            .values(system_mailer=False)
            .execution_options(synchronize_session="fetch")
        )
    account.system_mailer = on
    audit.record(
        db,
        ctx,
        "account.system_mailer.set" if on else "account.system_mailer.unset",
        target=f"connected_account:{account.id}",
    )


def send_test_mail(
    db: Session,
    cipher: Cipher,
    client: OutboundClient,
    settings: Settings,
    ctx: audit.AuditContext,
    account: ConnectedAccount,
    to: str,
) -> Verification:
    """Verify the stored login and send a test mail to ``to`` (counted against the cap)."""
    provider = accounts.entry_for(account)
    secrets = load_secrets(db, cipher, provider, account.id)
    result = verify_account(
        client,
        settings,
        provider,
        account_values(provider, account),
        secrets,
        send_test_to=to,
        before_send=send_cap_check(db, account),
    )
    accounts.apply_verification(account, result)
    audit.record(
        db,
        ctx,
        "account.smtp.test_mail",
        target=f"connected_account:{account.id}",
        outcome="failure" if result.error else "success",
        details={"code": result.error.code if result.error else None},
    )
    return result
