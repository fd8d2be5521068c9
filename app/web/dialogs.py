"""Secure dialogs: the only pages where a secret is typed.

Server-rendered, POST only, nothing secret in a URL, ``autocomplete="off"``, no client storage (htmx's
history cache is off on these pages), and a secret is never sent back: after a refused save the fields
are empty and the page says so. "Test connection" posts the same form with htmx to the test endpoint,
which answers with a result panel (what the provider told us, or the taxonomy code + hint and the
fields to blame); "Save" runs the same verification server-side before storing anything.

The endpoints of this blueprint (``dialogs.*``) are the only ones the CSP lets the CMS origins frame
(app/web/security.py); every page also works full-page. Access today is an admin session. The CMS
issue adds short-lived single-use dialog URLs: :func:`_access` is the one place that decides who may open
a dialog and where it returns to — a ``dialog_token`` (bound to the account id and the ``return_to``
origin, consumed on first use) slots in there beside the session, without changing the routes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from app.audit import AuditContext
from app.connectors import accounts, smtp
from app.connectors.verify import Verification, field_labels
from app.errors import AppError
from app.extensions import db_session, get_cipher, get_settings
from app.http.context import audit_ctx, signed_in
from app.i18n import gettext as _
from app.i18n import lazy_gettext as _l
from app.models import ConnectedAccount
from app.net import get_client
from app.providers.entries import ProviderEntry
from app.vault import Secret
from app.web.account_forms import SecretBase, secret_form_class
from app.web.common import admin_required, field_ids, form_errors, safe_next

bp = Blueprint("dialogs", __name__, url_prefix="/dialogs")

LEARNED_LABELS = {
    "user_name": _l("User"),
    "display_name": _l("Name"),
    "account_type": _l("Account type"),
    "orgs": _l("Organizations"),
    "token_role": _l("Token role"),
    "token_name": _l("Token name"),
    "rate_limit": _l("Rate limit"),
}


@dataclass(frozen=True)
class DialogAccess:
    ctx: AuditContext
    return_to: str


def _access(account: ConnectedAccount) -> DialogAccess:
    """Who is acting and where the dialog returns to (same-origin paths only, for now)."""
    default = url_for("accounts_admin.detail", account_id=account.id)
    raw = request.form.get("return_to") if request.method == "POST" else request.args.get("return_to")
    return DialogAccess(audit_ctx(), safe_next(raw, default))


def learned_items(learned: dict[str, Any]) -> list[tuple[str, str]]:
    """provider_data as (label, text) rows for people."""
    items = []
    for key, value in learned.items():
        if isinstance(value, list):
            text = ", ".join(str(v) for v in value) or _("none")
        elif isinstance(value, dict):
            text = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items())
        else:
            text = str(value)
        label = LEARNED_LABELS.get(key)
        items.append((str(label) if label is not None else key.replace("_", " ").capitalize(), text))
    return items


def _form(provider: ProviderEntry, account: ConnectedAccount, access: DialogAccess) -> SecretBase:
    db = db_session()
    stored = [name for name, meta in accounts.secret_states(db, account).items() if meta is not None]
    form_class = secret_form_class(provider, account)
    return form_class(data={"return_to": access.return_to}, secrets_set=stored)


def _validation_error(form: SecretBase) -> AppError:
    fields = {name: errors[0] for name, errors in form.errors.items() if errors and name != "csrf_token"}
    if "csrf_token" in form.errors:
        return AppError(
            "validation_failed", _("The form expired or did not come from this site."), _("Reload the dialog.")
        )
    message = form.form_errors[0] if form.form_errors else None
    return AppError("validation_failed", message, fields=fields)


def _typed(form: SecretBase) -> dict[str, Secret]:
    return {name: value for name, value in form.clean.items() if isinstance(value, Secret)}


def _render(
    account: ConnectedAccount,
    provider: ProviderEntry,
    form: SecretBase,
    access: DialogAccess,
    result: Verification | None = None,
    status: int = 200,
) -> tuple[str, int]:
    db = db_session()
    html = render_template(
        "dialogs/account_secret.html",
        account=account,
        provider=provider,
        form=form,
        access=access,
        result=result,
        result_ctx=_result_context(provider, result, form),
        secret_meta=accounts.secret_states(db, account),
        replacing=account.status != "pending",
        grace_days=get_settings().secret_grace_days,
    )
    return html, status


def _result_context(provider: ProviderEntry, result: Verification | None, form: SecretBase) -> dict[str, Any]:
    if result is None:
        return {}
    return {
        "blamed": field_labels(provider, result.error.fields) if result.error else [],
        "learned": learned_items(dict(result.learned)),
        "on_page": field_ids(form),
        "offer_unverified": accounts.may_save_unverified(provider, result),
    }


def _test_mail(account: ConnectedAccount) -> tuple[str | None, Callable[[], None] | None]:
    """For SMTP: "also send a test mail to me" (to the signed-in admin), counted against the daily cap."""
    who = signed_in()
    if request.form.get("send_test_mail") != "y" or who is None or not smtp.is_smtp(account):
        return None, None
    return who.user.email, smtp.send_cap_check(db_session(), account)


@bp.route("/accounts/<int:account_id>/secret", methods=["GET", "POST"])
@admin_required
def account_secret(account_id: int) -> tuple[str, int] | Response:
    """Enter (or replace) an account's secret; POST is "Save": verify, then store."""
    db = db_session()
    account = accounts.get_account(db, account_id)
    provider = accounts.entry_for(account)
    access = _access(account)
    form = _form(provider, account, access)
    if not form.is_submitted():
        return _render(account, provider, form, access)
    if not form.validate():
        return _render(account, provider, form, access, Verification.failed(_validation_error(form)), 422)
    replacing = account.status != "pending"
    try:
        result = accounts.save_secrets(
            db,
            get_cipher(),
            get_client(current_app),
            get_settings(),
            access.ctx,
            account,
            _typed(form),
            unverified_ok=request.form.get("save_unverified") == "y",
        )
        db.commit()
    except AppError as exc:
        db.commit()  # nothing was stored; keep the audit record of the refused attempt
        form_errors(exc, form)
        return _render(account, provider, form, access, Verification.failed(exc), exc.http_status)
    if result.error is not None:  # saved unverified: the vendor could not be reached
        flash(
            _(
                "Saved unverified: %(provider)s could not be reached, so the secret was stored without a check. "
                "It is verified automatically when the provider answers again, or with “Test now”.",
                provider=provider.display_name,
            ),
            "warning",
        )
    elif replacing:
        days = get_settings().secret_grace_days
        flash(
            _("Replaced and verified. The previous value can be rolled back for %(days)s days.", days=days), "success"
        )
    else:
        flash(_("Saved.") + " " + result.message, "success")
    return redirect(access.return_to)


@bp.post("/accounts/<int:account_id>/secret/test")
@admin_required
def account_secret_test(account_id: int) -> tuple[str, int]:
    """ "Test connection": verify what is typed, store nothing. htmx gets the result panel only."""
    db = db_session()
    account = accounts.get_account(db, account_id)
    provider = accounts.entry_for(account)
    access = _access(account)
    form = _form(provider, account, access)
    if form.validate():
        mail_to, before_send = _test_mail(account)
        db.commit()  # a test mail counts against the send cap in its own transaction: hold no lock meanwhile
        result = accounts.test_secrets(
            db,
            get_cipher(),
            get_client(current_app),
            get_settings(),
            access.ctx,
            account,
            _typed(form),
            send_test_to=mail_to,
            before_send=before_send,
        )
        db.commit()
    else:
        result = Verification.failed(_validation_error(form))
    if request.headers.get("HX-Request") == "true":
        html = render_template(
            "dialogs/_result.html", result=result, provider=provider, **_result_context(provider, result, form)
        )
        return html, 200
    return _render(account, provider, form, access, result)
