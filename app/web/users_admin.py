"""The admin console's users pages (list, create, detail) and the development mail outbox."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy import select
from werkzeug.wrappers import Response
from wtforms import BooleanField, EmailField, PasswordField, RadioField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from app.auth import lifecycle, sessions, trusted_browsers, user_admin
from app.auth.devices import device_summary
from app.errors import AppError, translated
from app.extensions import db_session, get_settings
from app.http.context import audit_ctx, signed_in
from app.i18n import gettext as _
from app.i18n import lazy_gettext as _l
from app.idp import consents
from app.models import MailOutbox, User
from app.services import linked_identities
from app.web.common import admin_required, form_errors, keep_on_form

bp = Blueprint("users_admin", __name__, url_prefix="/admin")

ROLE_CHOICES = [SelectChoice("member", _l("Member")), SelectChoice("admin", _l("Admin"))]
MODE_CHOICES = [
    SelectChoice("invite", _l("Send an invitation by mail")),
    SelectChoice("password", _l("Set a password now")),
]
OUTBOX_LIMIT = 50


class CreateUserForm(FlaskForm):  # type: ignore[misc]
    email = EmailField(_l("Email"), validators=[DataRequired(), Length(max=320)])
    display_name = StringField(_l("Name"), validators=[Length(max=200)])
    role = SelectField(_l("Role"), choices=ROLE_CHOICES, default="member")
    metadata = TextAreaField(_l("Metadata (JSON object, optional)"), render_kw={"rows": 4, "spellcheck": "false"})
    mode = RadioField(_l("How they get in"), choices=MODE_CHOICES, default="invite")
    password = PasswordField(_l("Password"), validators=[Length(max=256)])
    temporary = BooleanField(_l("Ask them to choose a new password at first sign-in"), default=True)


class EditUserForm(FlaskForm):  # type: ignore[misc]
    display_name = StringField(_l("Name"), validators=[Length(max=200)])
    role = SelectField(_l("Role"), choices=ROLE_CHOICES)
    metadata = TextAreaField(_l("Metadata (JSON object)"), render_kw={"rows": 6, "spellcheck": "false"})


def _actor() -> User:
    who = signed_in()
    assert who is not None  # admin_required ran first
    return who.user


def _page_arg() -> int:
    raw = request.args.get("page", "1")
    return int(raw) if raw.isdigit() and len(raw) < 7 else 1


@bp.get("/users")
@admin_required
def users() -> str:
    query = request.args.get("q", "").strip()[:200]
    page = user_admin.list_users(db_session(), query=query, page=_page_arg())
    return render_template("admin/users.html", result=page, q=query)


@bp.route("/users/new", methods=["GET", "POST"])
@admin_required
def create_user() -> Response | tuple[str, int]:
    settings = get_settings()
    form = CreateUserForm()
    if not lifecycle.invites_allowed(settings):
        form.mode.choices = [c for c in MODE_CHOICES if c.value == "password"]
        if not form.is_submitted():
            form.mode.data = "password"
    status = 200
    if form.validate_on_submit():
        db = db_session()
        try:
            created = user_admin.create_user(
                db,
                settings,
                audit_ctx(),
                email=form.email.data,
                display_name=form.display_name.data or "",
                role=form.role.data,
                metadata=form.metadata.data or "",
                mode="invite" if form.mode.data == "invite" else "password",
                password=form.password.data or None,
                temporary=bool(form.temporary.data),
            )
        except AppError as exc:
            keep_on_form(db, exc, form)
            status = exc.http_status
        else:
            user = created.user
            if created.mail_error is not None:
                flash(
                    _(
                        "%(email)s was created, but the invitation could not be sent: %(error)s Fix the mailer, "
                        "then use “Send invitation again”.",
                        email=user.email,
                        error=created.mail_error.text,
                    ),
                    "warning",
                )
            elif form.mode.data == "invite":
                flash(_("Invitation sent to %(email)s. The link works for 7 days.", email=user.email), "success")
            else:
                flash(_("%(email)s was created with the password you typed.", email=user.email), "success")
            return redirect(url_for("users_admin.user_detail", user_id=user.id))
    elif form.is_submitted() and not form.csrf_token.errors:
        # The form's own checks failed (a blank email…): add the service's, so every problem shows at once.
        db = db_session()
        try:
            user_admin.create_problems(
                db,
                settings,
                email=form.email.data or "",
                role=form.role.data or "",
                metadata=form.metadata.data or "",
                mode="invite" if form.mode.data == "invite" else "password",
                password=form.password.data or None,
                full=True,
            )
        except AppError as exc:
            new = {k: v for k, v in exc.fields.items() if not getattr(getattr(form, k, None), "errors", None)}
            form_errors(AppError("validation_failed", fields=new), form)
        status = 422
    elif form.is_submitted():
        status = 422
    return render_template(
        "admin/user_new.html", form=form, invites_allowed=lifecycle.invites_allowed(settings)
    ), status


def _detail(
    user: User, form: EditUserForm | None = None, status: int = 200, error: AppError | None = None
) -> tuple[str, int]:
    db = db_session()
    settings = get_settings()
    if form is None:
        form = EditUserForm(
            formdata=None,
            display_name=user.display_name,
            role=user.role,
            metadata=user_admin.format_metadata(user.user_metadata),
        )
    who = signed_in()
    paged = sessions.live_sessions_page(db, settings, user.id, request.args.get("sessions_page", 1, type=int))
    context: dict[str, Any] = {
        "user": user,
        "form": form,
        "sessions": [(s, translated(device_summary(s.user_agent))) for s in paged.rows],
        "session_page": paged,
        "is_self": who is not None and who.user.id == user.id,
        "current_session": who.record.id if who is not None else None,
        "invites_allowed": lifecycle.invites_allowed(settings),
        "identities": linked_identities.list_identities(db, user.id),
        "trusted": [(t, translated(device_summary(t.user_agent))) for t in trusted_browsers.live(db, user.id)],
        "apps": consents.authorized_apps(db, user.id),
        "error": error,
    }
    return render_template("admin/user_detail.html", **context), status


@bp.get("/users/<int:user_id>")
@admin_required
def user_detail(user_id: int) -> tuple[str, int]:
    return _detail(user_admin.get_user(db_session(), user_id))


@bp.post("/users/<int:user_id>/edit")
@admin_required
def edit_user(user_id: int) -> Response | tuple[str, int]:
    db = db_session()
    user = user_admin.get_user(db, user_id)
    form = EditUserForm()
    if form.validate_on_submit():
        try:
            changed = user_admin.update_user(
                db,
                audit_ctx(),
                _actor(),
                user,
                display_name=form.display_name.data or "",
                role=form.role.data,
                metadata=form.metadata.data or "",
            )
        except AppError as exc:
            db.rollback()
            form_errors(exc, form)
            return _detail(user, form, exc.http_status, None if exc.fields else exc)
        flash(_("Saved.") if changed else _("Nothing changed."), "success")
        return redirect(url_for("users_admin.user_detail", user_id=user.id))
    return _detail(user, form, 422)


def _mail_action(user_id: int, action: str) -> Response:
    db = db_session()
    user = user_admin.get_user(db, user_id)
    try:
        if action == "reset":
            user_admin.send_reset_link(db, get_settings(), audit_ctx(), user)
            flash(_("A password reset link was sent to %(email)s. It works for 1 hour.", email=user.email), "success")
        else:
            lifecycle.send_invite(db, get_settings(), audit_ctx(), user, inviter=_actor().email)
            flash(_("Invitation sent to %(email)s. The link works for 7 days.", email=user.email), "success")
    except AppError as exc:
        db.rollback()
        flash(f"{exc.text} {exc.help}", "error")
    return redirect(url_for("users_admin.user_detail", user_id=user_id))


@bp.post("/users/<int:user_id>/reset-link")
@admin_required
def send_reset_link(user_id: int) -> Response:
    return _mail_action(user_id, "reset")


@bp.post("/users/<int:user_id>/invite")
@admin_required
def resend_invite(user_id: int) -> Response:
    return _mail_action(user_id, "invite")


@bp.post("/users/<int:user_id>/disable")
@admin_required
def disable_user(user_id: int) -> Response | tuple[str, int]:
    db = db_session()
    user = user_admin.get_user(db, user_id)
    try:
        ended = user_admin.set_active(db, audit_ctx(), _actor(), user, False)
    except AppError as exc:
        db.rollback()
        return _detail(user, status=exc.http_status, error=exc)
    flash(_("%(email)s is disabled; %(ended)s session(s) were signed out.", email=user.email, ended=ended), "success")
    return redirect(url_for("users_admin.user_detail", user_id=user_id))


@bp.post("/users/<int:user_id>/enable")
@admin_required
def enable_user(user_id: int) -> Response:
    db = db_session()
    user = user_admin.get_user(db, user_id)
    user_admin.set_active(db, audit_ctx(), _actor(), user, True)
    flash(_("%(email)s is enabled and can sign in again.", email=user.email), "success")
    return redirect(url_for("users_admin.user_detail", user_id=user_id))


@bp.route("/users/<int:user_id>/delete", methods=["GET", "POST"])
@admin_required
def delete_user(user_id: int) -> str | Response | tuple[str, int]:
    db = db_session()
    user = user_admin.get_user(db, user_id)
    if request.method == "POST":
        email = user.email
        try:
            user_admin.delete_user(db, audit_ctx(), _actor(), user)
        except AppError as exc:
            db.rollback()
            return _detail(user, status=exc.http_status, error=exc)
        flash(_("%(email)s was deleted.", email=email), "success")
        return redirect(url_for("users_admin.users"))
    return render_template("admin/user_delete.html", user=user)


@bp.post("/users/<int:user_id>/identities/<int:identity_id>/unlink")
@admin_required
def unlink_identity(user_id: int, identity_id: int) -> Response | tuple[str, int]:
    """Unlink a sign-in identity from a user (the conflict page tells people to ask an admin for this)."""
    db = db_session()
    user = user_admin.get_user(db, user_id)
    try:
        identity = linked_identities.unlink(db, audit_ctx(), user, identity_id, via="admin")
        db.commit()
    except AppError as exc:
        db.rollback()
        return _detail(user, status=exc.http_status, error=exc)
    flash(
        _(
            "The %(provider)s identity %(identity)s no longer signs %(email)s in.",
            provider=identity.provider_name,
            identity=identity.email or "",
            email=user.email,
        ),
        "success",
    )
    return redirect(url_for("users_admin.user_detail", user_id=user_id, _anchor="identities"))


@bp.post("/users/<int:user_id>/sessions/<public_id>/revoke")
@admin_required
def revoke_session(user_id: int, public_id: str) -> Response:
    db = db_session()
    user = user_admin.get_user(db, user_id)
    user_admin.revoke_session(db, audit_ctx(), user, public_id[:32])
    flash(_("The session was signed out."), "success")
    return redirect(url_for("users_admin.user_detail", user_id=user_id))


@bp.post("/users/<int:user_id>/trusted/<public_id>/revoke")
@admin_required
def untrust_browser(user_id: int, public_id: str) -> Response:
    db = db_session()
    user = user_admin.get_user(db, user_id)
    trusted_browsers.revoke(db, audit_ctx(), user.id, public_id, by="admin")
    flash(_("That browser no longer skips the second factor of %(email)s.", email=user.email), "success")
    return redirect(url_for("users_admin.user_detail", user_id=user_id))


@bp.post("/users/<int:user_id>/sessions/revoke-all")
@admin_required
def revoke_all_sessions(user_id: int) -> Response:
    db = db_session()
    user = user_admin.get_user(db, user_id)
    ended = user_admin.revoke_all_sessions(db, audit_ctx(), user)
    flash(_("Signed out %(ended)s session(s).", ended=ended), "success")
    return redirect(url_for("users_admin.user_detail", user_id=user_id))


@bp.get("/outbox")
@admin_required
def outbox() -> str:
    """Mail kept instead of sent (development and test only, when no SMTP transport is configured)."""
    mails = db_session().scalars(select(MailOutbox).order_by(MailOutbox.id.desc()).limit(OUTBOX_LIMIT)).all()
    return render_template("admin/outbox.html", mails=mails, production=get_settings().is_production)


@bp.post("/users/<int:user_id>/apps/<client_id>/revoke")
@admin_required
def revoke_app(user_id: int, client_id: str) -> Response:
    db = db_session()
    user = user_admin.get_user(db, user_id)
    try:
        consents.revoke(db, audit_ctx(), user.id, client_id[:64])
        db.commit()
    except AppError as exc:
        db.rollback()
        flash(f"{exc.text} {exc.help}", "error")
    else:
        flash(_("That app no longer has access to %(email)s's account.", email=user.email), "success")
    return redirect(url_for("users_admin.user_detail", user_id=user.id, _anchor="apps"))
