"""How every sign-in ends, whatever its first factor (a password, an OAuth provider, a passkey): the fresh
server-side session, or first the pending second-factor step for a user who has a factor.

The password page (:mod:`app.web.auth`), the OAuth callback (:mod:`app.web.oauth`) and the second-factor pages
(:mod:`app.web.mfa`) all come through here, so none of them imports another.
"""

from __future__ import annotations

import time
from typing import Any

from flask import redirect, session, url_for
from flask_login import login_user
from werkzeug.wrappers import Response

from app.auth import mfa, sessions
from app.errors import AppError
from app.extensions import db_session, get_limit_storage, get_settings
from app.http.context import SignedIn, audit_ctx, client_ip, user_agent
from app.models import User
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
    raw, record = sessions.start_session(
        db,
        get_settings(),
        user,
        ip=client_ip(),
        user_agent=user_agent(),
        methods=methods,
        mfa_verified=mfa_verified,
    )
    db.commit()
    session.clear()
    login_user(SignedIn(raw, record))
    remember_browser(user.email)


# --- Pending sign-in (first factor done, second factor to go) -------------------------------------------------


def needs_second_factor(user: User) -> bool:
    return mfa.has_factor(db_session(), user.id)


def start_second_factor(user: User, methods: list[str], next_url: str) -> Response:
    """After a correct first factor: remember who (for five minutes, in the signed Flask session) and ask for a
    second factor. No server-side session exists until that succeeds."""
    db = db_session()
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
            "Your sign-in timed out.",
            "Sign in with your password again; the second step must follow within five minutes.",
            status=401,
        )
    return found


def finish_second_step(user: User, methods: list[str], next_url: str) -> str:
    """Both steps done: a fresh server-side session (new id, old cookie dropped — no fixation); returns where
    to go next."""
    db = db_session()
    ip, device = client_ip(), browser_id()
    mfa_flows.second_step_passed(
        db, get_limit_storage(), get_settings(), audit_ctx(), user, methods, ip=ip, device=device
    )
    establish_session(user, methods, mfa_verified=True)  # commits the event with the session
    return landing(user.is_admin, safe_next(next_url, url_for("web.home")))
