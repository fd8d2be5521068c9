"""A signed-in user's own account: profile, email verification, password, linked sign-in identities, sessions."""

from __future__ import annotations

import logging

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import EmailField, PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from app.auth import email_change, lifecycle, sessions, throttle, trusted_browsers
from app.auth.devices import device_summary
from app.errors import N_, AppError, translated
from app.extensions import db_session, get_limit_storage, get_settings
from app.http.context import SignedIn, audit_ctx, client_ip, signed_in
from app.i18n import force_locale, language_name, lazy_gettext, shipped_locales
from app.i18n import gettext as _
from app.idp import consents
from app.services import linked_identities
from app.web.browser import browser_id
from app.web.common import form_errors, login_required, safe_next
from app.web.mail_flows import MAIL_FAILURES, mail_failed

bp = Blueprint("account", __name__, url_prefix="/account")
log = logging.getLogger("ami_auth.account")

# Where a user who must change their password may still go (everything else redirects to the form).
# The buttons below carry CSRFProtect's token (checked app-wide for every POST), so they need no form class.
MUST_CHANGE_ALLOWED = frozenset({"account.index", "account.change_password", "auth.signout", "static"})
MUST_CHANGE_ALLOWED_PREFIXES = ("flows.", "web.")


class ProfileForm(FlaskForm):  # type: ignore[misc]
    display_name = StringField(lazy_gettext("Name"), validators=[Length(max=200)])


class LanguageForm(FlaskForm):  # type: ignore[misc]
    # The service checks the value against the shipped locales (a field error, not WTForms' "Not a valid choice").
    locale = SelectField(lazy_gettext("Language"), validate_choice=False)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # Each language in its own name ("Deutsch", "Français"): whoever cannot read the page can still find theirs.
        self.locale.choices = [("", _("Browser default")), *((code, language_name(code)) for code in shipped_locales())]


class PasswordForm(FlaskForm):  # type: ignore[misc]
    current_password = PasswordField(lazy_gettext("Current password"), validators=[DataRequired(), Length(max=256)])
    new_password = PasswordField(lazy_gettext("New password"), validators=[DataRequired(), Length(max=256)])
    confirm = PasswordField(
        lazy_gettext("Repeat new password"),
        validators=[DataRequired(), EqualTo("new_password", lazy_gettext("The passwords differ."))],
    )


class EmailChangeForm(FlaskForm):  # type: ignore[misc]
    new_email = EmailField(lazy_gettext("New email address"), validators=[DataRequired(), Length(max=320)])
    # Not "password": the page's password section already has that id.
    email_password = PasswordField(lazy_gettext("Your password"), validators=[DataRequired(), Length(max=256)])


class ConfirmForm(FlaskForm):  # type: ignore[misc]
    """CSRF only: the email change is confirmed by POST, so link scanners that prefetch GETs change nothing."""


def _others_signed_out(ended: int) -> str:
    return " " + _("%(num)s other session(s) were signed out.", num=ended) if ended else ""


def _who() -> SignedIn:
    who = signed_in()
    assert who is not None  # login_required ran first
    return who


@bp.before_app_request
def _require_password_change() -> Response | None:
    """A password an admin typed is temporary: until it is changed, only the account page is reachable."""
    who = signed_in()
    endpoint = request.endpoint or ""
    if who is None or not who.live.user.must_change_password:
        return None
    if endpoint in MUST_CHANGE_ALLOWED or endpoint.startswith(MUST_CHANGE_ALLOWED_PREFIXES):
        return None
    if request.path.startswith("/api/"):
        raise AppError(
            "permission_denied", N_("Change your password first."), N_("Sign in to the web page and change it.")
        )
    return redirect(url_for("account.index", _anchor="password"))


def _page(
    profile_form: ProfileForm | None = None,
    password_form: PasswordForm | None = None,
    status: int = 200,
    email_form: EmailChangeForm | None = None,
    language_form: LanguageForm | None = None,
) -> tuple[str, int]:
    who = _who()
    db = db_session()
    paged = sessions.live_sessions_page(db, get_settings(), who.user.id, request.args.get("sessions_page", 1, type=int))
    profile_form = profile_form or ProfileForm(formdata=None, display_name=who.user.display_name)
    html = render_template(
        "account/index.html",
        user=who.user,
        sessions=[(s, translated(device_summary(s.user_agent))) for s in paged.rows],
        session_page=paged,
        current_session=who.record.id,
        profile_form=profile_form,
        password_form=password_form or PasswordForm(formdata=None),
        email_form=email_form or EmailChangeForm(formdata=None),
        language_form=language_form or LanguageForm(formdata=None, locale=who.user.locale or ""),
        identities=linked_identities.list_identities(db, who.user.id),
        trusted=[(t, translated(device_summary(t.user_agent))) for t in trusted_browsers.live(db, who.user.id)],
        apps=consents.authorized_apps(db, who.user.id),
    )
    return html, status


@bp.get("/")
@login_required
def index() -> tuple[str, int]:
    return _page()


@bp.post("/profile")
@login_required
def profile() -> Response | tuple[str, int]:
    form = ProfileForm()
    if form.validate_on_submit():
        who = _who()
        try:
            lifecycle.update_profile(db_session(), audit_ctx(), who.user, display_name=form.display_name.data or "")
        except AppError as exc:
            db_session().rollback()
            form_errors(exc, form)
        else:
            flash(_("Your name was saved."), "success")
            return redirect(url_for("account.index"))
    return _page(profile_form=form, status=422)


@bp.post("/language")
@login_required
def language() -> Response | tuple[str, int]:
    """The language of pages and mails: a shipped locale, or the browser's (Accept-Language)."""
    form = LanguageForm()
    if form.validate_on_submit():
        who = _who()
        shipped = shipped_locales()
        try:
            lifecycle.update_locale(db_session(), audit_ctx(), who.user, locale=form.locale.data or "", shipped=shipped)
        except AppError as exc:
            db_session().rollback()
            form_errors(exc, form)
        else:
            # Said in the language just chosen: this request's locale was picked before the change.
            chosen = who.user.locale or request.accept_languages.best_match(shipped, default=shipped[0])
            with force_locale(chosen):
                flash(_("Your language was saved."), "success")
            return redirect(url_for("account.index", _anchor="language"))
    return _page(language_form=form, status=422)


@bp.post("/password")
@login_required
def change_password() -> Response | tuple[str, int]:
    """The current password is checked under the sign-in throttle: a wrong one counts toward the account
    lock like a failed sign-in, so a borrowed session cannot be used to guess it."""
    form = PasswordForm()
    status, retry_after = 422, None
    if form.validate_on_submit():
        who = _who()
        db = db_session()
        settings, storage, ip, device = get_settings(), get_limit_storage(), client_ip(), browser_id()
        try:
            throttle.check_signin(storage, settings, email=who.user.email, ip=ip, device=device)
            result = lifecycle.change_password(
                db,
                settings,
                audit_ctx(),
                who.user,
                current=form.current_password.data,
                new=form.new_password.data,
                keep_session=who.record.id,
            )
        except AppError as exc:
            db.rollback()
            error = exc
            if exc.code == "invalid_credentials":
                lock = throttle.record_failure(
                    storage, settings, who.user.email, ip, device=device, db=db, ctx=audit_ctx()
                )
                db.commit()
                error = lock or exc
            if isinstance(error, throttle.Throttled):  # the lock's reason goes on the field that was guessed
                form.current_password.errors = [*form.current_password.errors, f"{error.text} {error.help}"]
            else:
                form_errors(error, form)
            status, retry_after = error.http_status, error.retry_after
        else:
            throttle.record_success(storage, settings, who.user.email, ip, device=device)
            others = _others_signed_out(result.sessions_ended)
            flash(_("Your password was changed.") + others, "success")
            return redirect(url_for("account.index"))
    html, status = _page(password_form=form, status=status)
    response = Response(html, status=status, mimetype="text/html")
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


@bp.post("/verify")
@login_required
def resend_verification() -> Response:
    who = _who()
    db = db_session()
    try:
        lifecycle.send_verification(db, get_settings(), audit_ctx(), who.user)
    except AppError as exc:
        db.rollback()
        if exc.code in MAIL_FAILURES:
            raise mail_failed(
                exc, N_("We could not send the mail right now, so no new confirmation link went out.")
            ) from None
        log.warning("verification mail for user %s failed: %s", who.user.id, exc)
        reason = f"{exc.text} {exc.help}"
        flash(_("The mail could not be sent: %(reason)s", reason=reason), "error")
    else:
        flash(_("We sent a confirmation link to %(email)s. It works for 24 hours.", email=who.user.email), "success")
    return redirect(url_for("account.index"))


@bp.post("/identities/<int:identity_id>/unlink")
@login_required
def unlink_identity(identity_id: int) -> Response:
    """Unlink one of the user's sign-in identities (never the last way in: app.auth.linked_identities)."""
    who = _who()
    db = db_session()
    try:
        identity = linked_identities.unlink(db, audit_ctx(), who.user, identity_id, via="self")
        db.commit()
    except AppError as exc:
        db.rollback()
        flash(f"{exc.text} {exc.help}", "error")
    else:
        flash(_("Your %(provider)s account no longer signs you in here.", provider=identity.provider_name), "success")
    return redirect(url_for("account.index", _anchor="identities"))


@bp.post("/sessions/<public_id>/revoke")
@login_required
def revoke_session(public_id: str) -> Response:
    who = _who()
    lifecycle.revoke_own_session(db_session(), audit_ctx(), who.user, public_id[:32])
    flash(_("That session was signed out."), "success")
    return redirect(url_for("account.index"))


@bp.post("/sessions/revoke-others")
@login_required
def revoke_other_sessions() -> Response:
    who = _who()
    ended = lifecycle.revoke_other_sessions(db_session(), audit_ctx(), who.user, who.record.id)
    flash(_("Signed out %(num)s other session(s).", num=ended), "success")
    return redirect(url_for("account.index"))


@bp.post("/email")
@login_required
def request_email_change() -> Response | tuple[str, int]:
    """Mail a link to the new address. The password is checked under the sign-in throttle, as for a password
    change; the page says the same whether or not the new address is taken (the mail there says which)."""
    form = EmailChangeForm()
    status, retry_after = 422, None
    if form.validate_on_submit():
        who = _who()
        db = db_session()
        settings, storage, ip, device = get_settings(), get_limit_storage(), client_ip(), browser_id()
        try:
            throttle.check_signin(storage, settings, email=who.user.email, ip=ip, device=device)
            address = email_change.request_change(
                db, settings, audit_ctx(), who.user, new_email=form.new_email.data, password=form.email_password.data
            )
        except AppError as exc:
            db.rollback()
            if exc.code in MAIL_FAILURES and not exc.fields:  # the transport's; a wrong password blames a field
                raise mail_failed(exc, N_("We could not send the mail right now, so nothing was changed.")) from None
            error = exc
            if exc.code == "invalid_credentials":
                lock = throttle.record_failure(
                    storage, settings, who.user.email, ip, device=device, db=db, ctx=audit_ctx()
                )
                db.commit()
                error = lock or exc
            if isinstance(error, throttle.Throttled):
                form.email_password.errors = [*form.email_password.errors, f"{error.text} {error.help}"]
            elif error.fields:
                form_errors(_on_email_form(error), form)
            else:
                raise
            status, retry_after = error.http_status, error.retry_after
        else:
            flash(
                _(
                    "We sent a link to %(address)s. Your address changes when you follow it (within 1 hour).",
                    address=address,
                ),
                "success",
            )
            return redirect(url_for("account.index", _anchor="email"))
    html, status = _page(email_form=form, status=status)
    response = Response(html, status=status, mimetype="text/html")
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _on_email_form(error: AppError) -> AppError:
    """The services blame ``password`` and ``email``; on this form they are ``email_password`` and ``new_email``."""
    names = {"password": "email_password", "email": "new_email"}
    fields = {names.get(k, k): v for k, v in error.fields.items()}
    return AppError(error.code, error.message, error.hint, fields=fields)


@bp.route("/email/<token>", methods=["GET", "POST"])
def confirm_email_change(token: str) -> Response | tuple[str, int]:
    """The link mailed to the new address. Works signed in or not (it proves the new address; the password
    was asked when the change was asked for); the session that follows it, if the user's own, stays."""
    db = db_session()
    user, new_address = email_change.pending_change(db, token)
    form = ConfirmForm()
    if form.validate_on_submit():
        who = signed_in()
        keep = who.record.id if who is not None and who.user.id == user.id else None
        device = device_summary(request.headers.get("User-Agent", ""))
        where = N_("%(device)s, %(address)s", device=device, address=client_ip())  # in the mail's language
        changed = email_change.confirm_change(db, get_settings(), audit_ctx(), token, keep_session=keep, where=where)
        others = _others_signed_out(changed.sessions_ended)
        flash(_("Your email address is now %(address)s.", address=changed.new) + others, "success")
        return redirect(safe_next(url_for("account.index") if keep else url_for("auth.signin")))
    return render_template("account/email_confirm.html", form=form, user=user, new_address=new_address), 200


@bp.post("/trusted/<public_id>/revoke")
@login_required
def untrust_browser(public_id: str) -> Response:
    """Stop skipping the second factor in one browser (the next sign-in there asks for it again)."""
    who = _who()
    trusted_browsers.revoke(db_session(), audit_ctx(), who.user.id, public_id, by="self")
    flash(_("That browser is no longer trusted: it asks for your second factor again."), "success")
    return redirect(url_for("account.index", _anchor="trusted-heading"))


@bp.post("/apps/<client_id>/revoke")
@login_required
def revoke_app(client_id: str) -> Response:
    who = _who()
    db = db_session()
    try:
        consents.revoke(db, audit_ctx(), who.user.id, client_id[:64])
        db.commit()
    except AppError as exc:
        db.rollback()
        flash(f"{exc.text} {exc.help}", "error")
    else:
        flash(_("That app no longer has access to your account."), "success")
    return redirect(url_for("account.index", _anchor="apps"))
