"""Account lifecycle by mail and by the user: verification, password reset, invites, sign-up, unlock links,
password change.

Every function takes the database session, the settings and an :class:`AuditContext`, commits its own
change together with its audit event, and sends mail only after that commit. Link tokens are single
use and expire (app.auth.mail_tokens); a password change voids every outstanding reset link.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from limits.storage import Storage
from sqlalchemy.orm import Session

from app import audit
from app.audit import AuditContext
from app.auth import mail_tokens, mails, passwords, sessions, throttle, trusted_browsers, users
from app.errors import N_, AppError
from app.models import LinkToken, User, utcnow
from app.settings import Settings


def _expired(what: str, hint: str) -> AppError:
    return AppError("token_expired", N_("This %(what)s link is no longer valid.", what=what), hint, status=410)


RESET_EXPIRED_HINT = "Links work once and for 1 hour. Ask for a new one on the “Forgot password?” page."
INVITE_EXPIRED_HINT = "Invitations work once and for 7 days. Ask an administrator to send a new one."
VERIFY_EXPIRED_HINT = "Links work once and for 24 hours. Sign in and send a new one from your account page."
UNLOCK_EXPIRED_HINT = "Links work once and for 1 hour. Ask for a new one on the sign-in page."


def _check_new_password(settings: Settings, user: User, password: str, field: str = "password") -> str:
    problem = passwords.policy_problem(settings, password, user.email)
    if problem:
        raise AppError("validation_failed", fields={field: problem})
    return passwords.hash_password(settings, password)


def _set_password(db: Session, user: User, password_hash: str) -> None:
    """Store a new hash; void every reset link issued before it (they were for the old password)."""
    user.password_hash = password_hash
    user.password_changed_at = utcnow()
    user.must_change_password = False
    mail_tokens.invalidate_tokens(db, "reset", user_id=user.id)
    # A new password ends every trusted browser too: whoever knew the old one may have trusted theirs.
    trusted_browsers.clear(db, user.id)
    mail_tokens.invalidate_tokens(db, "signin_code", user_id=user.id)


# --- email verification ---------------------------------------------------------------------------


def send_verification(db: Session, settings: Settings, ctx: AuditContext, user: User) -> None:
    """Mail a 24-hour confirmation link (an earlier unused one stops working)."""
    if user.email_verified_at is not None:
        raise AppError("conflict", N_("This email address is already verified."), N_("Nothing to do."))
    mails.check_mail_allowed(db, settings, ctx, purpose="verify", to=user.email)
    raw = mail_tokens.issue_token(db, "verify", user_id=user.id, email=user.email)
    audit.record(db, ctx, "email.verification_sent", target=f"user:{user.id}")
    db.commit()
    mail = mails.render("verify", settings, user=user, link=mails.link(settings, f"/verify/{raw}"), hours=24)
    mails.send(db, settings, user.email, mail)


def verification_user(db: Session, raw: str) -> User:
    token = mail_tokens.find_token(db, "verify", raw)
    user = _token_user(db, token)
    if user is None:
        raise _expired("confirmation", VERIFY_EXPIRED_HINT)
    return user


def verify_email(db: Session, settings: Settings, ctx: AuditContext, raw: str) -> User:
    token = mail_tokens.consume_token(db, "verify", raw)
    user = _token_user(db, token)
    if user is None:
        db.rollback()
        raise _expired("confirmation", VERIFY_EXPIRED_HINT)
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
    audit.record(db, ctx, "email.verified", target=f"user:{user.id}")
    db.commit()
    return user


def _token_user(db: Session, token: LinkToken | None) -> User | None:
    """The active user a token was issued to, while the address it was sent to is still theirs."""
    if token is None or token.user_id is None:
        return None
    user = db.get(User, token.user_id)
    if user is None or not user.is_active or user.email != token.email:
        return None
    return user


# --- password reset ---------------------------------------------------------------------------------


def request_password_reset(db: Session, settings: Settings, ctx: AuditContext, email: str) -> None:
    """Mail a reset link to an account, or a note that there is none: the caller shows one page either way.

    The person asking learns nothing on the page; the mailbox owner learns whether an account exists,
    which is theirs to know (and spares them guessing which address they signed up with).
    """
    address = users.validate_email(email)
    mails.check_mail_allowed(db, settings, ctx, purpose="reset", to=address)
    user = users.get_by_email(db, address)
    if user is not None and user.is_active:
        raw = mail_tokens.issue_token(db, "reset", user_id=user.id, email=user.email)
        mail = mails.render("reset", settings, user=user, link=mails.link(settings, f"/reset/{raw}"), minutes=60)
    elif user is not None:
        mail = mails.render("reset_disabled", settings, email=address)
    else:
        mail = mails.render(
            "reset_unknown",
            settings,
            email=address,
            reset_link=mails.link(settings, "/reset"),
            signup_link=mails.link(settings, "/signup") if settings.signup == "open" else None,
        )
    _record_request(db, ctx, "password_reset.requested", user, address)
    db.commit()
    mails.send(db, settings, address, mail)


def _record_request(db: Session, ctx: AuditContext, action: str, user: User | None, address: str) -> None:
    """Audit a mail asked for by address, with whether an active account has it (the page never says)."""
    audit.record(
        db,
        ctx,
        action,
        target=f"user:{user.id}" if user is not None else f"email:{address}",
        details={"account": "active" if user is not None and user.is_active else "disabled" if user else "none"},
    )


def _valid_reset_token(db: Session, token: LinkToken | None) -> User | None:
    user = _token_user(db, token)
    if user is None or token is None:
        return None
    # A link from before the last password change is spent even if invalidation was missed somewhere.
    if user.password_changed_at is not None and token.created_at < user.password_changed_at:
        return None
    return user


def reset_user(db: Session, raw: str) -> User:
    """The user a reset link is for, or ``token_expired``."""
    user = _valid_reset_token(db, mail_tokens.find_token(db, "reset", raw))
    if user is None:
        raise _expired("reset", RESET_EXPIRED_HINT)
    return user


def reset_password(db: Session, settings: Settings, ctx: AuditContext, raw: str, password: str) -> User:
    """Set a new password from a reset link: ends every session of the user and voids their other links."""
    user = reset_user(db, raw)
    new_hash = _check_new_password(settings, user, password)
    token = mail_tokens.consume_token(db, "reset", raw)
    if _valid_reset_token(db, token) is None:
        db.rollback()
        raise _expired("reset", RESET_EXPIRED_HINT)
    _set_password(db, user, new_hash)
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()  # following the link proved the mailbox is theirs
    ended = sessions.revoke_user_sessions(db, user.id)
    audit.record(db, ctx, "password_reset.completed", target=f"user:{user.id}", details={"sessions_ended": ended})
    db.commit()
    return user


# --- invitations ------------------------------------------------------------------------------------


def invites_allowed(settings: Settings) -> bool:
    """Invites are mail links that create a credential: on in `open` and `invite`, off in `closed`."""
    return settings.signup != "closed"


def _require_invites(settings: Settings) -> None:
    if not invites_allowed(settings):
        raise AppError(
            "invalid_config",
            N_("Invitations are off (AMI_AUTH_SIGNUP=closed)."),
            N_("Create the user with a password instead, or set AMI_AUTH_SIGNUP=invite."),
            fields={"mode": N_("Invitations are off on this server; set a password instead.")},
        )


def send_invite(db: Session, settings: Settings, ctx: AuditContext, user: User, inviter: str = "") -> None:
    """Mail a 7-day link where the user sets their password (an earlier invite stops working)."""
    _require_invites(settings)
    if user.password_hash is not None:
        raise AppError(
            "conflict", N_("This user has already set a password."), N_("Send a password reset link instead.")
        )
    if not user.is_active:
        raise AppError("conflict", N_("This user is disabled."), N_("Enable the user first."))
    mails.check_mail_allowed(db, settings, ctx, purpose="invite", to=user.email)
    raw = mail_tokens.issue_token(db, "invite", user_id=user.id, email=user.email)
    db.commit()  # the link exists before the mail that carries it
    mail = mails.render(
        "invite", settings, user=user, inviter=inviter, link=mails.link(settings, f"/invite/{raw}"), days=7
    )
    try:
        mails.send(db, settings, user.email, mail)
    except AppError as exc:
        # Nobody received the link: void it, and record the invitation as failed (the user stays; the admin
        # is told and can send it again once the mailer works).
        db.rollback()
        mail_tokens.invalidate_tokens(db, "invite", user_id=user.id)
        audit.record(
            db,
            ctx,
            "user.invited",
            target=f"user:{user.id}",
            outcome="failure",
            details={"email": user.email, "mail": "not_sent", "reason": exc.code},
        )
        db.commit()
        raise
    audit.record(db, ctx, "user.invited", target=f"user:{user.id}", details={"email": user.email, "mail": "sent"})
    db.commit()


def invite_user(db: Session, raw: str) -> User:
    user = _token_user(db, mail_tokens.find_token(db, "invite", raw))
    if user is None or user.password_hash is not None:
        raise _expired("invitation", INVITE_EXPIRED_HINT)
    return user


def accept_invite(db: Session, settings: Settings, ctx: AuditContext, raw: str, password: str) -> User:
    """Set the first password from an invite link; the address is verified by following it."""
    user = invite_user(db, raw)
    new_hash = _check_new_password(settings, user, password)
    if mail_tokens.consume_token(db, "invite", raw) is None:
        db.rollback()
        raise _expired("invitation", INVITE_EXPIRED_HINT)
    _set_password(db, user, new_hash)
    user.email_verified_at = user.email_verified_at or utcnow()
    mail_tokens.invalidate_tokens(db, "invite", user_id=user.id)
    audit.record(db, ctx, "invite.accepted", target=f"user:{user.id}")
    db.commit()
    return user


# --- self sign-up -----------------------------------------------------------------------------------


def signup_open(settings: Settings) -> bool:
    return settings.signup == "open"


def signup(db: Session, settings: Settings, ctx: AuditContext, *, email: str, display_name: str, password: str) -> None:
    """Create a member and mail a confirmation link; for a taken address, mail its owner instead.

    The caller shows the same "check your inbox" page either way, so sign-up does not reveal which
    addresses have accounts (the password is hashed on both paths for the same reason).
    """
    if not signup_open(settings):
        raise AppError(
            "not_found", N_("Sign-up is not open on this server."), N_("Ask an administrator for an invitation.")
        )
    address = users.validate_email(email)
    problem = passwords.policy_problem(settings, password, address)
    if problem:
        raise AppError("validation_failed", fields={"password": problem})
    mails.check_mail_allowed(db, settings, ctx, purpose="signup", to=address)
    existing = users.get_by_email(db, address)
    if existing is not None:
        passwords.hash_password(settings, password)  # same work as creating an account
        audit.record(db, ctx, "signup.existing_email", target=f"user:{existing.id}", outcome="denied")
        db.commit()
        mail = mails.render(
            "signup_existing",
            settings,
            email=address,
            signin_link=mails.link(settings, "/signin"),
            reset_link=mails.link(settings, "/reset"),
        )
        mails.send(db, settings, address, mail)
        return
    user = users.create_user(db, settings, email=address, password=password, role="member", display_name=display_name)
    raw = mail_tokens.issue_token(db, "verify", user_id=user.id, email=user.email)
    audit.record(db, ctx, "user.create", target=f"user:{user.id}", details={"email": user.email, "via": "signup"})
    audit.record(db, ctx, "email.verification_sent", target=f"user:{user.id}")
    db.commit()
    mail = mails.render("verify", settings, user=user, link=mails.link(settings, f"/verify/{raw}"), hours=24)
    mails.send(db, settings, user.email, mail)


# --- unlock link (app.auth.throttle) -------------------------------------------------------------------


def request_unlock(db: Session, settings: Settings, ctx: AuditContext, email: str) -> None:
    """Mail an unlock link to an active account, or a note that there is none: the caller shows one page either
    way, and the mail throttle counts both alike, so the page says nothing about which addresses exist."""
    address = users.validate_email(email)
    mails.check_mail_allowed(db, settings, ctx, purpose="unlock", to=address)
    user = users.get_by_email(db, address)
    if user is not None and user.is_active:
        raw = mail_tokens.issue_token(db, "unlock", user_id=user.id, email=user.email)
        mail = mails.render("unlock", settings, user=user, link=mails.link(settings, f"/unlock/{raw}"), minutes=60)
    else:
        mail = mails.render("unlock_unknown", settings, email=address, reset_link=mails.link(settings, "/reset"))
    _record_request(db, ctx, "account.unlock_requested", user, address)
    db.commit()
    mails.send(db, settings, address, mail)


def unlock_user(db: Session, raw: str) -> User:
    """The user an unlock link is for, or ``token_expired``."""
    user = _token_user(db, mail_tokens.find_token(db, "unlock", raw))
    if user is None:
        raise _expired("unlock", UNLOCK_EXPIRED_HINT)
    return user


def unlock_with_link(db: Session, storage: Storage, ctx: AuditContext, raw: str) -> User:
    """Spend an unlock link: every sign-in lock of the account is lifted (audited ``account.unlocked`` by
    ``link``). The caller remembers the browser that followed it for the account."""
    user = _token_user(db, mail_tokens.consume_token(db, "unlock", raw))
    if user is None:
        db.rollback()
        raise _expired("unlock", UNLOCK_EXPIRED_HINT)
    throttle.unlock_account(storage, user.email, by="link", db=db, ctx=ctx)
    db.commit()
    return user


# --- self-service -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PasswordChanged:
    sessions_ended: int


def change_password(
    db: Session,
    settings: Settings,
    ctx: AuditContext,
    user: User,
    *,
    current: str,
    new: str,
    keep_session: str | None,
) -> PasswordChanged:
    """Change one's own password: the current one is asked again; every *other* session ends."""
    if not passwords.verify_password(settings, user.password_hash, current):
        audit.record(db, ctx, "password.change", target=f"user:{user.id}", outcome="failure")
        db.commit()
        raise AppError("invalid_credentials", fields={"current_password": N_("This is not your current password.")})
    if current == new:
        raise AppError(
            "validation_failed", fields={"new_password": N_("Choose a password different from the current one.")}
        )
    new_hash = _check_new_password(settings, user, new, field="new_password")
    _set_password(db, user, new_hash)
    ended = sessions.revoke_user_sessions(db, user.id, keep=keep_session)
    audit.record(db, ctx, "password.change", target=f"user:{user.id}", details={"sessions_ended": ended})
    db.commit()
    return PasswordChanged(ended)


def update_profile(db: Session, ctx: AuditContext, user: User, *, display_name: str) -> None:
    name = display_name.strip()
    if len(name) > 200:
        raise AppError("validation_failed", fields={"display_name": N_("Use at most 200 characters.")})
    if name == user.display_name:
        return
    user.display_name = name
    audit.record(db, ctx, "user.update", target=f"user:{user.id}", details={"fields": ["display_name"], "by": "self"})
    db.commit()


def update_locale(db: Session, ctx: AuditContext, user: User, *, locale: str, shipped: Sequence[str]) -> None:
    """The language the user reads pages and mails in: one of ``shipped``, or "" for the browser's (None)."""
    chosen = locale.strip() or None
    if chosen is not None and chosen not in shipped:
        raise AppError("validation_failed", fields={"locale": N_("Choose one of the languages in the list.")})
    if chosen == user.locale:
        return
    user.locale = chosen
    audit.record(db, ctx, "user.update", target=f"user:{user.id}", details={"fields": ["locale"], "by": "self"})
    db.commit()


def revoke_own_session(db: Session, ctx: AuditContext, user: User, public_id: str) -> None:
    record = sessions.find_live_session(db, user.id, public_id)
    if record is None:
        raise AppError("not_found", N_("That session has already ended."), N_("Reload the page to see your sessions."))
    sessions.revoke_session(db, record)
    audit.record(db, ctx, "session.revoked", target=f"user:{user.id}", details={"session": public_id, "by": "self"})
    db.commit()


def revoke_other_sessions(db: Session, ctx: AuditContext, user: User, keep_session: str) -> int:
    ended = sessions.revoke_user_sessions(db, user.id, keep=keep_session)
    audit.record(
        db, ctx, "session.revoked_all", target=f"user:{user.id}", details={"sessions_ended": ended, "by": "self"}
    )
    db.commit()
    return ended
