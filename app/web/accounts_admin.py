"""Admin console: connected accounts of API-key and SMTP providers.

List (rotation badge, overdue filter), Add account (pick an enabled provider config, then its non-secret
fields), account page (Test now, Roll back, Edit details, Delete), and the link to the secure secret
dialog (app/web/dialogs.py), where secrets are typed. No secret is ever part of a page here.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from app.connectors import accounts, smtp
from app.connectors.verify import Verification, field_labels
from app.errors import AppError
from app.extensions import db_session, get_cipher, get_settings
from app.http.context import audit_ctx, signed_in
from app.i18n import gettext as _
from app.models import ConnectedAccount
from app.net import get_client
from app.providers import configs
from app.providers.catalog_messages import catalog_text
from app.providers.forms import ProviderForm, initial_data
from app.web.account_forms import ActionForm, details_form_class, has_own_label
from app.web.common import admin_required, form_errors

bp = Blueprint("accounts_admin", __name__, url_prefix="/admin/accounts")


def _row(account: ConnectedAccount) -> dict[str, Any]:
    return {
        "account": account,
        "provider": accounts.entry_for(account),
        "rotation": accounts.rotation_state(account),
    }


@bp.get("/")
@admin_required
def index() -> str:
    db = db_session()
    overdue_only = request.args.get("overdue") == "1"
    provider_type = request.args.get("type", "").strip()
    rows = [_row(account) for account in accounts.list_accounts(db)]
    types = sorted({(r["provider"].id, r["provider"].display_name) for r in rows}, key=lambda t: t[1])
    overdue_count = sum(1 for r in rows if r["rotation"].overdue)
    if overdue_only:
        rows = [r for r in rows if r["rotation"].overdue]
    if provider_type:
        rows = [r for r in rows if r["provider"].id == provider_type]
    return render_template(
        "admin/accounts.html",
        rows=rows,
        types=types,
        overdue_only=overdue_only,
        provider_type=provider_type,
        overdue_count=overdue_count,
        can_add=bool(accounts.connectable_configs(db)),
    )


@bp.get("/new")
@admin_required
def choose_config() -> str:
    db = db_session()
    options = [(cfg, configs.entry_for(cfg)) for cfg in accounts.connectable_configs(db)]
    return render_template("admin/accounts_new.html", options=options)


def _render_details(
    provider: Any, form: ProviderForm, cfg: Any, account: ConnectedAccount | None, status: int = 200, **extra: Any
) -> tuple[str, int]:
    html = render_template(
        "admin/accounts_form.html",
        provider=provider,
        form=form,
        cfg=cfg,
        account=account,
        own_label=has_own_label(provider),
        **extra,
    )
    return html, status


@bp.route("/new/<int:config_id>", methods=["GET", "POST"])
@admin_required
def create(config_id: int) -> tuple[str, int] | Response:
    db = db_session()
    cfg = configs.get_config(db, config_id)
    provider = configs.entry_for(cfg)
    if provider.auth_mode not in accounts.CONNECTABLE_MODES or not cfg.enabled:
        raise AppError(
            "invalid_config",
            _("“%(name)s” cannot take accounts here.", name=cfg.name),
            _("Pick an enabled API-key or SMTP provider config."),
        )
    secret_names = [spec.name for spec in provider.secret_fields("account")]
    form = details_form_class(provider, cfg)(data=initial_data(provider, "account"), secrets_set=secret_names)
    if form.is_submitted() and form.validate():
        who = signed_in()
        try:
            account = accounts.create_account(
                db, audit_ctx(), cfg, form.label.data, form.clean, user_id=who.id if who else None
            )
            db.commit()
        except AppError as exc:
            db.rollback()
            form_errors(exc, form)
            return _render_details(provider, form, cfg, None, exc.http_status)
        detail = url_for("accounts_admin.detail", account_id=account.id)
        return redirect(url_for("dialogs.account_secret", account_id=account.id, return_to=detail))
    return _render_details(provider, form, cfg, None, 422 if form.is_submitted() else 200)


@bp.get("/<int:account_id>")
@admin_required
def detail(account_id: int) -> str:
    db = db_session()
    account = accounts.get_account(db, account_id)
    provider = accounts.entry_for(account)
    return render_template(
        "admin/accounts_detail.html",
        account=account,
        provider=provider,
        rotation=accounts.rotation_state(account),
        secret_meta=accounts.secret_states(db, account),
        rollback_until=accounts.rollback_until(db, account),
        action_form=ActionForm(),
        grace_days=get_settings().secret_grace_days,
        is_smtp=smtp.is_smtp(account),
        sends_today=smtp.sends_today(account),
    )


@bp.route("/<int:account_id>/edit", methods=["GET", "POST"])
@admin_required
def edit(account_id: int) -> tuple[str, int] | Response:
    db = db_session()
    account = accounts.get_account(db, account_id)
    provider = accounts.entry_for(account)
    cfg = account.provider_config
    secret_names = [spec.name for spec in provider.secret_fields("account")]
    data = {"label": account.label, **initial_data(provider, "account", account.identifiers)}
    form = details_form_class(provider, cfg)(data=data, secrets_set=secret_names)
    if form.is_submitted() and form.validate():
        try:
            result = accounts.update_details(
                db,
                get_cipher(),
                get_client(current_app),
                get_settings(),
                audit_ctx(),
                account,
                form.label.data,
                form.clean,
            )
            db.commit()
        except AppError as exc:
            db.rollback()
            form_errors(exc, form)
            return _render_details(
                provider, form, cfg, account, exc.http_status, error=exc, blamed=_blamed(provider, exc)
            )
        flash(_("Saved and verified.") if result is not None and result.status == "ok" else _("Saved."), "success")
        return redirect(url_for("accounts_admin.detail", account_id=account.id))
    return _render_details(provider, form, cfg, account, 422 if form.is_submitted() else 200)


def _blamed(provider: Any, exc: AppError) -> list[tuple[str, str, str]]:
    return field_labels(provider, exc.fields)


def _require_post_form() -> None:
    if not ActionForm().validate_on_submit():
        raise AppError("validation_failed", _("The form expired or did not come from this site."), status=400)


@bp.post("/<int:account_id>/test")
@admin_required
def test(account_id: int) -> Response:
    _require_post_form()
    db = db_session()
    account = accounts.get_account(db, account_id)
    result: Verification = accounts.verify_stored(
        db, get_cipher(), get_client(current_app), get_settings(), audit_ctx(), account
    )
    db.commit()
    if result.error is not None:
        flash(_("Test failed: %(text)s %(help)s", text=result.error.text, help=result.error.help), "error")
    else:
        flash(result.message, "success")
    return redirect(url_for("accounts_admin.detail", account_id=account.id))


@bp.post("/<int:account_id>/rollback")
@admin_required
def rollback(account_id: int) -> Response:
    _require_post_form()
    db = db_session()
    account = accounts.get_account(db, account_id)
    fields = accounts.rollback_secrets(db, audit_ctx(), account)
    db.commit()
    secret_fields = accounts.entry_for(account).secret_fields("account")
    labels = [catalog_text(spec.label) for spec in secret_fields if spec.name in fields]
    flash(_("Rolled back: the previous %(fields)s is in use again.", fields=", ".join(labels)), "success")
    return redirect(url_for("accounts_admin.detail", account_id=account.id))


@bp.route("/<int:account_id>/delete", methods=["GET", "POST"])
@admin_required
def delete(account_id: int) -> tuple[str, int] | Response:
    db = db_session()
    account = accounts.get_account(db, account_id)
    provider = accounts.entry_for(account)
    form = ActionForm()
    error: AppError | None = None
    if form.validate_on_submit():
        label = account.label
        skip = request.form.get("skip_revoke") == "1"
        try:
            result = accounts.delete_account(
                db, get_cipher(), get_client(current_app), audit_ctx(), account, skip_revoke=skip
            )
            db.commit()
            accounts.scrub_deleted(db)
        except AppError as exc:
            db.commit()  # the failed revocation is audited; the account stays
            error = exc
        else:
            note = (
                " " + _("The provider confirmed the revocation.")
                if result.revoked
                else (f" {catalog_text(result.hint)}" if result.hint else "")
            )
            flash(_("Deleted “%(label)s” and its stored secrets.", label=label) + note, "success")
            return redirect(url_for("accounts_admin.index"))
    html = render_template("admin/accounts_delete.html", account=account, provider=provider, form=form, error=error)
    return html, error.http_status if error is not None else 200


@bp.post("/<int:account_id>/system-mailer")
@admin_required
def system_mailer(account_id: int) -> Response:
    _require_post_form()
    db = db_session()
    account = accounts.get_account(db, account_id)
    on = request.form.get("on") == "1"
    smtp.set_system_mailer(db, audit_ctx(), account, on)
    db.commit()
    if on:
        flash(
            _("“%(label)s” now sends the app's own mail (password resets, invites, notices).", label=account.label),
            "success",
        )
    else:
        flash(_("“%(label)s” no longer sends the app's own mail.", label=account.label), "success")
    return redirect(url_for("accounts_admin.detail", account_id=account.id))


@bp.post("/<int:account_id>/test-mail")
@admin_required
def test_mail(account_id: int) -> Response:
    _require_post_form()
    db = db_session()
    account = accounts.get_account(db, account_id)
    who = signed_in()
    assert who is not None
    db.commit()  # the send cap counts in its own transaction: hold no lock meanwhile
    result = smtp.send_test_mail(
        db, get_cipher(), get_client(current_app), get_settings(), audit_ctx(), account, who.user.email
    )
    db.commit()
    if result.error is not None:
        flash(_("Test mail not sent: %(text)s %(help)s", text=result.error.text, help=result.error.help), "error")
    else:
        flash(_("Test mail sent to %(email)s.", email=who.user.email), "success")
    return redirect(url_for("accounts_admin.detail", account_id=account.id))
