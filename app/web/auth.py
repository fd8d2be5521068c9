"""Sign-in pages: password sign-in, sign-out and the first-admin setup link."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_login import login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from app import audit
from app.auth import mail_tokens, sessions, users
from app.errors import AppError
from app.extensions import db_session, get_settings
from app.models import User
from app.web import mfa
from app.web.common import SignedIn, audit_ctx, client_ip, form_errors, safe_next, signed_in, user_agent

bp = Blueprint("auth", __name__)


class SignInForm(FlaskForm):  # type: ignore[misc]
    email = EmailField("Email", validators=[DataRequired(), Length(max=320)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])


class SetupForm(FlaskForm):  # type: ignore[misc]
    email = EmailField("Email", validators=[DataRequired(), Length(max=320)])
    display_name = StringField("Your name", validators=[Length(max=200)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    confirm = PasswordField(
        "Repeat password", validators=[DataRequired(), EqualTo("password", "The passwords differ.")]
    )


def establish_session(user: User, methods: list[str], *, mfa_verified: bool = False) -> None:
    """Start a fresh server-side session: the old cookie contents (and CSRF token) are dropped (fixation)."""
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


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> str | Response:
    next_url = safe_next(request.args.get("next"), url_for("web.home"))
    if signed_in() is not None:
        return redirect(next_url)
    form = SignInForm()
    if form.validate_on_submit():
        db = db_session()
        settings = get_settings()
        check = users.check_password(db, settings, form.email.data, form.password.data)
        if check.ok and check.user is not None:
            # MFA: a user with a second factor gets no session yet, only a pending sign-in (app/web/mfa.py).
            if mfa.needs_second_factor(check.user):
                return mfa.start_second_factor(check.user, ["password"], next_url)
            audit.record(
                db,
                audit_ctx(),
                "signin.success",
                target=f"user:{check.user.id}",
                details={"method": "password"},
            )
            db.commit()
            establish_session(check.user, ["password"])
            return redirect(next_url)
        audit.record(
            db,
            audit_ctx(),
            "signin.failure",
            target=f"email:{users.normalize_email(form.email.data)}",
            outcome="failure",
            details={"method": "password"},
        )
        db.commit()
        form_errors(AppError("invalid_credentials", fields={"password": "Email or password is not right."}), form)
    status = 401 if form.is_submitted() and form.errors else 200
    return render_template("auth/signin.html", form=form, next=next_url), status  # type: ignore[return-value]


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
            "This setup link is no longer valid.",
            "Run `ami-auth bootstrap` to print a new link, or sign in if an admin exists.",
            status=410,
        )
    form = SetupForm()
    if form.validate_on_submit():
        try:
            if mail_tokens.consume_token(db, "setup", token) is None:
                raise AppError("token_expired", "This setup link was just used.", status=410)
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
