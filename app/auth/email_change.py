"""Changing one's own email address: the new address is proven by a link mailed to it, the old one is told.

The rules a security reviewer expects (OWASP ASVS V2.5, the "change email" case):

* the current password is asked again (a borrowed session alone cannot take the account away); the face checks
  it under the sign-in throttle;
* nothing changes until the new address's owner follows the link (1 hour, single use; asking again voids the
  older link); an address another account has gets a note instead of a link, and the page says the same;
* on the change: the old address gets a notice (what changed, when, from where, what to do if it was not them);
  every pending link and code sent to the old address (password reset, verification, unlock, sign-in code) is
  void; every *other* session of the user ends; the new address counts as verified (its owner followed the
  link).

Logic only: takes a Session; commits before sending a mail (a mail never describes a rolled-back change).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app import audit
from app.audit import AuditContext
from app.auth import mail_tokens, mails, passwords, sessions, users
from app.errors import N_, AppError
from app.models import LinkToken, User, utcnow
from app.models.tokens import TokenPurpose
from app.settings import Settings

EXPIRED_HINT = "Links work once and for 1 hour. Ask for a new one on your account page."
# What was sent to the old address and must not outlive it.
VOIDED_ON_CHANGE: tuple[TokenPurpose, ...] = ("reset", "verify", "unlock", "signin_code", "email_change")


@dataclass(frozen=True)
class EmailChanged:
    old: str
    new: str
    sessions_ended: int


def request_change(
    db: Session, settings: Settings, ctx: AuditContext, user: User, *, new_email: str, password: str
) -> str:
    """Mail a confirmation link to ``new_email`` (or a note that it is taken); returns the normalised address."""
    if user.password_hash is None:
        raise AppError(
            "validation_failed",
            fields={"password": N_("Your account has no password yet. Set one with a reset link first.")},
        )
    if not passwords.verify_password(settings, user.password_hash, password):
        audit.record(db, ctx, "email_change.requested", target=f"user:{user.id}", outcome="failure")
        db.commit()
        raise AppError("invalid_credentials", fields={"password": N_("This is not your current password.")})
    address = users.validate_email(new_email)
    if address == user.email:
        raise AppError("validation_failed", fields={"new_email": N_("This is already your address.")})
    mails.check_mail_allowed(db, settings, ctx, purpose="email_change", to=address)
    taken = users.get_by_email(db, address) is not None
    if taken:
        mail = mails.render("email_change_taken", settings, email=address)
    else:
        raw = mail_tokens.issue_token(db, "email_change", user_id=user.id, email=address)
        mail = mails.render(
            "email_change",
            settings,
            user=user,
            new_email=address,
            link=mails.link(settings, f"/account/email/{raw}"),
            minutes=60,
        )
    audit.record(
        db, ctx, "email_change.requested", target=f"user:{user.id}", details={"address": "taken" if taken else "free"}
    )
    db.commit()
    mails.send(db, settings, address, mail)
    return address


def _valid(db: Session, token: LinkToken | None) -> User | None:
    if token is None or token.user_id is None:
        return None
    user = db.get(User, token.user_id)
    if user is None or not user.is_active:
        return None
    return user


def pending_change(db: Session, raw: str) -> tuple[User, str]:
    """The user and the new address a link is for, or ``token_expired``."""
    token = mail_tokens.find_token(db, "email_change", raw)
    user = _valid(db, token)
    if user is None or token is None:
        raise AppError("token_expired", N_("This email change link is no longer valid."), EXPIRED_HINT, status=410)
    return user, token.email


def confirm_change(
    db: Session, settings: Settings, ctx: AuditContext, raw: str, *, keep_session: str | None, where: str
) -> EmailChanged:
    """Follow the link: the address changes, the old one is told, what was sent to it is void."""
    token = mail_tokens.consume_token(db, "email_change", raw)
    user = _valid(db, token)
    if user is None or token is None:
        db.rollback()
        raise AppError("token_expired", N_("This email change link is no longer valid."), EXPIRED_HINT, status=410)
    new = token.email
    if users.get_by_email(db, new) is not None:
        db.rollback()
        raise AppError(
            "conflict",
            N_("Another account has this address now."),
            N_("Ask for a change to another address."),
            status=409,
        )
    old = user.email
    for purpose in VOIDED_ON_CHANGE:
        mail_tokens.invalidate_tokens(db, purpose, user_id=user.id)
    user.email = new
    user.email_verified_at = utcnow()
    ended = sessions.revoke_user_sessions(db, user.id, keep=keep_session, reason="email changed")
    audit.record(db, ctx, "email_change.confirmed", target=f"user:{user.id}", details={"sessions_ended": ended})
    db.commit()
    notice = mails.render(
        "email_changed", settings, user=user, old_email=old, new_email=new, when=utcnow(), where=where
    )
    mails.send(db, settings, old, notice)
    return EmailChanged(old, new, ended)
