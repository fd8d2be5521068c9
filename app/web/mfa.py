"""Second factors on the web, at sign-in: the step after a first factor (authenticator code, recovery code,
passkey), passwordless passkey sign-in, and the enforcement hook. The blueprint also carries the account's MFA
page and the admin policy and reset (:mod:`app.web.mfa_account`). Every rule and audit event is in
:mod:`app.services.mfa`; the pending sign-in and the session it ends in, in :mod:`app.web.signin`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, session, url_for
from flask_login import logout_user
from flask_wtf import FlaskForm
from limits.storage import Storage
from werkzeug.wrappers import Response
from wtforms import BooleanField, StringField
from wtforms.validators import DataRequired, Length

from app.auth import mfa
from app.auth import webauthn as passkeys
from app.errors import N_, AppError
from app.extensions import db_session, get_limit_storage, get_settings
from app.http.context import audit_ctx, client_ip, signed_in
from app.i18n import gettext as _
from app.i18n import lazy_gettext, ngettext
from app.models import User
from app.models.credentials import ChallengePurpose
from app.services import mfa as mfa_flows
from app.web.browser import browser_id
from app.web.common import form_errors, safe_next, wants_json
from app.web.input_guard import accepts_json
from app.web.signin import CHALLENGE_KEY, PENDING_KEY, finish_second_step, pending, require_pending

bp = Blueprint("mfa", __name__)


class CodeForm(FlaskForm):  # type: ignore[misc]
    code = StringField(
        lazy_gettext("Authentication code"), validators=[DataRequired(lazy_gettext("Enter the code.")), Length(max=40)]
    )
    trust_browser = BooleanField(lazy_gettext("Trust this browser"))


class RecoveryCodeForm(FlaskForm):  # type: ignore[misc]
    recovery_code = StringField(
        lazy_gettext("Recovery code"), validators=[DataRequired(lazy_gettext("Enter a recovery code.")), Length(max=40)]
    )


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise AppError("validation_failed", N_("Send a JSON object."), status=400)
    return body


def remember_challenge(purpose: ChallengePurpose, handle: str) -> None:
    handles = dict(session.get(CHALLENGE_KEY) or {})
    handles[purpose] = handle
    session[CHALLENGE_KEY] = handles


def take_challenge(purpose: ChallengePurpose) -> str | None:
    handles = dict(session.get(CHALLENGE_KEY) or {})
    handle = handles.pop(purpose, None)
    session[CHALLENGE_KEY] = handles
    return handle if isinstance(handle, str) else None


# --- The second step --------------------------------------------------------------------------------------------


def _storage() -> Storage:
    return get_limit_storage()


def _second_factor_failed(user: User, method: str) -> None:
    """Audit and count a wrong second factor; the fifth in the window ends the pending sign-in."""
    db = db_session()
    settings = get_settings()
    mfa_flows.second_step_failed(
        db, _storage(), settings, audit_ctx(), user, method, ip=client_ip(), device=browser_id()
    )
    db.commit()
    _refuse_if_exhausted(user)


def _refuse_if_exhausted(user: User) -> None:
    retry_after = mfa.failures_exhausted(_storage(), user.id)
    if retry_after is None:
        return
    session.pop(PENDING_KEY, None)
    raise AppError(
        "rate_limited",
        N_("Too many wrong attempts at the second step."),
        N_("Wait a few minutes, then sign in with your password again."),
        retry_after=retry_after,
    )


def _render_signin_step(
    user: User, code_form: CodeForm, recovery_form: RecoveryCodeForm, status: int = 200
) -> tuple[str, int]:
    factors = mfa.summary(db_session(), user.id)
    html = render_template(
        "mfa/signin.html",
        user=user,
        factors=factors,
        code_form=code_form,
        recovery_form=recovery_form,
        open_recovery=bool(recovery_form.errors),
        trust_days=get_settings().trusted_browser_days,
    )
    return html, status


@bp.get("/signin/mfa")
def signin_step() -> str | Response | tuple[str, int]:
    if signed_in() is not None:
        return redirect(url_for("web.home"))
    found = pending()
    if found is None:
        flash(_("Your sign-in timed out. Sign in again."), "warning")
        return redirect(url_for("auth.signin"))
    user, _data = found
    return _render_signin_step(user, CodeForm(), RecoveryCodeForm(formdata=None))


@bp.post("/signin/mfa/totp")
def signin_totp() -> Response | tuple[str, int]:
    user, data = require_pending()
    _refuse_if_exhausted(user)
    form = CodeForm()
    if form.validate_on_submit():
        db = db_session()
        if mfa_flows.use_totp(db, get_settings(), audit_ctx(), user, form.code.data):
            db.commit()
            target = finish_second_step(
                user, [*data["methods"], "totp"], data["next"], trust=bool(form.trust_browser.data)
            )
            return redirect(target)
        db.rollback()
        _second_factor_failed(user, "totp")
        form.code.data = ""  # a rejected code is not shown back
        form_errors(
            AppError("invalid_credentials", fields={"code": N_("That code is not right, or was already used.")}), form
        )
    return _render_signin_step(user, form, RecoveryCodeForm(formdata=None), 401 if form.is_submitted() else 200)


@bp.post("/signin/mfa/recovery")
def signin_recovery() -> Response | tuple[str, int]:
    user, data = require_pending()
    _refuse_if_exhausted(user)
    form = RecoveryCodeForm()
    if form.validate_on_submit():
        db = db_session()
        left = mfa_flows.use_recovery_code(db, get_settings(), audit_ctx(), user, form.recovery_code.data)
        if left is not None:
            db.commit()
            target = finish_second_step(user, [*data["methods"], "recovery_code"], data["next"])
            if left <= 2:  # after the new session exists: starting it clears the Flask session, flashes too
                flash(
                    ngettext(
                        "You have %(num)s recovery code left. Generate new ones soon.",
                        "You have %(num)s recovery codes left. Generate new ones soon.",
                        left,
                    ),
                    "warning",
                )
            return redirect(target)
        db.rollback()
        _second_factor_failed(user, "recovery_code")
        form.recovery_code.data = ""
        form_errors(
            AppError(
                "invalid_credentials", fields={"recovery_code": N_("That recovery code is not right or was used.")}
            ),
            form,
        )
    return _render_signin_step(user, CodeForm(formdata=None), form, 401 if form.is_submitted() else 200)


@bp.post("/signin/mfa/passkey/options")
@accepts_json
def signin_passkey_options() -> Response:
    user, _data = require_pending()
    db = db_session()
    ceremony = passkeys.begin_authentication(db, get_settings(), user)
    db.commit()
    remember_challenge("second_factor", ceremony.handle)
    return jsonify(publicKey=ceremony.public_key)


@bp.post("/signin/mfa/passkey/verify")
@accepts_json
def signin_passkey_verify() -> Response:
    user, data = require_pending()
    _refuse_if_exhausted(user)
    body = json_body()
    db = db_session()
    try:
        mfa_flows.use_passkey(
            db, get_settings(), audit_ctx(), take_challenge("second_factor"), body.get("credential"), user=user
        )
    except AppError as exc:
        db.commit()  # the challenge is spent either way
        if exc.code == "invalid_credentials":
            _second_factor_failed(user, "webauthn")
        raise AppError(exc.code, exc.message, exc.hint) from None
    db.commit()
    trust = body.get("trust_browser") is True
    return jsonify(redirect=finish_second_step(user, [*data["methods"], "webauthn"], data["next"], trust=trust))


@bp.post("/signin/passkey/options")
@accepts_json
def passwordless_options() -> Response:
    db = db_session()
    ceremony = passkeys.begin_authentication(db, get_settings(), None)
    db.commit()
    remember_challenge("passwordless", ceremony.handle)
    return jsonify(publicKey=ceremony.public_key)


@bp.post("/signin/passkey/verify")
@accepts_json
def passwordless_verify() -> Response:
    """Passwordless: a discoverable passkey with user verification is both factors at once (possession of
    the key and the PIN or biometric that unlocked it; NIST SP 800-63B §5.1.9 multi-factor cryptographic)."""
    if signed_in() is not None:
        return jsonify(redirect=url_for("web.home"))
    body = json_body()
    db = db_session()
    try:
        user = mfa_flows.use_passkey(
            db, get_settings(), audit_ctx(), take_challenge("passwordless"), body.get("credential"), user=None
        )
    except AppError as exc:
        db.commit()  # the challenge is spent, and the failed sign-in recorded
        raise AppError(exc.code, exc.message, exc.hint) from None
    db.commit()
    next_url = safe_next(request.args.get("next"), url_for("web.home"))
    session.pop(PENDING_KEY, None)
    ui = "autofill" if request.args.get("ui") == "autofill" else None
    return jsonify(redirect=finish_second_step(user, ["webauthn"], next_url, ui=ui))


# --- Enforcement ----------------------------------------------------------------------------------------------

ALWAYS_OPEN = frozenset({"static", "auth.signout", "web.healthz", "web.readyz"})
# What a user whose role requires MFA may reach before enrolling.
ENROLMENT_ENDPOINTS = frozenset(
    {
        "mfa.account",
        "mfa.totp_start",
        "mfa.totp_enrol",
        "mfa.totp_confirm",
        "mfa.totp_cancel",
        "mfa.passkey_register_options",
        "mfa.passkey_register_verify",
        "mfa.recovery_generate",
        # The CMS reads the session (with `mfa.enrolled: false`) to send the user to enrol.
        "api_auth.current_session",
    }
)


# Where to go once a user sent to enrol has a factor (an authorization request of an app, app.web.idp).
ENROL_RETURN_KEY = "mfa_enrol_return"

# The account page's password form, open to a user who must change their password before enrolling.
PASSWORD_CHANGE_ENDPOINTS = frozenset({"account.index", "account.change_password"})


def enforce() -> Response | None:
    """Before every request: a session that skipped a second factor the account has is not a session, and a
    user whose role requires MFA but has no factor may only reach the enrolment pages (and sign out)."""
    endpoint = request.endpoint or ""
    if not endpoint or endpoint in ALWAYS_OPEN:
        return None
    who = signed_in()
    if who is None:
        return None
    db = db_session()
    # Read with the session in this request's one SELECT: a factor added or removed anywhere applies now.
    if who.mfa.has_factor:
        if who.live.mfa_verified:
            return None
        mfa_flows.end_unverified_session(db, audit_ctx(), who.record)
        db.commit()
        logout_user()
        session.clear()
        if wants_json():
            raise AppError("not_authenticated")
        return redirect(url_for("auth.signin"))
    if endpoint in ENROLMENT_ENDPOINTS or not mfa.role_requires_mfa(db, get_settings(), who.live.user.role):
        return None
    if who.user.must_change_password and endpoint in PASSWORD_CHANGE_ENDPOINTS:
        # A forced password change (temporary or breached password) comes first: app.web.account sends the
        # user to its form, and refusing that form here would bounce the two guards off each other.
        return None
    if wants_json():
        raise AppError(
            "mfa_required",
            N_("Your role requires a second factor."),
            N_("Add an authenticator app or a passkey on your account's MFA page first."),
            status=403,
        )
    if request.blueprint == "idp" and request.method == "GET":
        # An app's authorization request waits while the user enrols: the MFA page goes back to it afterwards.
        session[ENROL_RETURN_KEY] = request.full_path
    return redirect(url_for("mfa.account"))
