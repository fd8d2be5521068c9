"""Sign-in by a one-time code mailed to a verified address (Kratos' code method, allauth's login-by-code).

Turned on per deployment (``AMI_AUTH_EMAIL_CODE_SIGNIN``). The rules a reviewer looks for:

* enumeration-safe: asking for a code answers the same page for any address; the mailbox gets either the code
  or a note that no account signs in with a code there (as the password reset does), so the timing is the same;
* single use and expiring: one live code per user (asking again replaces it), stored as a SHA-256 of the user id
  and the code, spent by compare-and-set, dead after :data:`LIFETIME`;
* throttled: the mail by the shared mail throttle (per recipient and client), the guesses by the sign-in
  throttle (the face calls it, as for a password) and by :data:`WRONG_GUESSES` per code — after that many wrong
  guesses the code is void, so six digits cannot be walked;
* the code is a first factor only: the face sends a user with a second factor through the second step, and the
  role's MFA rule applies after it as after any sign-in.

Logic only: takes a Session; ``request_code`` commits before sending (a mail never describes a rolled-back
change), ``check_code`` leaves the commit to the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from limits import RateLimitItemPerMinute
from limits.storage import Storage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app import audit
from app.audit import AuditContext
from app.auth import mail_tokens, mails, users
from app.models import LinkToken, User, utcnow
from app.settings import Settings

SIGNIN_CODE: Final = "signin_code"
LIFETIME = mail_tokens.LIFETIMES[SIGNIN_CODE]
DIGITS = 6
WRONG_GUESSES = 5
_GUESSES = RateLimitItemPerMinute(WRONG_GUESSES, int(LIFETIME.total_seconds() // 60), namespace="ami-signin-code")


def _digest(user_id: int, code: str) -> str:
    return hashlib.sha256(f"{SIGNIN_CODE}:{user_id}:{code}".encode()).hexdigest()


def normalize_code(raw: str) -> str:
    """What the person typed, without the spaces and dashes people add when copying a code."""
    return "".join(ch for ch in raw if ch.isdigit())[: DIGITS + 1]


def can_use(user: User | None) -> bool:
    return user is not None and user.is_active and user.email_verified_at is not None


def request_code(db: Session, settings: Settings, ctx: AuditContext, email: str) -> None:
    """Mail a sign-in code, or a note that this address has none (the caller shows one page either way)."""
    address = users.validate_email(email)
    mails.check_mail_allowed(db, settings, ctx, purpose=SIGNIN_CODE, to=address)
    user = users.get_by_email(db, address)
    minutes = int(LIFETIME.total_seconds() // 60)
    if user is not None and can_use(user):
        code = "".join(secrets.choice("0123456789") for _ in range(DIGITS))
        # One live code per user: the new one replaces (deletes) the old, so its hash cannot collide with it.
        db.execute(delete(LinkToken).where(LinkToken.purpose == SIGNIN_CODE, LinkToken.user_id == user.id))
        now = utcnow()
        db.add(
            LinkToken(
                purpose=SIGNIN_CODE,
                token_hash=_digest(user.id, code),
                user_id=user.id,
                email=user.email,
                created_at=now,
                expires_at=now + LIFETIME,
            )
        )
        mail = mails.render("signin_code", settings, user=user, code=code, minutes=minutes)
    else:
        mail = mails.render("signin_code_unknown", settings, email=address, signin_link=mails.link(settings, "/signin"))
    audit.record(
        db,
        ctx,
        "signin_code.requested",
        target=f"user:{user.id}" if user is not None else f"email:{address}",
        details={"account": "usable" if can_use(user) else "none" if user is None else "not_usable"},
    )
    db.commit()
    mails.send(db, settings, address, mail)


def check_code(db: Session, storage: Storage, email: str, raw_code: str) -> User | None:
    """The user a right, live code signs in (the code is spent), or None. A wrong guess counts against the code:
    after :data:`WRONG_GUESSES` it is void."""
    user = users.get_by_email(db, users.normalize_email(email))
    if user is None or not can_use(user):
        return None
    token = db.scalar(
        select(LinkToken).where(
            LinkToken.purpose == SIGNIN_CODE, LinkToken.user_id == user.id, LinkToken.used_at.is_(None)
        )
    )
    if token is None or token.expires_at <= utcnow():
        return None
    code = normalize_code(raw_code)
    if len(code) != DIGITS or not hmac.compare_digest(token.token_hash, _digest(user.id, code)):
        limiter = MovingWindowRateLimiter(storage)
        limiter.hit(_GUESSES, str(token.id))
        if not limiter.test(_GUESSES, str(token.id)):
            token.used_at = utcnow()  # the last wrong guess it allows: this code is void, ask for a new one
        return None
    spent = db.execute(
        update(LinkToken).where(LinkToken.id == token.id, LinkToken.used_at.is_(None)).values(used_at=utcnow())
    )
    if getattr(spent, "rowcount", 0) != 1:
        return None
    return user


def void_codes(db: Session, user_id: int) -> None:
    """A password change or email change ends any code in flight."""
    mail_tokens.invalidate_tokens(db, SIGNIN_CODE, user_id=user_id)
