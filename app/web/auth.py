"""Sign-in pages: password sign-in, sign-out and the first-admin setup link."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import logout_user
from flask_wtf import FlaskForm
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from app import audit
from app.auth import mail_tokens, passwords, sessions, throttle, users
from app.errors import N_, AppError
from app.extensions import db_session, get_limit_storage, get_settings
from app.http.context import audit_ctx, client_ip, signed_in
from app.i18n import lazy_gettext
from app.models import User
from app.net import get_client
from app.settings import Settings
from app.web.browser import browser_id
from app.web.common import form_errors, landing, safe_next
from app.web.signin import establish_session, needs_second_factor, record_failed_signin, start_second_factor

bp = Blueprint("auth", __name__)

BREACHED_NOTICE = "Your password has appeared in a data breach, so attackers may try it. Choose a new one to continue."


class SignInForm(FlaskForm):  # type: ignore[misc]
    email = EmailField(lazy_gettext("Email"), validators=[DataRequired(), Length(max=320)])
    password = PasswordField(lazy_gettext("Password"), validators=[DataRequired(), Length(max=256)])


class SetupForm(FlaskForm):  # type: ignore[misc]
    email = EmailField(lazy_gettext("Email"), validators=[DataRequired(), Length(max=320)])
    display_name = StringField(lazy_gettext("Your name"), validators=[Length(max=200)])
    password = PasswordField(lazy_gettext("Password"), validators=[DataRequired(), Length(max=256)])
    confirm = PasswordField(
        lazy_gettext("Repeat password"),
        validators=[DataRequired(), EqualTo("password", lazy_gettext("The passwords differ."))],
    )


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> str | Response:
    next_url = safe_next(request.args.get("next"), url_for("web.home"))
    if signed_in() is not None:
        return redirect(next_url)
    form = SignInForm()
    if request.method == "GET" and request.args.get("login_hint"):
        # OpenID Connect Core §3.1.2.1: an app signing someone in through AMI Auth may suggest the account.
        form.email.data = request.args["login_hint"][:320]
    if form.validate_on_submit():
        db = db_session()
        settings = get_settings()
        storage = get_limit_storage()
        email, ip, device = users.normalize_email(form.email.data), client_ip(), browser_id()
        try:
            # Before the password is looked at: a locked account is not even verified.
            throttle.check_signin(storage, settings, email=email, ip=ip, device=device)
        except throttle.Throttled as exc:
            return _throttled(form, next_url, exc)
        check = users.check_password(db, settings, form.email.data, form.password.data)
        if check.ok and check.user is not None:
            breached = _flag_breached_password(db, settings, check.user, form.password.data)
            # MFA: a user with a second factor gets no session yet, only a pending sign-in (app/web/signin.py).
            if needs_second_factor(check.user):
                return start_second_factor(check.user, ["password"], next_url)
            audit.record(
                db,
                audit_ctx(),
                "signin.success",
                target=f"user:{check.user.id}",
                details={"method": "password"},
            )
            # Only a complete sign-in clears the failures: with a second factor pending this line is not
            # reached, so the password cannot be used to reset the count between guesses at the code.
            throttle.record_success(storage, settings, email, ip, device=device)
            establish_session(check.user, ["password"])  # commits the event with the session
            if breached:
                flash(BREACHED_NOTICE, "warning")
            if check.user.must_change_password:
                # The account page's password form; app.web.account keeps every other page closed until then.
                return redirect(url_for("account.index", _anchor="password"))
            return redirect(landing(check.user.is_admin, next_url))
        lock = record_failed_signin(email, "password")
        if lock is not None:
            return _throttled(form, next_url, lock)
        form_errors(AppError("invalid_credentials", fields={"password": N_("Email or password is not right.")}), form)
    status = 401 if form.is_submitted() and form.errors else 200
    return render_template("auth/signin.html", form=form, next=next_url), status  # type: ignore[return-value]


def _throttled(form: SignInForm, next_url: str, exc: throttle.Throttled) -> Response:
    """429 with Retry-After, and the form again with the rate_limited hint: when to try again."""
    html = render_template("auth/signin.html", form=form, next=next_url, throttled=exc)
    response = Response(html, status=exc.http_status, mimetype="text/html")
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _flag_breached_password(db: Session, settings: Settings, user: User, password: str) -> bool:
    """With the breach check on, a password found in a breach must be changed before anything else.

    Runs before the second-factor step, whose commit stores the flag too; returns whether it was set now.
    """
    if not settings.pwned_range_url or user.must_change_password:
        return False
    if not passwords.is_breached(settings, password, client=get_client(current_app)):
        return False
    user.must_change_password = True
    audit.record(db, audit_ctx(), "password.breached", target=f"user:{user.id}", details={"at": "signin"})
    return True


@bp.post("/signout")
def signout() -> Response:
    who = signed_in()
    if who is not None:
        db = db_session()
        sessions.revoke_session(db, who.record)
        audit.record(db, audit_ctx(), "signout", target=f"user:{who.user.id}")
        db.commit()
    logout_user()
    session.clear()
    return redirect(url_for("auth.signin"))


@bp.route("/setup/<token>", methods=["GET", "POST"])
def setup(token: str) -> str | Response:
    """First-admin setup from the one-time link printed by `ami-auth bootstrap`."""
    db = db_session()
    settings = get_settings()
    if mail_tokens.find_token(db, "setup", token) is None or users.admin_count(db) > 0:
        raise AppError(
            "token_expired",
            N_("This setup link is no longer valid."),
            N_("Run `ami-auth bootstrap` to print a new link, or sign in if an admin exists."),
            status=410,
        )
    form = SetupForm()
    if form.validate_on_submit():
        try:
            if mail_tokens.consume_token(db, "setup", token) is None:
                raise AppError("token_expired", N_("This setup link was just used."), status=410)
            user = users.create_user(
                db,
                settings,
                email=form.email.data,
                password=form.password.data,
                role="admin",
                display_name=form.display_name.data or "",
                verified=True,
            )
            audit.record(db, audit_ctx(), "setup.first_admin", target=f"user:{user.id}", details={"email": user.email})
            db.commit()
        except AppError as exc:
            db.rollback()
            if exc.code == "token_expired":
                raise
            form_errors(exc, form)
        else:
            establish_session(user, ["password"])
            return redirect(url_for("admin.index"))
    return render_template("auth/setup.html", form=form)
