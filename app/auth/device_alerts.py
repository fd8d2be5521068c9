"""New-device alerts: a mail when a sign-in completes in a browser the account has not used before.

"Not used before" is the sign-in throttle's memory of the account's browsers (the ``ami_device`` cookie,
app.auth.throttle.remember_source, 90 days). An account's very first sign-in is no news, so it is not mailed.
The mail says what (browser and system), when, where (the client address) and links to the sessions, where the
user can end the session and change the password. It goes through the shared mail throttle per recipient; a
refused or failed alert never fails the sign-in (it is logged and audited instead).
"""

from __future__ import annotations

import logging
from datetime import datetime

from limits.storage import Storage
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import audit
from app.audit import AuditContext
from app.auth import mails, throttle
from app.auth.devices import device_summary
from app.errors import N_, AppError
from app.models import User, UserSession
from app.settings import Settings

log = logging.getLogger("ami_auth.mail")


def is_new_browser(
    db: Session, storage: Storage, settings: Settings, user: User, *, ip: str, device: str | None
) -> bool:
    """Whether a sign-in about to complete deserves an alert (call before the session is created)."""
    if not settings.new_device_alerts or user.email_verified_at is None:
        return False
    if device is not None and throttle.source_of(storage, user.email, ip, device) == "known_device":
        return False
    earlier = db.scalar(select(func.count()).select_from(UserSession).where(UserSession.user_id == user.id))
    return bool(earlier)


def send_alert(
    db: Session, settings: Settings, ctx: AuditContext, user: User, *, ip: str, user_agent: str, when: datetime
) -> None:
    """Mail the alert after the sign-in committed; never raises (the person is signed in either way)."""
    try:
        mails.check_mail_allowed(db, settings, ctx, purpose="new_device", to=user.email)
        mail = mails.render(
            "new_device",
            settings,
            user=user,
            device=device_summary(user_agent),
            ip=ip or N_("unknown address"),
            when=when,
            sessions_link=mails.link(settings, "/account/#sessions-heading"),
        )
        mails.send(db, settings, user.email, mail)
    except AppError as exc:
        db.rollback()
        log.warning("new-device alert for user %s not sent: %s (%s)", user.id, exc.text, exc.code)
        audit.record(db, ctx, "signin.new_device_alert", target=f"user:{user.id}", outcome="failure")
    else:
        audit.record(
            db, ctx, "signin.new_device_alert", target=f"user:{user.id}", details={"device": device_summary(user_agent)}
        )
    db.commit()
