"""How every sign-in ends, whatever its first factor (a password, an OAuth provider, a passkey): the fresh
server-side session, or first the pending second-factor step for a user who has a factor.

The password page (:mod:`app.web.auth`), the OAuth callback (:mod:`app.web.oauth`) and the second-factor pages
(:mod:`app.web.mfa`) all come through here, so none of them imports another.
"""

from __future__ import annotations

import time
from typing import Any

from flask import after_this_request, redirect, request, session, url_for
from flask_login import login_user
from werkzeug.wrappers import Response

from app import audit
from app.auth import device_alerts, mfa, sessions, throttle, trusted_browsers
from app.errors import N_, AppError
from app.extensions import db_session, get_limit_storage, get_settings
from app.http.context import SignedIn, audit_ctx, client_ip, user_agent
from app.models import User, utcnow
from app.services import mfa as mfa_flows
from app.web.browser import browser_id, remember_browser
from app.web.common import landing, safe_next

PENDING_KEY = "mfa_pending"
PENDING_SECONDS = 5 * 60
CHALLENGE_KEY = "webauthn_challenges"


def establish_session(user: User, methods: list[str], *, mfa_verified: bool = False) -> None:
    """Start a fresh server-side session: the old cookie contents (and CSRF token) are dropped (fixation).

    Commits what the caller left pending (the ``signin.success`` event) in the same transaction as the session
    record, so a sign-in is audited if and only if its session exists: when the database refuses the write
    (app.faults: 503), neither is kept and no cookie is set.

    Every completed sign-in comes through here, whatever the method: this browser and network become known
    to the account, so the sign-in throttle counts their failures apart from a stranger's.
    """
    db = db_session()
    settings, ip = get_settings(), client_ip()
    alert = device_alerts.is_new_browser(db, get_limit_storage(), settings, user, ip=ip, device=browser_id())
    raw, record = sessions.start_session(
        db,
        settings,
        user,
        ip=ip,
        user_agent=user_agent(),
        methods=methods,
        mfa_verified=mfa_verified,
    )
    db.commit()
    session.clear()
    login_user(SignedIn(raw, record))
    remember_browser(user.email)
    if alert:
        device_alerts.send_alert(db, settings, audit_ctx(), user, ip=ip, user_agent=user_agent(), when=utcnow())


def record_failed_signin(email: str, method: str, **details: str) -> throttle.Throttled | None:
    """A wrong first factor (password, mailed code, the password that links a provider): counted by the sign-in
    throttle and audited, committed. Returns the lock when this failure crossed a limit."""
    db, settings, storage = db_session(), get_settings(), get_limit_storage()
    lock = throttle.record_failure(storage, settings, email, client_ip(), device=browser_id(), db=db, ctx=audit_ctx())
    audit.record(
        db,
        audit_ctx(),
        "signin.failure",
        target=f"email:{email}",
        outcome="failure",
        details={"method": method, **details},
    )
    db.commit()
    return lock


# --- Pending sign-in (first factor done, second factor to go) -------------------------------------------------


def needs_second_factor(user: User) -> bool:
    return mfa.has_factor(db_session(), user.id)


def start_second_factor(user: User, methods: list[str], next_url: str) -> Response:
    """After a correct first factor: remember who (for five minutes, in the signed Flask session) and ask for a
    second factor. No server-side session exists until that succeeds.

    In a browser the user trusted (app.auth.trusted_browsers) the second step is skipped: the sign-in ends here,
    audited with the method ``trusted_browser``."""
    db = db_session()
    if trusted_browsers.check(db, get_settings(), user.id, request.cookies.get(trusted_browsers.COOKIE)):
        return redirect(finish_second_step(user, [*methods, "trusted_browser"], next_url))
    mfa_flows.second_step_started(db, audit_ctx(), user, methods)
    db.commit()
    session.pop(CHALLENGE_KEY, None)
    session[PENDING_KEY] = {
        "uid": user.id,
        "methods": list(methods),
        "exp": time.time() + PENDING_SECONDS,
        "next": next_url,
    }
    return redirect(url_for("mfa.signin_step"))


def pending() -> tuple[User, dict[str, Any]] | None:
    data = session.get(PENDING_KEY)
    if not isinstance(data, dict):
        return None
    if not isinstance(data.get("exp"), int | float) or data["exp"] < time.time():
        session.pop(PENDING_KEY, None)
        return None
    user = db_session().get(User, data.get("uid"))
    if user is None or not user.is_active:
        session.pop(PENDING_KEY, None)
        return None
    return user, data


def require_pending() -> tuple[User, dict[str, Any]]:
    found = pending()
    if found is None:
        raise AppError(
            "token_expired",
            N_("Your sign-in timed out."),
            N_("Sign in with your password again; the second step must follow within five minutes."),
            status=401,
        )
    return found


def finish_second_step(
    user: User, methods: list[str], next_url: str, *, ui: str | None = None, trust: bool = False
) -> str:
    """Both steps done: a fresh server-side session (new id, old cookie dropped — no fixation); returns where
    to go next. With ``trust`` (the user ticked "Trust this browser") this browser skips the second step from
    now on, for the configured days."""
    db = db_session()
    ip, device = client_ip(), browser_id()
    if trust and trusted_browsers.offered(get_settings()):
        _trust_this_browser(user, ip)
    mfa_flows.second_step_passed(
        db, get_limit_storage(), get_settings(), audit_ctx(), user, methods, ip=ip, device=device, ui=ui
    )
    establish_session(user, methods, mfa_verified=True)  # commits the event with the session
    return landing(user.is_admin, safe_next(next_url, url_for("web.home")))


def _trust_this_browser(user: User, ip: str) -> None:
    settings = get_settings()
    db = db_session()
    raw = trusted_browsers.trust(db, settings, user.id, ip=ip, user_agent=user_agent())
    audit.record(
        db, audit_ctx(), "browser.trusted", target=f"user:{user.id}", details={"days": settings.trusted_browser_days}
    )

    @after_this_request
    def _set_cookie(response: Response) -> Response:
        response.set_cookie(
            trusted_browsers.COOKIE,
            raw,
            max_age=settings.trusted_browser_days * 86400,
            path="/",
            secure=settings.is_https,
            httponly=True,
            samesite="Lax",
        )
        return response
