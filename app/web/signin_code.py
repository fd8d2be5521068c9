"""Sign-in by a code mailed to the user (``AMI_AUTH_EMAIL_CODE_SIGNIN``): ask for a code, then type it.

The rules live in :mod:`app.auth.email_codes`; this face adds the sign-in throttle (a code is guessed like a
password: the same per-account lock and per-client limit) and ends like every sign-in, through
:mod:`app.web.signin` (a user with a second factor gives it next; a role that requires one enrols after).
"""

from __future__ import annotations

import time

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import EmailField, StringField
from wtforms.validators import DataRequired, Length

from app import audit
from app.auth import email_codes, throttle, users
from app.errors import N_, AppError
from app.extensions import db_session, get_limit_storage, get_settings
from app.http.context import audit_ctx, client_ip, signed_in
from app.i18n import lazy_gettext
from app.web.browser import browser_id
from app.web.common import form_errors, keep_on_form, landing, safe_next
from app.web.mail_flows import MAIL_FAILURES, mail_failed
from app.web.signin import establish_session, needs_second_factor, record_failed_signin, start_second_factor

bp = Blueprint("signin_code", __name__)
Page = str | Response | tuple[str, int]
# Which address the code was asked for (in the signed Flask session), so the second page asks only for the code.
CODE_KEY = "signin_code"
WRONG_CODE = "This code is not right or has expired. Check the latest mail, or ask for a new code."


class CodeRequestForm(FlaskForm):  # type: ignore[misc]
    email = EmailField(lazy_gettext("Email"), validators=[DataRequired(), Length(max=320)])


class CodeForm(FlaskForm):  # type: ignore[misc]
    code = StringField(lazy_gettext("Sign-in code"), validators=[DataRequired(), Length(max=20)])


def _enabled() -> None:
    if not get_settings().email_code_signin:
        raise AppError(
            "not_found", N_("Sign-in by email code is not turned on here."), N_("Sign in with your password.")
        )


@bp.app_context_processor
def _offer() -> dict[str, bool]:
    return {"email_code_signin": get_settings().email_code_signin}


@bp.route("/signin/code", methods=["GET", "POST"])
def request_code() -> Page:
    _enabled()
    next_url = safe_next(request.args.get("next"), url_for("web.home"))
    if signed_in() is not None:
        return redirect(next_url)
    form = CodeRequestForm()
    if request.method == "GET" and request.args.get("email"):
        form.email.data = request.args["email"][:320]
    if form.validate_on_submit():
        db = db_session()
        try:
            email_codes.request_code(db, get_settings(), audit_ctx(), form.email.data)
        except AppError as exc:
            if exc.code in MAIL_FAILURES:
                db.rollback()
                raise mail_failed(exc, N_("We could not send the mail right now, so no code went out.")) from None
            keep_on_form(db, exc, form)
        else:
            session[CODE_KEY] = {"email": users.normalize_email(form.email.data), "exp": time.time() + 15 * 60}
            return redirect(url_for("signin_code.enter_code", next=next_url))
    status = 422 if form.is_submitted() and form.errors else 200
    return render_template("auth/code_request.html", form=form, next=next_url), status


def _pending_email() -> str | None:
    data = session.get(CODE_KEY)
    if not isinstance(data, dict) or not isinstance(data.get("exp"), int | float) or data["exp"] < time.time():
        session.pop(CODE_KEY, None)
        return None
    email = data.get("email")
    return email if isinstance(email, str) else None


@bp.route("/signin/code/enter", methods=["GET", "POST"])
def enter_code() -> Page:
    _enabled()
    next_url = safe_next(request.args.get("next"), url_for("web.home"))
    email = _pending_email()
    if email is None:
        return redirect(url_for("signin_code.request_code", next=next_url))
    form = CodeForm()
    throttled: throttle.Throttled | None = None
    if form.validate_on_submit():
        db, settings, storage = db_session(), get_settings(), get_limit_storage()
        ip, device = client_ip(), browser_id()
        try:
            throttle.check_signin(storage, settings, email=email, ip=ip, device=device)
        except throttle.Throttled as exc:
            throttled = exc
        else:
            user = email_codes.check_code(db, storage, email, form.code.data)
            if user is not None:
                session.pop(CODE_KEY, None)
                if needs_second_factor(user):
                    db.commit()  # the code is spent whatever happens at the second step
                    return start_second_factor(user, ["email_code"], next_url)
                audit.record(
                    db, audit_ctx(), "signin.success", target=f"user:{user.id}", details={"method": "email_code"}
                )
                throttle.record_success(storage, settings, email, ip, device=device)
                establish_session(user, ["email_code"])  # commits the event with the session
                return redirect(landing(user.is_admin, next_url))
            throttled = record_failed_signin(email, "email_code")
            if throttled is None:
                form_errors(
                    AppError(
                        "invalid_credentials",
                        fields={"code": WRONG_CODE},
                    ),
                    form,
                )
    html = render_template("auth/code_enter.html", form=form, email=email, next=next_url, throttled=throttled)
    if throttled is not None:
        response = Response(html, status=throttled.http_status, mimetype="text/html")
        response.headers["Retry-After"] = str(throttled.retry_after)
        return response
    return html, 401 if form.is_submitted() and form.errors else 200
