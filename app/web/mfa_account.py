"""The account's MFA page (authenticator app, passkeys, recovery codes) and the admin's MFA policy and reset —
routes of the ``mfa`` blueprint (:mod:`app.web.mfa`). Every rule and audit event is in :mod:`app.services.mfa`.
"""

from __future__ import annotations

import base64
from typing import Any

from flask import flash, jsonify, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import BooleanField, StringField
from wtforms.validators import DataRequired, Length, Optional

from app.auth import mfa, recovery_codes, totp
from app.auth import webauthn as passkeys
from app.errors import N_, AppError
from app.extensions import db_session, get_settings
from app.http.context import audit_ctx, signed_in
from app.i18n import gettext as _
from app.i18n import lazy_gettext
from app.models import ROLES, Credential, User, utcnow
from app.services import mfa as mfa_flows
from app.web.common import admin_required, form_errors, login_required, safe_next
from app.web.input_guard import accepts_json
from app.web.mfa import ENROL_RETURN_KEY, CodeForm, bp, json_body, remember_challenge, take_challenge


class NameForm(FlaskForm):  # type: ignore[misc]
    """A passkey's name. Several are on one page (prefixed per row), so the CSRF token is the page's one,
    checked by CSRFProtect for every POST, not a per-form field whose name the prefix would change."""

    class Meta:
        csrf = False

    name = StringField(
        lazy_gettext("Passkey name"),
        validators=[DataRequired(lazy_gettext("Enter a name.")), Length(max=passkeys.NAME_MAX)],
    )


class NewPasskeyForm(NameForm):
    """The name of a passkey being added: optional (a blank one gets the authenticator's own description), so
    the field must not be ``required`` in the HTML either."""

    name = StringField(lazy_gettext("Passkey name"), validators=[Optional(), Length(max=passkeys.NAME_MAX)])


def _policy_form(values: dict[str, bool]) -> FlaskForm:
    fields: dict[str, Any] = {
        role: BooleanField(lazy_gettext("Require a second factor for %(role)ss", role=role), default=values[role])
        for role in ROLES
    }
    form_class = type("PolicyForm", (FlaskForm,), fields)
    form: FlaskForm = form_class()
    return form


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
        forms[credential.id].name.label.text = _("New name for %(name)s", name=credential.name)
    html = render_template(
        "account/mfa.html",
        user=user,
        factors=factors,
        required=mfa.role_requires_mfa(db, settings, user.role),
        pending_totp=totp.pending_enrolment(db, settings, user) is not None,
        add_form=NewPasskeyForm(formdata=None, prefix="new"),
        rename_forms=forms,
        error=error,
    )
    return html, status


@bp.get("/account/mfa")
@login_required
def account() -> tuple[str, int] | Response:
    back_to = session.get(ENROL_RETURN_KEY)
    if isinstance(back_to, str) and mfa.has_factor(db_session(), _current_user().id):
        session.pop(ENROL_RETURN_KEY, None)
        return redirect(safe_next(back_to, url_for("mfa.account")))
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
    if form.validate_on_submit():
        db = db_session()
        try:
            mfa_flows.confirm_totp(db, get_settings(), audit_ctx(), _current_user(), form.code.data)
        except AppError as exc:
            if exc.code == "conflict":
                raise
            db.commit()
            form_errors(exc, form)
            return _render_totp_enrol(form, exc.http_status)
        _mark_session_verified("totp")
        db.commit()
        flash(_("Authenticator app added. You will be asked for a code when you sign in."), "success")
        return redirect(url_for("mfa.account"))
    return _render_totp_enrol(form, 422)


@bp.post("/account/mfa/totp/cancel")
@login_required
def totp_cancel() -> Response:
    db = db_session()
    totp.discard_pending(db, _current_user().id)
    db.commit()
    return redirect(url_for("mfa.account"))


def _remove(credential: Credential) -> Response | tuple[str, int]:
    db = db_session()
    try:
        name = mfa_flows.remove_factor(db, get_settings(), audit_ctx(), _current_user(), credential)
    except AppError as exc:
        db.commit()  # the refusal is audited
        return _render_account(error=exc, status=exc.http_status)
    db.commit()
    flash(_("Removed %(name)s.", name=name) if name else _("Removed the factor."), "success")
    return redirect(url_for("mfa.account"))


@bp.post("/account/mfa/totp/remove")
@login_required
def totp_remove() -> Response | tuple[str, int]:
    credential = totp.confirmed(db_session(), _current_user().id)
    if credential is None:
        raise AppError("not_found", N_("No authenticator app is set up."), N_("Reload the page."))
    return _remove(credential)


@bp.post("/account/mfa/passkeys/options")
@login_required
@accepts_json
def passkey_register_options() -> Response:
    body = json_body()
    passkeys.check_name(body.get("name") if isinstance(body.get("name"), str) else None)
    db = db_session()
    ceremony = passkeys.begin_registration(db, get_settings(), _current_user())
    db.commit()
    remember_challenge("register", ceremony.handle)
    return jsonify(publicKey=ceremony.public_key)


@bp.post("/account/mfa/passkeys/verify")
@login_required
@accepts_json
def passkey_register_verify() -> Response:
    body = json_body()
    db = db_session()
    name = body.get("name") if isinstance(body.get("name"), str) else None
    try:
        credential = mfa_flows.register_passkey(
            db, get_settings(), audit_ctx(), _current_user(), take_challenge("register"), body.get("credential"), name
        )
    except AppError:
        db.commit()  # the challenge is spent either way, and the refusal audited
        raise
    _mark_session_verified("webauthn")
    db.commit()
    flash(_("Passkey “%(name)s” added.", name=credential.name), "success")
    return jsonify(redirect=url_for("mfa.account"))


@bp.post("/account/mfa/passkeys/<int:credential_id>/rename")
@login_required
def passkey_rename(credential_id: int) -> Response | tuple[str, int]:
    user = _current_user()
    db = db_session()
    passkeys.get_passkey(db, user, credential_id)  # not found: 404 before the form is looked at
    form = NameForm(prefix=f"p{credential_id}")
    if form.validate_on_submit():
        try:
            credential = mfa_flows.rename_passkey(db, audit_ctx(), user, credential_id, form.name.data)
        except AppError as exc:
            db.rollback()
            form_errors(exc, form)
        else:
            db.commit()
            flash(_("Renamed to “%(name)s”.", name=credential.name), "success")
            return redirect(url_for("mfa.account"))
    return _render_account(rename_forms={credential_id: form}, status=422)


@bp.post("/account/mfa/passkeys/<int:credential_id>/remove")
@login_required
def passkey_remove(credential_id: int) -> Response | tuple[str, int]:
    credential = passkeys.get_passkey(db_session(), _current_user(), credential_id)
    return _remove(credential)


@bp.post("/account/mfa/recovery-codes")
@login_required
def recovery_generate() -> tuple[str, int]:
    """Generate (or replace) the codes and show them in this response only: they are never stored in clear,
    so the page and its download link are the one chance to keep them."""
    user = _current_user()
    db = db_session()
    try:
        codes = mfa_flows.generate_recovery_codes(db, get_settings(), audit_ctx(), user)
    except AppError as exc:
        return _render_account(error=exc, status=exc.http_status)
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
    form = _policy_form(mfa.policy(db, settings))
    if form.validate_on_submit():
        who = signed_in()
        assert who is not None
        wanted: dict[str, bool] = {role: bool(getattr(form, role).data) for role in ROLES}
        mfa_flows.set_policy(db, settings, audit_ctx(), wanted, actor_id=who.user.id)
        db.commit()
        flash(_("Security policy saved."), "success")
        return redirect(url_for("mfa.admin_security"))
    return render_template(
        "mfa/admin_security.html",
        form=form,
        roles=ROLES,
        defaults={role: role in settings.mfa_required_roles for role in ROLES},
        settings=settings,
    )


@bp.post("/admin/users/<int:user_id>/mfa/reset")
@admin_required
def admin_reset(user_id: int) -> Response:
    db = db_session()
    target = db.get(User, user_id)
    if target is None:
        raise AppError("not_found", N_("That user does not exist."))
    mfa_flows.reset(db, audit_ctx(), target)
    db.commit()
    flash(
        _(
            "Removed every second factor of %(email)s. They will be asked to set one up if required.",
            email=target.email,
        ),
        "success",
    )
    return redirect(safe_next(request.form.get("next"), url_for("mfa.admin_security")))


@bp.app_context_processor
def _mfa_helpers() -> dict[str, Any]:
    """``mfa_summary(user_id)`` for templates such as the admin user page (templates/mfa/_admin_user_factors)."""

    def mfa_summary(user_id: int) -> mfa.FactorSummary:
        return mfa.summary(db_session(), user_id)

    return {"mfa_summary": mfa_summary}
