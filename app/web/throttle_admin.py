"""Admin "Unlock" for an account locked by the sign-in throttle (see app.auth.throttle)."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, request, url_for
from werkzeug.wrappers import Response

from app.auth import throttle
from app.errors import AppError
from app.extensions import db_session, get_limit_storage
from app.http.context import audit_ctx
from app.i18n import gettext as _
from app.models import User
from app.web.common import admin_required, safe_next

bp = Blueprint("throttle_admin", __name__, url_prefix="/admin")


@bp.app_template_global()
def account_lock_status(email: str) -> throttle.AccountStatus:
    """For the admin user page: ``{% set lock = account_lock_status(user.email) %}``."""
    return throttle.account_status(get_limit_storage(), email)


@bp.app_template_global()
def describe_wait(seconds: int) -> str:
    return throttle.describe_wait(seconds)


@bp.post("/users/<int:user_id>/unlock")
@admin_required
def unlock(user_id: int) -> Response:
    """Clear the account lock and failure count; the form is ``templates/admin/_unlock_button.html``."""
    db = db_session()
    user = db.get(User, user_id)
    if user is None:
        raise AppError("not_found", _("No such user."))
    was_locked = throttle.unlock_account(get_limit_storage(), user.email, db=db, ctx=audit_ctx())
    db.commit()
    flash(
        _("%(email)s is unlocked.", email=user.email)
        if was_locked
        else _("%(email)s was not locked.", email=user.email),
        "success",
    )
    return redirect(safe_next(request.form.get("next"), url_for("admin.index")))
