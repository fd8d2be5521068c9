"""Second factors on the web: the sign-in step after a password, passwordless passkey sign-in, the account's
MFA page (TOTP, passkeys, recovery codes), the admin MFA policy and reset, and the enforcement hook.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, session, url_for
from flask_login import logout_user
from flask_wtf import FlaskForm
from limits.storage import Storage
from werkzeug.wrappers import Response
from wtforms import BooleanField, StringField
from wtforms.validators import DataRequired, Length

from app import audit
from app.auth import mfa, recovery_codes, sessions, throttle, totp
from app.auth import webauthn as passkeys
from app.errors import AppError
from app.extensions import db_session, get_settings
from app.models import ROLES, Credential, User, utcnow
from app.models.credentials import ChallengePurpose
from app.web.browser import browser_id
from app.web.common import (
    admin_required,
    audit_ctx,
    client_ip,
    form_errors,
    login_required,
    safe_next,
    signed_in,
    wants_json,
)
from app.web.input_guard import accepts_json

bp = Blueprint("mfa", __name__)

PENDING_KEY = "mfa_pending"
PENDING_SECONDS = 5 * 60
CHALLENGE_KEY = "webauthn_challenges"


class CodeForm(FlaskForm):  # type: ignore[misc]
    code = StringField("Authentication code", validators=[DataRequired("Enter the code."), Length(max=40)])


class RecoveryCodeForm(FlaskForm):  # type: ignore[misc]
    recovery_code = StringField("Recovery code", validators=[DataRequired("Enter a recovery code."), Length(max=40)])


class NameForm(FlaskForm):  # type: ignore[misc]
    """A passkey's name. Several are on one page (prefixed per row), so the CSRF token is the page's one,
    checked by CSRFProtect for every POST, not a per-form field whose name the prefix would change."""

    class Meta:
        csrf = False

    name = StringField("Passkey name", validators=[DataRequired("Enter a name."), Length(max=passkeys.NAME_MAX)])


def _policy_form(values: dict[str, bool]) -> FlaskForm:
    fields: dict[str, Any] = {
        role: BooleanField(f"Require a second factor for {role}s", default=values[role]) for role in ROLES
    }
    form_class = type("PolicyForm", (FlaskForm,), fields)
    form: FlaskForm = form_class()
    return form


def _storage() -> Storage:
    storage: Storage = current_app.extensions["ami_limits"]
    return storage


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise AppError("validation_failed", "Send a JSON object.", status=400)
    return body


# --- Pending sign-in (password done, second factor to go) -----------------------------------------------


def needs_second_factor(user: User) -> bool:
    return mfa.has_factor(db_session(), user.id)


def start_second_factor(user: User, methods: list[str], next_url: str) -> Response:
    """After a correct password: remember who (for five minutes, in the signed Flask session) and ask for a
    second factor. No server-side session exists until that succeeds."""
    db = db_session()
    audit.record(
        db,
        audit_ctx(),
        "signin.mfa_pending",
        target=f"user:{user.id}",
        details={"methods": list(methods)},
    )
    db.commit()
    session.pop(CHALLENGE_KEY, None)
    session[PENDING_KEY] = {
        "uid": user.id,
        "methods": list(methods),
        "exp": time.time() + PENDING_SECONDS,
        "next": next_url,
    }
    return redirect(url_for("mfa.signin_step"))


def _pending() -> tuple[User, dict[str, Any]] | None:
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


def _require_pending() -> tuple[User, dict[str, Any]]:
    found = _pending()
    if found is None:
        raise AppError(
            "token_expired",
            "Your sign-in timed out.",
            "Sign in with your password again; the second step must follow within five minutes.",
            status=401,
        )
    return found


def _finish_signin(user: User, methods: list[str], next_url: str) -> str:
    """Both steps done: a fresh server-side session (new id, old cookie dropped — no fixation)."""
    from app.web.auth import establish_session

    mfa.clear_failures(_storage(), user.id)
    if "password" in methods or len(methods) > 1:
        # The whole sign-in succeeded: the throttle forgets the failures of the source it came through (a
        # password or second factor was checked under it). A passwordless passkey checked nothing the
        # throttle counts, so it leaves the counts alone: the owner's passkey must not wipe a stranger's.
        throttle.record_success(_storage(), get_settings(), user.email, client_ip(), device=browser_id())
    audit.record(db_session(), audit_ctx(), "signin.success", target=f"user:{user.id}", details={"methods": methods})
    establish_session(user, methods, mfa_verified=True)  # commits the event with the session
    return safe_next(next_url, url_for("web.home"))


def _second_factor_failed(user: User, method: str) -> None:
    """Audit and count a wrong second factor; the fifth in the window ends the pending sign-in."""
    db = db_session()
    ctx = audit_ctx()
    audit.record(db, ctx, "mfa.failure", target=f"user:{user.id}", outcome="failure", details={"method": method})
    mfa.record_failure(_storage(), get_settings(), user, client_ip(), device=browser_id(), db=db, ctx=ctx)
    db.commit()
    _refuse_if_exhausted(user)


def _refuse_if_exhausted(user: User) -> None:
    retry_after = mfa.failures_exhausted(_storage(), user.id)
    if retry_after is None:
        return
    session.pop(PENDING_KEY, None)
    raise AppError(
        "rate_limited",
        "Too many wrong attempts at the second step.",
        "Wait a few minutes, then sign in with your password again.",
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
    )
    return html, status


@bp.get("/signin/mfa")
def signin_step() -> str | Response | tuple[str, int]:
    if signed_in() is not None:
        return redirect(url_for("web.home"))
    found = _pending()
    if found is None:
        flash("Your sign-in timed out. Sign in again.", "warning")
        return redirect(url_for("auth.signin"))
    user, _data = found
    return _render_signin_step(user, CodeForm(), RecoveryCodeForm(formdata=None))


@bp.post("/signin/mfa/totp")
def signin_totp() -> Response | tuple[str, int]:
    user, data = _require_pending()
    _refuse_if_exhausted(user)
    form = CodeForm()
    if form.validate_on_submit():
        db = db_session()
        if totp.verify(db, get_settings(), user, form.code.data):
            audit.record(db, audit_ctx(), "mfa.totp.use", target=f"user:{user.id}")
            db.commit()
            return redirect(_finish_signin(user, [*data["methods"], "totp"], data["next"]))
        db.rollback()
        _second_factor_failed(user, "totp")
        form.code.data = ""  # a rejected code is not shown back
        form_errors(
            AppError("invalid_credentials", fields={"code": "That code is not right, or was already used."}), form
        )
    return _render_signin_step(user, form, RecoveryCodeForm(formdata=None), 401 if form.is_submitted() else 200)


@bp.post("/signin/mfa/recovery")
def signin_recovery() -> Response | tuple[str, int]:
    user, data = _require_pending()
    _refuse_if_exhausted(user)
    form = RecoveryCodeForm()
    if form.validate_on_submit():
        db = db_session()
        settings = get_settings()
        if mfa.has_factor(db, user.id) and recovery_codes.use(db, settings, user, form.recovery_code.data):
            left = recovery_codes.remaining(db, user.id)
            audit.record(
                db,
                audit_ctx(),
                "mfa.recovery_code.use",
                target=f"user:{user.id}",
                details={"remaining": left},
            )
            db.commit()
            target = _finish_signin(user, [*data["methods"], "recovery_code"], data["next"])
            if left <= 2:  # after the new session exists: starting it clears the Flask session, flashes too
                flash(
                    f"You have {left} recovery code{'s' if left != 1 else ''} left. Generate new ones soon.",
                    "warning",
                )
            return redirect(target)
        db.rollback()
        _second_factor_failed(user, "recovery_code")
        form.recovery_code.data = ""
        form_errors(
            AppError("invalid_credentials", fields={"recovery_code": "That recovery code is not right or was used."}),
            form,
        )
    return _render_signin_step(user, CodeForm(formdata=None), form, 401 if form.is_submitted() else 200)


def _remember_challenge(purpose: ChallengePurpose, handle: str) -> None:
    handles = dict(session.get(CHALLENGE_KEY) or {})
    handles[purpose] = handle
    session[CHALLENGE_KEY] = handles


def _take_challenge(purpose: ChallengePurpose) -> str | None:
    handles = dict(session.get(CHALLENGE_KEY) or {})
    handle = handles.pop(purpose, None)
    session[CHALLENGE_KEY] = handles
    return handle if isinstance(handle, str) else None


@bp.post("/signin/mfa/passkey/options")
@accepts_json
def signin_passkey_options() -> Response:
    user, _data = _require_pending()
    db = db_session()
    ceremony = passkeys.begin_authentication(db, get_settings(), user)
    db.commit()
    _remember_challenge("second_factor", ceremony.handle)
    return jsonify(publicKey=ceremony.public_key)


@bp.post("/signin/mfa/passkey/verify")
@accepts_json
def signin_passkey_verify() -> Response:
    user, data = _require_pending()
    _refuse_if_exhausted(user)
    body = _json_body()
    db = db_session()
    try:
        assertion = passkeys.finish_authentication(
            db, get_settings(), _take_challenge("second_factor"), body.get("credential"), user=user
        )
    except AppError as exc:
        db.commit()  # the challenge is spent either way
        if exc.code == "invalid_credentials":
            _second_factor_failed(user, "webauthn")
        raise AppError(exc.code, exc.message, exc.hint) from None
    audit.record(
        db,
        audit_ctx(),
        "mfa.passkey.use",
        target=f"user:{user.id}",
        details={"credential": assertion.credential.id, "name": assertion.credential.name},
    )
    db.commit()
    return jsonify(redirect=_finish_signin(user, [*data["methods"], "webauthn"], data["next"]))


@bp.post("/signin/passkey/options")
@accepts_json
def passwordless_options() -> Response:
    db = db_session()
    ceremony = passkeys.begin_authentication(db, get_settings(), None)
    db.commit()
    _remember_challenge("passwordless", ceremony.handle)
    return jsonify(publicKey=ceremony.public_key)


@bp.post("/signin/passkey/verify")
@accepts_json
def passwordless_verify() -> Response:
    """Passwordless: a discoverable passkey with user verification is both factors at once (possession of
    the key and the PIN or biometric that unlocked it; NIST SP 800-63B §5.1.9 multi-factor cryptographic)."""
    if signed_in() is not None:
        return jsonify(redirect=url_for("web.home"))
    body = _json_body()
    db = db_session()
    try:
        assertion = passkeys.finish_authentication(
            db, get_settings(), _take_challenge("passwordless"), body.get("credential"), user=None
        )
    except AppError as exc:
        db.commit()
        audit.record(
            db,
            audit_ctx(),
            "signin.failure",
            target="passkey",
            outcome="failure",
            details={"method": "webauthn", "reason": exc.code},
        )
        db.commit()
        raise AppError(exc.code, exc.message, exc.hint) from None
    user = db.get(User, assertion.credential.user_id)
    if user is None or not user.is_active:
        db.rollback()
        raise AppError("invalid_credentials", "That account is disabled.", "Ask an administrator.")
    audit.record(
        db,
        audit_ctx(),
        "mfa.passkey.use",
        target=f"user:{user.id}",
        details={"credential": assertion.credential.id, "name": assertion.credential.name, "passwordless": True},
    )
    db.commit()
    next_url = safe_next(request.args.get("next"), url_for("web.home"))
    session.pop(PENDING_KEY, None)
    return jsonify(redirect=_finish_signin(user, ["webauthn"], next_url))


# --- The account's MFA page ---------------------------------------------------------------------------------


def _current_user() -> User:
    who = signed_in()
    assert who is not None  # behind login_required
    return who.user


def _render_account(
    *, error: AppError | None = None, rename_forms: dict[int, NameForm] | None = None, status: int = 200
) -> tuple[str, int]:
    user = _current_user()
    db = db_session()
    settings = get_settings()
    factors = mfa.summary(db, user.id)
    forms = rename_forms or {}
    for credential in factors.passkeys:
        if credential.id not in forms:
            form = NameForm(formdata=None, prefix=f"p{credential.id}")
            form.name.data = credential.name
            forms[credential.id] = form
        forms[credential.id].name.label.text = f"New name for {credential.name}"
    html = render_template(
        "account/mfa.html",
        user=user,
        factors=factors,
        required=mfa.role_requires_mfa(db, settings, user.role),
        pending_totp=totp.pending_enrolment(db, settings, user) is not None,
        add_form=NameForm(formdata=None, prefix="new"),
        rename_forms=forms,
        error=error,
    )
    return html, status


@bp.get("/account/mfa")
@login_required
def account() -> tuple[str, int]:
    return _render_account()


def _mark_session_verified(method: str) -> None:
    """Enrolling proves the new factor, so the current session counts as having used it (otherwise the
    enforcement hook would treat it as a session that skipped its second factor)."""
    who = signed_in()
    assert who is not None
    record = who.record
    record.mfa_verified = True
    if method not in record.auth_methods:
        record.auth_methods = [*record.auth_methods, method]


@bp.post("/account/mfa/totp")
@login_required
def totp_start() -> Response | tuple[str, int]:
    db = db_session()
    try:
        totp.start_enrolment(db, get_settings(), _current_user())
    except AppError as exc:
        db.rollback()
        return _render_account(error=exc, status=exc.http_status)
    db.commit()
    return redirect(url_for("mfa.totp_enrol"))


def _render_totp_enrol(form: CodeForm, status: int = 200) -> tuple[str, int] | Response:
    user = _current_user()
    enrolment = totp.pending_enrolment(db_session(), get_settings(), user)
    if enrolment is None:
        return redirect(url_for("mfa.account"))
    html = render_template("account/mfa_totp.html", enrolment=enrolment, form=form)
    return html, status


@bp.get("/account/mfa/totp")
@login_required
def totp_enrol() -> tuple[str, int] | Response:
    return _render_totp_enrol(CodeForm(formdata=None))


@bp.post("/account/mfa/totp/confirm")
@login_required
def totp_confirm() -> tuple[str, int] | Response:
    form = CodeForm()
    user = _current_user()
    if form.validate_on_submit():
        db = db_session()
        try:
            credential = totp.confirm_enrolment(db, get_settings(), user, form.code.data)
        except AppError as exc:
            db.rollback()
            if exc.code == "conflict":
                raise
            audit.record(db, audit_ctx(), "mfa.totp.enrol", target=f"user:{user.id}", outcome="failure")
            db.commit()
            form_errors(exc, form)
            return _render_totp_enrol(form, exc.http_status)
        _mark_session_verified("totp")
        audit.record(db, audit_ctx(), "mfa.totp.enrol", target=f"user:{user.id}", details={"credential": credential.id})
        db.commit()
        flash("Authenticator app added. You will be asked for a code when you sign in.", "success")
        return redirect(url_for("mfa.account"))
    return _render_totp_enrol(form, 422)


@bp.post("/account/mfa/totp/cancel")
@login_required
def totp_cancel() -> Response:
    db = db_session()
    totp.discard_pending(db, _current_user().id)
    db.commit()
    return redirect(url_for("mfa.account"))


def _remove(credential: Credential, action: str) -> Response | tuple[str, int]:
    user = _current_user()
    db = db_session()
    settings = get_settings()
    try:
        mfa.check_removal(db, settings, user, credential)
    except AppError as exc:
        audit.record(
            db,
            audit_ctx(),
            action,
            target=f"user:{user.id}",
            outcome="denied",
            details={"credential": credential.id, "reason": "last_factor"},
        )
        db.commit()
        return _render_account(error=exc, status=exc.http_status)
    details: dict[str, Any] = {"credential": credential.id, "kind": credential.kind, "name": credential.name}
    dropped_codes = mfa.delete_credential(db, credential)
    details["recovery_codes_removed"] = dropped_codes
    audit.record(db, audit_ctx(), action, target=f"user:{user.id}", details=details)
    db.commit()
    flash(f"Removed {details['name'] or 'the factor'}.", "success")
    return redirect(url_for("mfa.account"))


@bp.post("/account/mfa/totp/remove")
@login_required
def totp_remove() -> Response | tuple[str, int]:
    credential = totp.confirmed(db_session(), _current_user().id)
    if credential is None:
        raise AppError("not_found", "No authenticator app is set up.", "Reload the page.")
    return _remove(credential, "mfa.totp.remove")


@bp.post("/account/mfa/passkeys/options")
@login_required
@accepts_json
def passkey_register_options() -> Response:
    body = _json_body()
    passkeys.check_name(body.get("name") if isinstance(body.get("name"), str) else None)
    db = db_session()
    ceremony = passkeys.begin_registration(db, get_settings(), _current_user())
    db.commit()
    _remember_challenge("register", ceremony.handle)
    return jsonify(publicKey=ceremony.public_key)


@bp.post("/account/mfa/passkeys/verify")
@login_required
@accepts_json
def passkey_register_verify() -> Response:
    body = _json_body()
    user = _current_user()
    db = db_session()
    name = body.get("name") if isinstance(body.get("name"), str) else None
    try:
        credential = passkeys.finish_registration(
            db, get_settings(), user, _take_challenge("register"), body.get("credential"), name
        )
    except AppError as exc:
        db.commit()  # the challenge is spent either way
        audit.record(
            db,
            audit_ctx(),
            "mfa.passkey.enrol",
            target=f"user:{user.id}",
            outcome="failure",
            details={"reason": exc.code},
        )
        db.commit()
        raise
    _mark_session_verified("webauthn")
    audit.record(
        db,
        audit_ctx(),
        "mfa.passkey.enrol",
        target=f"user:{user.id}",
        details={"credential": credential.id, "name": credential.name, "aaguid": credential.aaguid},
    )
    db.commit()
    flash(f"Passkey “{credential.name}” added.", "success")
    return jsonify(redirect=url_for("mfa.account"))


@bp.post("/account/mfa/passkeys/<int:credential_id>/rename")
@login_required
def passkey_rename(credential_id: int) -> Response | tuple[str, int]:
    user = _current_user()
    db = db_session()
    credential = passkeys.get_passkey(db, user, credential_id)
    form = NameForm(prefix=f"p{credential_id}")
    if form.validate_on_submit():
        try:
            old = credential.name
            passkeys.rename(db, user, credential_id, form.name.data)
        except AppError as exc:
            db.rollback()
            form_errors(exc, form)
        else:
            audit.record(
                db,
                audit_ctx(),
                "mfa.passkey.rename",
                target=f"user:{user.id}",
                details={"credential": credential_id, "from": old, "to": credential.name},
            )
            db.commit()
            flash(f"Renamed to “{credential.name}”.", "success")
            return redirect(url_for("mfa.account"))
    return _render_account(rename_forms={credential_id: form}, status=422)


@bp.post("/account/mfa/passkeys/<int:credential_id>/remove")
@login_required
def passkey_remove(credential_id: int) -> Response | tuple[str, int]:
    credential = passkeys.get_passkey(db_session(), _current_user(), credential_id)
    return _remove(credential, "mfa.passkey.remove")


@bp.post("/account/mfa/recovery-codes")
@login_required
def recovery_generate() -> tuple[str, int]:
    """Generate (or replace) the codes and show them in this response only: they are never stored in clear,
    so the page and its download link are the one chance to keep them."""
    user = _current_user()
    db = db_session()
    if not mfa.has_factor(db, user.id):
        exc = AppError(
            "conflict",
            "Recovery codes need a second factor first.",
            "Add an authenticator app or a passkey, then generate recovery codes.",
        )
        return _render_account(error=exc, status=exc.http_status)
    had = recovery_codes.remaining(db, user.id)
    codes = recovery_codes.generate(db, get_settings(), user)
    audit.record(
        db,
        audit_ctx(),
        "mfa.recovery_codes.generate",
        target=f"user:{user.id}",
        details={"count": len(codes), "replaced_unused": had},
    )
    db.commit()
    text = recovery_codes.as_text(codes, user.email, utcnow())
    download = "data:text/plain;charset=utf-8;base64," + base64.b64encode(text.encode()).decode("ascii")
    return render_template("account/mfa_recovery_codes.html", codes=codes, download=download), 200


# --- Admin: policy and reset --------------------------------------------------------------------------------


@bp.route("/admin/security", methods=["GET", "POST"])
@admin_required
def admin_security() -> str | Response:
    db = db_session()
    settings = get_settings()
    current = mfa.policy(db, settings)
    form = _policy_form(current)
    if form.validate_on_submit():
        who = signed_in()
        assert who is not None
        changed: dict[str, bool] = {}
        for role in ROLES:
            wanted = bool(getattr(form, role).data)
            # Stored even when it equals the env default, so a later change of the env var does not flip it.
            mfa.set_policy(db, role, wanted, actor_id=who.user.id)
            if wanted != current[role]:
                changed[role] = wanted
        if changed:
            audit.record(db, audit_ctx(), "mfa.policy.update", target="mfa_policy", details={"required": changed})
        db.commit()
        flash("Security policy saved.", "success")
        return redirect(url_for("mfa.admin_security"))
    return render_template(
        "mfa/admin_security.html",
        form=form,
        roles=ROLES,
        defaults={role: role in settings.mfa_required_roles for role in ROLES},
    )


@bp.post("/admin/users/<int:user_id>/mfa/reset")
@admin_required
def admin_reset(user_id: int) -> Response:
    db = db_session()
    target = db.get(User, user_id)
    if target is None:
        raise AppError("not_found", "That user does not exist.")
    counts = mfa.reset(db, user_id)
    audit.record(db, audit_ctx(), "mfa.reset", target=f"user:{user_id}", details={"removed": counts})
    db.commit()
    flash(f"Removed every second factor of {target.email}. They will be asked to set one up if required.", "success")
    return redirect(safe_next(request.form.get("next"), url_for("mfa.admin_security")))


@bp.app_context_processor
def _mfa_helpers() -> dict[str, Any]:
    """``mfa_summary(user_id)`` for templates such as the admin user page (templates/mfa/_admin_user_factors)."""

    def mfa_summary(user_id: int) -> mfa.FactorSummary:
        return mfa.summary(db_session(), user_id)

    return {"mfa_summary": mfa_summary}


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
        sessions.revoke_session(db, who.record)
        audit.record(
            db,
            audit_ctx(),
            "session.revoke",
            target=f"user:{who.id}",
            outcome="denied",
            details={"reason": "second factor not used"},
        )
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
            "Your role requires a second factor.",
            "Add an authenticator app or a passkey on your account's MFA page first.",
            status=403,
        )
    return redirect(url_for("mfa.account"))
