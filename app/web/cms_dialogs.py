"""The CMS's entry to the secure dialogs: ``/dialogs/cms?dialog=<token>`` (routes on the ``dialogs``
blueprint, so the CSP lets exactly the AMI_AUTH_CMS_ORIGINS frame them; every page works full-page too).

The link comes from ``POST /api/account-manager/dialogs`` (rules: ``app.api.dialog_links``). Opening it
needs an admin session. In an iframe on *another site* the browser does not send AMI Auth's cookie
(SameSite=Lax: a cross-site subresource request carries none), so the page then offers a top-level sign-in
(``target="_top"``) that comes back to this dialog as a full page. Save and Cancel post with
``target="_top"``: their answer is a redirect to ``return_to?status=…`` that replaces the CMS page itself,
not the iframe — without a line of script (a cross-origin frame may navigate the top window only on a
user's click, which these buttons are). "Test connection" stays inside the frame (htmx).

An end-user connect link on an OAuth config shows no form: "Continue to <provider>" (a link, ``target="_top"``:
the provider's consent screen must not be framed, and CSP ``form-action`` admits no provider) leads to
``/dialogs/cms/oauth``, which starts the authorization; its answer is finished by :mod:`app.web.cms_connect`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from flask import current_app, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from app import audit
from app.api import dialog_links, dialog_saves
from app.api.dialog_links import DialogUnavailable
from app.connectors import accounts
from app.connectors.verify import Verification, field_labels
from app.errors import AppError, ErrorCode
from app.extensions import db_session, end_read, get_cipher, get_settings
from app.http.context import audit_ctx, signed_in
from app.i18n import gettext as _
from app.i18n import lazy_gettext as _l
from app.models import ConnectedAccount, DialogToken, ProviderConfig
from app.net import get_client
from app.providers import configs
from app.providers.entries import ProviderEntry
from app.providers.forms import ProviderForm, initial_data, provider_form_class
from app.providers.validation import effective_values, visibility
from app.vault import Secret
from app.web import cms_connect
from app.web.account_forms import DetailsBase, config_context, secret_form_class
from app.web.common import field_ids, form_errors
from app.web.dialogs import bp, learned_items
from app.web.oauth import begin_authorization, load_provider

TITLES = {
    "add_account": _l("Add an account"),
    "replace_secret": _l("Replace the secret"),
    "edit_provider_config": _l("Set the provider's secrets"),
    "connect_account": _l("Connect your account"),
}
# The kinds that create an account (the end-user connect link is an add_account dialog for one named user).
ADDING = ("add_account", dialog_links.CONNECT)
# The taxonomy code each status of the page below stands for (shown on the page as data-error-code).
UNAVAILABLE_CODES: dict[int, ErrorCode] = {
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    409: "conflict",
    410: "token_expired",
}
UNAVAILABLE: dict[str, tuple[int, str, str]] = {
    "unknown": (404, _l("This dialog link is not valid."), _l("Open the dialog again from the CMS to get a new link.")),
    "expired": (
        410,
        _l("This dialog link has expired."),
        _l("Links are valid for 10 minutes. Open the dialog again from the CMS to get a new one."),
    ),
    "used": (
        410,
        _l("This dialog link has already been used."),
        _l("Each link works once. Open the dialog again from the CMS to get a new one."),
    ),
    "elsewhere": (
        409,
        _l("This dialog is already open in another browser session."),
        _l("Finish it there, or open the dialog again from the CMS to get a new link."),
    ),
    "return_to": (
        403,
        _l("This dialog cannot return to the page that opened it."),
        _l(
            "That page's address is no longer in AMI_AUTH_CMS_ORIGINS. Ask an administrator, then open the dialog "
            "again from the CMS."
        ),
    ),
    "signed_out": (
        401,
        _l("Your sign-in session ended before the provider answered."),
        _l("Nothing was connected. Go back to the CMS and start connecting again: you get a new link."),
    ),
}


class CancelForm(FlaskForm):  # type: ignore[misc]
    """CSRF only: the Cancel button."""


class ConfigSecretBase(ProviderForm):
    """A provider config's secret fields; ``stored`` fills in its other values for the checks."""

    stored: ClassVar[dict[str, Any]] = {}

    def submitted(self) -> dict[str, Any]:
        data = dict(self.stored)
        data.update(super().submitted())
        return data

    def current_values(self) -> dict[str, Any]:
        return {**effective_values(self.provider, "config", self.stored), **super().current_values()}


def config_secret_form_class(provider: ProviderEntry, cfg: ProviderConfig) -> type[ProviderForm]:
    full = provider_form_class(provider, "config", base=ConfigSecretBase)
    known = {spec.name for spec in provider.fields("config") if not spec.secret}
    stored = {name: value for name, value in (cfg.config or {}).items() if name in known}
    shown = visibility(provider, "config", effective_values(provider, "config", stored))
    attrs: dict[str, Any] = {
        "specs": tuple(spec for spec in full.specs if spec.secret and shown[spec.name]),
        "stored": stored,
    }
    for spec in full.specs:
        if not spec.secret:
            attrs[spec.name] = None
    return type(f"{full.__name__}Secrets", (full,), attrs)


def _raw() -> str:
    return request.args.get("dialog", "")


def _unavailable(problem: str, record: DialogToken | None = None) -> tuple[str, int]:
    db = db_session()
    dialog_links.note_refusal(db, audit_ctx(), problem, record)  # type: ignore[arg-type]
    db.commit()
    status, title, hint = UNAVAILABLE[problem]
    html = render_template(
        "dialogs/cms_unavailable.html", title=title, hint=hint, problem=problem, code=UNAVAILABLE_CODES[status]
    )
    return html, status


@bp.app_errorhandler(DialogUnavailable)
def _unavailable_anywhere(exc: DialogUnavailable) -> tuple[str, int]:
    """A link refused outside these views (the OAuth callback of a connect link): the same page, no redirect."""
    return _unavailable(exc.problem, exc.record)


def _open() -> DialogToken | tuple[str, int]:
    """The link's record for this admin session, or the page to show instead (error, sign-in, not admin)."""
    db = db_session()
    who = signed_in()
    try:
        record = dialog_links.find(db, get_settings(), _raw(), session_id=who.record.id if who is not None else None)
    except DialogUnavailable as exc:
        return _unavailable(exc.problem, exc.record)
    if who is None:
        signin = url_for("auth.signin", next=url_for("dialogs.cms_dialog", dialog=_raw()))
        return render_template("dialogs/cms_signin.html", signin_url=signin, kind=record.kind), 401
    if record.kind == dialog_links.CONNECT and who.user.id != record.for_user_id:
        html = render_template(
            "dialogs/cms_unavailable.html",
            title=_("This link was made for another user."),
            hint=_("Sign out of AMI Auth, sign in as the user the CMS sent here, then open the link again."),
            problem="permission_denied",
            code=UNAVAILABLE_CODES[403],
        )
        return html, 403
    if record.kind != dialog_links.CONNECT and not who.is_admin:
        html = render_template(
            "dialogs/cms_unavailable.html",
            title=_("This dialog is for administrators."),
            hint=_("Sign in to AMI Auth with an administrator account, then open the dialog again from the CMS."),
            problem="permission_denied",
            code=UNAVAILABLE_CODES[403],
        )
        return html, 403
    try:
        dialog_links.claim(db, audit_ctx(), record, session_id=who.record.id, user_id=who.user.id)
    except DialogUnavailable as exc:
        db.rollback()
        return _unavailable(exc.problem, exc.record)
    db.commit()
    return record


def _subject(db: Session, record: DialogToken) -> tuple[ProviderEntry, ProviderConfig, ConnectedAccount | None]:
    if record.kind == "replace_secret":
        account = db.get(ConnectedAccount, record.account_id)
        if account is None:
            raise AppError("not_found", _("The account of this dialog no longer exists."))
        return accounts.entry_for(account), account.provider_config, account
    cfg = db.get(ProviderConfig, record.provider_config_id)
    if cfg is None:
        raise AppError("not_found", _("The provider config of this dialog no longer exists."))
    return configs.entry_for(cfg), cfg, None


def _form(record: DialogToken, provider: ProviderEntry, cfg: ProviderConfig, account: ConnectedAccount | None) -> Any:
    db = db_session()
    if record.kind in ADDING:
        form_class = provider_form_class(provider, "account", base=DetailsBase, context=config_context(provider, cfg))
        return form_class(data=initial_data(provider, "account"))
    if record.kind == "replace_secret":
        assert account is not None
        stored = [name for name, meta in accounts.secret_states(db, account).items() if meta is not None]
        return secret_form_class(provider, account)(secrets_set=stored)
    return config_secret_form_class(provider, cfg)(secrets_set=configs.secrets_set(db, provider, cfg))


def _secret_meta(record: DialogToken, provider: ProviderEntry, cfg: ProviderConfig, account: Any) -> dict[str, Any]:
    db = db_session()
    if record.kind == "replace_secret":
        return dict(accounts.secret_states(db, account))
    if record.kind == "edit_provider_config":
        return dict(configs.secret_states(db, provider, cfg))
    return {}


def _render(
    record: DialogToken,
    provider: ProviderEntry,
    cfg: ProviderConfig,
    account: ConnectedAccount | None,
    form: Any,
    result: Verification | None = None,
    status: int = 200,
) -> tuple[str, int]:
    meta = _secret_meta(record, provider, cfg, account)
    html = render_template(
        "dialogs/cms_dialog.html",
        record=record,
        raw=_raw(),
        title=TITLES[record.kind],
        provider=provider,
        cfg=cfg,
        account=account,
        form=form,
        cancel_form=CancelForm(),
        secret_meta=meta,
        editing=record.kind not in ADDING and any(m is not None for m in meta.values()),
        testable=record.kind != "edit_provider_config",
        result=result,
        blamed=field_labels(provider, result.error.fields) if result is not None and result.error else [],
        learned=learned_items(dict(result.learned)) if result is not None else [],
        on_page=field_ids(form),
        grace_days=get_settings().secret_grace_days,
    )
    return html, status


def _typed(form: Any) -> dict[str, Secret]:
    return {name: value for name, value in form.clean.items() if isinstance(value, Secret)}


def _invalid(form: Any) -> AppError:
    if "csrf_token" in form.errors:
        return AppError(
            "validation_failed", _("The form expired or did not come from this site."), _("Reload the dialog.")
        )
    fields = {name: errors[0] for name, errors in form.errors.items() if errors}
    return AppError("validation_failed", form.form_errors[0] if form.form_errors else None, fields=fields)


def _save(record: DialogToken, provider: ProviderEntry, cfg: ProviderConfig, account: Any, form: Any) -> int | None:
    """Store what the form holds; returns the account the dialog was about (None for a config)."""
    db = db_session()
    cipher, settings, ctx = get_cipher(), get_settings(), audit_ctx()
    client = get_client(current_app)
    if record.kind in ADDING:
        who = signed_in()
        label = form.label.data if hasattr(form, "label") else None
        # An end user's account is theirs; an admin's add_account dialog makes it the admin's, as before.
        owner = record.for_user_id if record.kind == dialog_links.CONNECT else (who.user.id if who else None)
        created = dialog_saves.add_account(db, cipher, client, settings, ctx, cfg, label, form.clean, user_id=owner)
        return created.id
    if record.kind == "replace_secret":
        accounts.save_secrets(db, cipher, client, settings, ctx, account, _typed(form))
        return int(account.id)
    dialog_saves.set_config_secrets(db, cipher, settings, ctx, cfg, form.clean)
    return None


@bp.route("/cms", methods=["GET", "POST"])
def cms_dialog() -> tuple[str, int] | Response:
    opened = _open()
    if not isinstance(opened, DialogToken):
        return opened
    record = opened
    db = db_session()
    provider, cfg, account = _subject(db, record)
    if _through_consent(record, provider):
        return _oauth_page(record, provider, cfg)
    form = _form(record, provider, cfg, account)
    if not form.is_submitted():
        return _render(record, provider, cfg, account, form)
    if not form.validate():
        return _render(record, provider, cfg, account, form, Verification.failed(_invalid(form)), 422)
    who = signed_in()
    assert who is not None
    record_id, kind = record.id, record.kind
    try:
        account_id = _save(record, provider, cfg, account, form)
        dialog_links.finish(db, audit_ctx(), record, session_id=who.record.id, outcome="saved", account_id=account_id)
        db.commit()
    except DialogUnavailable as exc:
        db.rollback()
        return _unavailable(exc.problem, exc.record)
    except AppError as exc:
        db.rollback()
        _keep_refusal_audit(record_id, kind, exc)
        form_errors(exc, form)
        return _render(record, provider, cfg, account, form, Verification.failed(exc), exc.http_status)
    return redirect(dialog_links.return_url(record, "saved"), code=303)


def _through_consent(record: DialogToken, provider: ProviderEntry) -> bool:
    """An end-user connect link on an OAuth config: the user goes through the provider's consent screen."""
    return record.kind == dialog_links.CONNECT and provider.capabilities.oauth


def _oauth_page(record: DialogToken, provider: ProviderEntry, cfg: ProviderConfig) -> tuple[str, int]:
    html = render_template(
        "dialogs/cms_connect_oauth.html",
        record=record,
        raw=_raw(),
        title=TITLES[record.kind],
        provider=provider,
        cfg=cfg,
        cancel_form=CancelForm(),
    )
    return html, 200


@bp.get("/cms/oauth")
def cms_dialog_oauth() -> tuple[str, int] | Response:
    """ "Continue to <provider>": the authorization Account → Connections starts, bound to this link."""
    opened = _open()
    if not isinstance(opened, DialogToken):
        return opened
    record = opened
    db = db_session()
    provider_entry, cfg, _account = _subject(db, record)
    if not _through_consent(record, provider_entry):
        raise AppError("not_found", _("This dialog does not connect through the provider's consent screen."))
    try:
        provider = load_provider(db, cfg.id)
        return begin_authorization(provider, cms_connect.intent(record), want_refresh=provider.refreshable)
    except AppError as exc:
        db.rollback()
        who = signed_in()
        assert who is not None  # _open let only the link's user in
        return cms_connect.give_up(record, cfg.id, who.record.id, exc)


def _keep_refusal_audit(record_id: int, kind: str, exc: AppError) -> None:
    """The save was rolled back; record the refusal on its own so the audit log still shows it."""
    db = db_session()
    audit.record(
        db,
        audit_ctx(),
        "dialog.save",
        target=f"dialog:{record_id}",
        outcome="failure",
        details={"kind": kind, "code": exc.code, "fields": sorted(exc.fields)},
    )
    db.commit()


@bp.post("/cms/test")
def cms_dialog_test() -> tuple[str, int] | Response:
    """ "Test connection": verify what is typed, store nothing. htmx gets the result panel only."""
    opened = _open()
    if not isinstance(opened, DialogToken):
        return opened
    record = opened
    db = db_session()
    provider, cfg, account = _subject(db, record)
    if _through_consent(record, provider):
        raise AppError("not_found", _("This dialog connects through the provider's consent screen: nothing to test."))
    if record.kind == "edit_provider_config":
        raise AppError("not_found", _("This dialog has no connection test."))
    form = _form(record, provider, cfg, account)
    if not form.validate():
        result = Verification.failed(_invalid(form))
    elif record.kind in ADDING:
        end_read(db)  # nothing held while the vendor answers
        result = dialog_saves.verify_new_account(get_client(current_app), get_settings(), cfg, form.clean)
    else:
        assert account is not None
        result = accounts.test_secrets(
            db, get_cipher(), get_client(current_app), get_settings(), audit_ctx(), account, _typed(form)
        )
        db.commit()
    if request.headers.get("HX-Request") == "true":
        html = render_template(
            "dialogs/_result.html",
            result=result,
            provider=provider,
            blamed=field_labels(provider, result.error.fields) if result.error else [],
            learned=learned_items(dict(result.learned)),
            on_page=field_ids(form),
        )
        return html, 200
    return _render(record, provider, cfg, account, form, result)


@bp.post("/cms/cancel")
def cms_dialog_cancel() -> tuple[str, int] | Response:
    """Cancel: spend the link without saving anything, and go back to the CMS page."""
    opened = _open()
    if not isinstance(opened, DialogToken):
        return opened
    record = opened
    if not CancelForm().validate_on_submit():
        raise AppError("validation_failed", _("The form expired or did not come from this site."), status=400)
    who = signed_in()
    assert who is not None
    db = db_session()
    try:
        dialog_links.finish(db, audit_ctx(), record, session_id=who.record.id, outcome="cancelled")
        db.commit()
    except DialogUnavailable as exc:
        db.rollback()
        return _unavailable(exc.problem, exc.record)
    return redirect(dialog_links.return_url(record, "cancelled"), code=303)
