"""Admin console: provider configs — list, create (pick a type → its form), edit, enable/disable, delete.

Forms come from the catalog (app/providers/forms.py); the rules live in app/providers/configs.py.
Secret fields are write-only: the edit page shows "set · last changed <date> · Replace", never a value.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from app import audit
from app.connectors.verify import connectivity_test
from app.errors import AppError
from app.extensions import db_session, end_read, get_cipher, get_settings
from app.http.context import audit_ctx, signed_in
from app.i18n import gettext as _
from app.i18n import lazy_gettext as _l
from app.models import ProviderConfig
from app.net import get_client
from app.oauth.runtime import redirect_uri
from app.providers import configs
from app.providers.catalog_messages import catalog_text
from app.providers.config_test import ConnectionTest
from app.providers.entries import ProviderEntry
from app.providers.forms import ProviderForm, initial_data, provider_form_class
from app.providers.registry import entry as catalog_entry
from app.providers.registry import get_catalog
from app.providers.validation import effective_values, labels, split_secrets, visibility
from app.vault import Secret, SecretUnreadable
from app.web.common import admin_required, form_errors

bp = Blueprint("providers_admin", __name__, url_prefix="/admin/providers")
# Catalog texts (labels, help, descriptions, notes) in the reader's language: `{{ provider.description | translated }}`.
bp.add_app_template_filter(catalog_text, "translated")


class ConfigForm(ProviderForm):
    """The console's own field on top of the catalog's config fields."""

    name = StringField(
        _l("Name"),
        validators=[DataRequired(_l("This field is required.")), Length(max=configs.NAME_MAX)],
        description=_l("How admins and the CLI refer to this configuration, e.g. “Google (staff)”."),
        render_kw={"autocomplete": "off", "maxlength": configs.NAME_MAX},
    )


class ActionForm(FlaskForm):  # type: ignore[misc]
    """CSRF only: the enable, disable and delete buttons."""


def _form_class(provider: ProviderEntry) -> type[ProviderForm]:
    return provider_form_class(provider, "config", base=ConfigForm)


def _render_form(
    provider: ProviderEntry, form: ProviderForm, cfg: ProviderConfig | None, status: int = 200, **extra: Any
) -> tuple[str, int]:
    db = db_session()
    if cfg is None and provider.capabilities.oauth:
        expected = configs.expected_next_id(db)
        extra["expected_redirect"] = {"id": expected, "uri": redirect_uri(get_settings(), expected)}
    if cfg is not None:
        last = configs.last_test(db, cfg)
        extra["last_test_failed"] = last if last is not None and last.outcome == "failure" else None
    html = render_template(
        "admin/providers_form.html",
        provider=provider,
        form=form,
        cfg=cfg,
        secret_meta=configs.secret_states(db, provider, cfg),
        action_form=ActionForm(),
        missing=labels(provider, "config", configs.missing_for_enable(db, cfg)) if cfg is not None else [],
        **extra,
    )
    return html, status


def _testing() -> bool:
    """The form's "Test connection" button: same fields, nothing saved."""
    return request.form.get("action") == "test"


def _test_unsaved(provider: ProviderEntry, form: ProviderForm, cfg: ProviderConfig | None) -> tuple[str, int]:
    """Run the type's connectivity check on what the form holds (typed secrets over the stored ones) without
    saving anything; audited as ``provider_config.test``. The page comes back with the result, the blamed
    field marked, and typed secrets empty (they are never rendered back: the page asks to type them again)."""
    db = db_session()
    plain, typed = split_secrets(provider, "config", form.clean)
    secrets: dict[str, Secret | None] = {}
    if cfg is not None:
        try:
            secrets.update(configs.read_secrets(db, get_cipher(), provider, cfg))
        except SecretUnreadable as exc:
            raise AppError("secret_unreadable", exc.text) from None
    secrets.update(typed)
    end_read(db)  # nothing held while the provider answers
    result = connectivity_test(
        get_settings(),
        provider,
        effective_values(provider, "config", plain),
        secrets,
        client=get_client(current_app),
    )
    audit.record(
        db,
        audit_ctx(),
        "provider_config.test",
        target=f"provider_config:{cfg.id}" if cfg is not None else f"provider_type:{provider.id}",
        outcome="failure" if result.status == "failed" else "success",
        details={"status": result.status, "code": result.code, "saved": cfg is not None},
    )
    db.commit()
    if result.status == "failed" and result.field is not None and result.field in form:
        form[result.field].errors = [*form[result.field].errors, result.message]
    return _render_form(provider, form, cfg, 422 if result.status == "failed" else 200, test_result=_shown(result))


def _shown(result: ConnectionTest) -> dict[str, Any]:
    return {
        "status": result.status,
        "message": result.message,
        "code": result.code,
        "learned": [(str(key), str(value)[:500]) for key, value in result.learned.items()],
    }


@bp.get("/")
@admin_required
def index() -> str:
    db = db_session()
    rows = []
    for cfg in configs.list_configs(db):
        provider = configs.entry_for(cfg)
        # Only the secrets the config uses: a hidden one (Google's device-flow secret, device flow off) is not due.
        shown = visibility(provider, "config", effective_values(provider, "config", cfg.config or {}))
        states = {name: meta for name, meta in configs.secret_states(db, provider, cfg).items() if shown.get(name)}
        rows.append(
            {
                "cfg": cfg,
                "provider": provider,
                "secrets_total": len(states),
                "secrets_set": sum(1 for meta in states.values() if meta is not None),
                "missing": labels(provider, "config", configs.missing_for_enable(db, cfg)),
            }
        )
    return render_template("admin/providers.html", rows=rows, action_form=ActionForm())


@bp.get("/new")
@admin_required
def choose_type() -> str:
    return render_template("admin/providers_new.html", catalog=list(get_catalog()))


@bp.route("/new/<provider_type>", methods=["GET", "POST"])
@admin_required
def create(provider_type: str) -> tuple[str, int] | Response:
    provider = catalog_entry(provider_type)
    form_class = _form_class(provider)
    form = form_class(data=initial_data(provider, "config"))
    if form.is_submitted() and form.validate():
        if _testing():
            return _test_unsaved(provider, form, None)
        db = db_session()
        who = signed_in()
        try:
            cfg = configs.create_config(
                db,
                get_cipher(),
                get_settings(),
                audit_ctx(),
                provider,
                form.name.data,
                form.clean,
                created_by=who.id if who is not None else None,
            )
            db.commit()
        except AppError as exc:
            db.rollback()
            form_errors(exc, form)
            return _render_form(provider, form, None, exc.http_status if exc.fields else 422)
        flash(_("Saved “%(name)s”. It stays disabled until you enable it.", name=cfg.name), "success")
        shown = request.form.get("expected_id", "")
        if provider.capabilities.oauth and shown.isdigit() and int(shown) != cfg.id:
            flash(
                _(
                    "Its redirect URI is %(uri)s — not the one the form showed (another provider was saved first). "
                    "Register this one.",
                    uri=redirect_uri(get_settings(), cfg.id),
                ),
                "warning",
            )
        return redirect(url_for("providers_admin.edit", config_id=cfg.id))
    return _render_form(provider, form, None, 422 if form.is_submitted() else 200)


@bp.route("/<int:config_id>", methods=["GET", "POST"])
@admin_required
def edit(config_id: int) -> tuple[str, int] | Response:
    db = db_session()
    cfg = configs.get_config(db, config_id)
    provider = configs.entry_for(cfg)
    form_class = _form_class(provider)
    form = form_class(
        data={"name": cfg.name, **initial_data(provider, "config", cfg.config)},
        secrets_set=configs.secrets_set(db, provider, cfg),
    )
    if form.is_submitted() and form.validate():
        if _testing():
            return _test_unsaved(provider, form, cfg)
        try:
            changes = configs.update_config(
                db, get_cipher(), get_settings(), audit_ctx(), cfg, form.name.data, form.clean
            )
            db.commit()
        except AppError as exc:
            db.rollback()
            form_errors(exc, form)
            return _render_form(provider, form, cfg, exc.http_status if exc.fields else 422)
        flash(_("Saved.") if changes else _("Nothing changed."), "success")
        return redirect(url_for("providers_admin.edit", config_id=cfg.id))
    return _render_form(provider, form, cfg, 422 if form.is_submitted() else 200)


def _set_enabled(config_id: int, enabled: bool) -> tuple[str, int] | Response:
    form = ActionForm()
    if not form.validate_on_submit():
        raise AppError("validation_failed", _("The form expired or did not come from this site."), status=400)
    db = db_session()
    cfg = configs.get_config(db, config_id)
    provider = configs.entry_for(cfg)
    try:
        changed = configs.set_enabled(db, audit_ctx(), cfg, enabled)
        db.commit()
    except AppError as exc:
        db.commit()  # keep the audit record of the refused attempt
        edit_form = _form_class(provider)(
            formdata=None,
            data={"name": cfg.name, **initial_data(provider, "config", cfg.config)},
            secrets_set=configs.secrets_set(db, provider, cfg),
        )
        form_errors(exc, edit_form)
        return _render_form(provider, edit_form, cfg, exc.http_status, enable_error=exc)
    if changed:
        if enabled:
            flash(_("“%(name)s” is now enabled.", name=cfg.name), "success")
        else:
            flash(_("“%(name)s” is now disabled.", name=cfg.name), "success")
        last = configs.last_test(db, cfg) if enabled else None
        if last is not None and last.outcome == "failure":
            flash(
                _(
                    "Its last connection test failed (%(code)s): sign-ins through it may fail. "
                    "Test it again, or disable it until it works.",
                    code=last.code or _("error"),
                ),
                "warning",
            )
    return redirect(url_for("providers_admin.edit", config_id=cfg.id))


@bp.post("/<int:config_id>/enable")
@admin_required
def enable(config_id: int) -> tuple[str, int] | Response:
    return _set_enabled(config_id, True)


@bp.post("/<int:config_id>/disable")
@admin_required
def disable(config_id: int) -> tuple[str, int] | Response:
    return _set_enabled(config_id, False)


@bp.route("/<int:config_id>/delete", methods=["GET", "POST"])
@admin_required
def delete(config_id: int) -> tuple[str, int] | Response:
    db = db_session()
    cfg = configs.get_config(db, config_id)
    provider = configs.entry_for(cfg)
    form = ActionForm()
    error: AppError | None = None
    if form.validate_on_submit():
        name = cfg.name
        try:
            configs.delete_config(db, audit_ctx(), cfg)
            db.commit()
        except AppError as exc:
            db.rollback()
            error = exc
        else:
            flash(_("Deleted “%(name)s” and its stored secrets.", name=name), "success")
            return redirect(url_for("providers_admin.index"))
    html = render_template(
        "admin/providers_delete.html",
        cfg=cfg,
        provider=provider,
        form=form,
        error=error,
        accounts=configs.account_count(db, cfg),
        secrets=sum(1 for meta in configs.secret_states(db, provider, cfg).values() if meta is not None),
    )
    return html, error.http_status if error is not None else 200
