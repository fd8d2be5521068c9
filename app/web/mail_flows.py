"""Pages reached from a mail or by someone signed out: sign-up, forgotten password, reset, invite, verify,
unlock link."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_wtf import FlaskForm
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from app import faults
from app.audit import AuditContext
from app.auth import lifecycle
from app.errors import N_, AppError
from app.extensions import db_session, get_limit_storage, get_settings
from app.http.context import audit_ctx
from app.i18n import gettext as _
from app.i18n import lazy_gettext
from app.settings import Settings
from app.web.browser import remember_browser
from app.web.common import keep_on_form

bp = Blueprint("flows", __name__)
Page = str | Response | tuple[str, int]
log = logging.getLogger("ami_auth.mail")

# Failures of the mail transport that an anonymous visitor should not see in detail (host names, ports).
MAIL_FAILURES = frozenset({"provider_unreachable", "invalid_credentials", "invalid_config"})


class EmailForm(FlaskForm):  # type: ignore[misc]
    email = EmailField(lazy_gettext("Email"), validators=[DataRequired(), Length(max=320)])


class NewPasswordForm(FlaskForm):  # type: ignore[misc]
    password = PasswordField(lazy_gettext("New password"), validators=[DataRequired(), Length(max=256)])
    confirm = PasswordField(
        lazy_gettext("Repeat new password"),
        validators=[DataRequired(), EqualTo("password", lazy_gettext("The passwords differ."))],
    )


class InviteForm(FlaskForm):  # type: ignore[misc]
    password = PasswordField(lazy_gettext("Password"), validators=[DataRequired(), Length(max=256)])
    confirm = PasswordField(
        lazy_gettext("Repeat password"),
        validators=[DataRequired(), EqualTo("password", lazy_gettext("The passwords differ."))],
    )


class SignupForm(FlaskForm):  # type: ignore[misc]
    email = EmailField(lazy_gettext("Email"), validators=[DataRequired(), Length(max=320)])
    display_name = StringField(lazy_gettext("Your name"), validators=[Length(max=200)])
    password = PasswordField(lazy_gettext("Password"), validators=[DataRequired(), Length(max=256)])


class ConfirmForm(FlaskForm):  # type: ignore[misc]
    """Only the CSRF token: confirming by POST keeps link scanners that prefetch GETs from acting."""


def _status(form: FlaskForm) -> int:
    return 422 if form.is_submitted() and form.errors else 200


def mail_failed(exc: AppError, what_happened: str) -> AppError:
    """503 ``service_unavailable`` for an action whose mail could not be sent; the log keeps the mailer's detail."""
    log.warning("mail could not be sent: %s (%s)", exc.text, exc.code)
    return faults.mail_unavailable(what_happened)


@bp.app_context_processor
def _signup_links() -> dict[str, Any]:
    return {"signup_open": lifecycle.signup_open(get_settings())}


def _mail_request(send: Callable[[Session, Settings, AuditContext, str], None], page: str, sent: str) -> Page:
    """A form with one address that mails a link (or a note that there is no account): the same "check your
    inbox" page either way; a transport failure is a 503 without its details."""
    form = EmailForm()
    if form.validate_on_submit():
        db = db_session()
        try:
            send(db, get_settings(), audit_ctx(), form.email.data)
        except AppError as exc:
            if exc.code in MAIL_FAILURES:
                db.rollback()
                # The link was stored before sending (mail never describes a rolled-back change); unsent, it
                # just expires. Asking again issues a new one.
                raise mail_failed(exc, N_("We could not send the mail right now, so no reset link went out.")) from None
            keep_on_form(db, exc, form)
        else:
            return render_template(sent, email=form.email.data.strip())
    return render_template(page, form=form), _status(form)


@bp.route("/reset", methods=["GET", "POST"])
def reset_request() -> Page:
    return _mail_request(lifecycle.request_password_reset, "auth/reset.html", "auth/reset_sent.html")


@bp.route("/reset/<token>", methods=["GET", "POST"])
def reset_password(token: str) -> Page:
    db = db_session()
    user = lifecycle.reset_user(db, token)
    form = NewPasswordForm()
    if form.validate_on_submit():
        try:
            lifecycle.reset_password(db, get_settings(), audit_ctx(), token, form.password.data)
        except AppError as exc:
            keep_on_form(db, exc, form)
        else:
            flash(_("Your password was changed and every session was signed out. Sign in with the new one."), "success")
            return redirect(url_for("auth.signin"))
    return render_template("auth/reset_password.html", form=form, email=user.email), _status(form)


@bp.route("/invite/<token>", methods=["GET", "POST"])
def invite(token: str) -> Page:
    db = db_session()
    user = lifecycle.invite_user(db, token)
    form = InviteForm()
    if form.validate_on_submit():
        try:
            lifecycle.accept_invite(db, get_settings(), audit_ctx(), token, form.password.data)
        except AppError as exc:
            keep_on_form(db, exc, form)
        else:
            flash(_("Your password is set. Sign in to continue."), "success")
            return redirect(url_for("auth.signin"))
    return render_template("auth/invite.html", form=form, user=user), _status(form)


@bp.route("/verify/<token>", methods=["GET", "POST"])
def verify(token: str) -> str | Response:
    db = db_session()
    user = lifecycle.verification_user(db, token)
    form = ConfirmForm()
    if form.validate_on_submit():
        lifecycle.verify_email(db, get_settings(), audit_ctx(), token)
        return render_template("auth/verify_done.html", email=user.email)
    return render_template("auth/verify.html", form=form, email=user.email)


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> Page:
    settings = get_settings()
    if not lifecycle.signup_open(settings):
        raise AppError(
            "not_found",
            N_("Sign-up is not open on this server."),
            N_("Accounts are created by an administrator; ask one for an invitation."),
        )
    form = SignupForm()
    if form.validate_on_submit():
        db = db_session()
        try:
            lifecycle.signup(
                db,
                settings,
                audit_ctx(),
                email=form.email.data,
                display_name=form.display_name.data or "",
                password=form.password.data,
            )
        except AppError as exc:
            if exc.code in MAIL_FAILURES:
                db.rollback()
                # Worded alike whether or not the address already had an account (sign-up reveals neither).
                raise mail_failed(
                    exc, "We could not send the mail right now, so your sign-up is not confirmed yet."
                ) from None
            keep_on_form(db, exc, form)
        else:
            return render_template("auth/signup_sent.html", email=form.email.data.strip())
    return render_template("auth/signup.html", form=form), _status(form)


@bp.route("/signin/unlock", methods=["GET", "POST"])
def unlock_request() -> Page:
    """Ask for an unlock link (offered on the sign-in page while it says the account is locked)."""
    return _mail_request(lifecycle.request_unlock, "auth/unlock_request.html", "auth/unlock_sent.html")


@bp.route("/unlock/<token>", methods=["GET", "POST"])
def unlock(token: str) -> str | Response:
    """Confirm by POST (a link scanner's GET must not spend the link); then this browser is remembered for the
    account, so a stranger who keeps guessing elsewhere cannot lock it again."""
    db = db_session()
    user = lifecycle.unlock_user(db, token)
    form = ConfirmForm()
    if form.validate_on_submit():
        unlocked = lifecycle.unlock_with_link(db, get_limit_storage(), audit_ctx(), token)
        remember_browser(unlocked.email, network=False)
        flash(
            _("Your account is unlocked, and this browser is remembered for it. Sign in with your password."), "success"
        )
        return redirect(url_for("auth.signin"))
    return render_template("auth/unlock.html", form=form, email=user.email)
