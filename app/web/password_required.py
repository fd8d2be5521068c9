"""The forced password change: a user flagged ``must_change_password`` sees this page before anything else.

The flag is set at sign-in when the breached-password check finds the password in a breach corpus (and
may be set by an admin). Until the password is changed every page redirects here, except sign-out.
"""

from __future__ import annotations

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import PasswordField
from wtforms.validators import DataRequired, EqualTo, Length

from app import audit
from app.auth import passwords, sessions
from app.errors import AppError
from app.extensions import db_session, get_settings
from app.models import utcnow
from app.net import get_client
from app.web.common import audit_ctx, form_errors, login_required, safe_next, signed_in, wants_json

bp = Blueprint("password_required", __name__)

# What a flagged user may still reach: this page, sign-out, the static files, and the account page's own
# password form (it clears the flag too), so that a second guard sending users there cannot loop with this one.
_ALLOWED_ENDPOINTS = frozenset(
    {"password_required.change", "auth.signout", "static", "account.index", "account.change_password"}
)


class RequiredChangeForm(FlaskForm):  # type: ignore[misc]
    password = PasswordField("New password", validators=[DataRequired(), Length(max=passwords.MAX_PASSWORD_LENGTH)])
    confirm = PasswordField(
        "Repeat new password", validators=[DataRequired(), EqualTo("password", "The passwords differ.")]
    )


@bp.before_app_request
def _force_change() -> Response | None:
    if request.endpoint in _ALLOWED_ENDPOINTS:
        return None
    who = signed_in()
    if who is None or not who.user.must_change_password:
        return None
    if wants_json():
        raise AppError(
            "permission_denied",
            "The password of this account must be changed first.",
            "Sign in with a browser and choose a new password.",
        )
    return redirect(url_for("password_required.change", next=request.full_path.rstrip("?")))


@bp.route("/account/password/required", methods=["GET", "POST"])
@login_required
def change() -> str | Response:
    who = signed_in()
    assert who is not None
    next_url = safe_next(request.args.get("next"), url_for("web.home"))
    if not who.user.must_change_password:
        return redirect(next_url)
    form = RequiredChangeForm()
    if form.validate_on_submit():
        db = db_session()
        settings = get_settings()
        user = who.user
        new = form.password.data
        problem = passwords.policy_problem(settings, new, user.email, client=get_client(current_app))
        if problem is None and user.password_hash and passwords.verify_password(settings, user.password_hash, new):
            problem = "Choose a password different from the current one."
        if problem is not None:
            form_errors(AppError("validation_failed", fields={"password": problem}), form)
        else:
            user.password_hash = passwords.hash_password(settings, new)
            user.password_changed_at = utcnow()
            user.must_change_password = False
            # Whoever else holds the old password may hold a session too.
            ended = sessions.revoke_user_sessions(db, user.id, keep=who.record.id)
            audit.record(
                db,
                audit_ctx(),
                "password.changed",
                target=f"user:{user.id}",
                details={"reason": "required", "other_sessions_ended": ended},
            )
            db.commit()
            return redirect(next_url)
    status = 422 if form.is_submitted() and form.errors else 200
    return render_template("account/password_required.html", form=form, next=next_url), status  # type: ignore[return-value]
