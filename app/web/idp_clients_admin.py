"""Admin console: the OpenID Provider's relying parties — list, register, edit, rotate the secret, delete.

The rules are :mod:`app.idp.clients` (the CLI, the YAML apply and the JSON API use the same ones); a bad value
comes back on its field. A secret appears once, in the response to the POST that made it (never redirected
through the session, never stored in clear).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import BooleanField, SelectField, SelectMultipleField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.widgets import CheckboxInput, ListWidget

from app.errors import AppError
from app.extensions import db_session, get_settings
from app.http.context import audit_ctx, signed_in
from app.i18n import gettext as _
from app.i18n import lazy_gettext as _l
from app.idp import clients
from app.idp.keys import ALGORITHMS
from app.models import OidcClient
from app.web.common import admin_required, form_errors

bp = Blueprint("idp_clients_admin", __name__, url_prefix="/admin/clients")

LIST_FIELDS = ("redirect_uris", "post_logout_redirect_uris", "audiences", "scopes")


class MultiCheckboxField(SelectMultipleField):  # type: ignore[misc]
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class ClientForm(FlaskForm):  # type: ignore[misc]
    name = StringField(_l("Name"), description=_l("What users see on the consent page, e.g. “CMS”."))
    client_type = SelectField(
        _l("Client type"),
        choices=[
            SelectChoice("confidential", _l("Confidential (a server that keeps a secret)")),
            SelectChoice("public", _l("Public (no secret)")),
        ],
    )
    auth_method = SelectField(
        _l("Client authentication"),
        choices=[SelectChoice(m, m) for m in clients.CONFIDENTIAL_METHODS],
        description=_l("For confidential clients. private_key_jwt needs the client's JWKS URI."),
    )
    redirect_uris = TextAreaField(_l("Redirect URIs"), description=_l("One per line; matched exactly."))
    post_logout_redirect_uris = TextAreaField(
        _l("Post-logout redirect URIs"), description=_l("One per line; optional.")
    )
    backchannel_logout_uri = StringField(
        _l("Back-channel logout URI"),
        description=_l("Where AMI Auth posts a logout token when a session ends; optional."),
    )
    jwks_uri = StringField(
        _l("JWKS URI"), description=_l("For private_key_jwt: where the client publishes its public keys.")
    )
    grant_types = MultiCheckboxField(_l("Grant types"), choices=[SelectChoice(g, g) for g in clients.GRANT_TYPES])
    scopes = StringField(_l("Allowed scopes"), description=_l("Separated by spaces, e.g. “openid profile email”."))
    audiences = TextAreaField(
        _l("Audiences"),
        description=_l("One per line: the APIs its access tokens are for (aud). Empty: the client itself."),
    )
    require_pkce = BooleanField(_l("Require PKCE (S256)"), description=_l("Always on for public clients."))
    first_party = BooleanField(_l("First-party app (no consent page)"))
    id_token_alg = SelectField(_l("Signing algorithm"), choices=[SelectChoice(a, a) for a in ALGORITHMS])
    access_token_ttl = StringField(_l("Access token lifetime (seconds)"))
    refresh_token_ttl = StringField(_l("Refresh token lifetime (seconds)"))
    id_token_ttl = StringField(_l("ID token lifetime (seconds)"))
    enabled = BooleanField(_l("Enabled"))


class ActionForm(FlaskForm):  # type: ignore[misc]
    """Only the CSRF token: rotate and delete buttons."""


def _initial(settings: clients.ClientSettings) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in clients.FIELDS:
        value = getattr(settings, name)
        if name == "scopes":
            data[name] = " ".join(value)
        elif name == "grant_types":
            data[name] = list(value)
        elif isinstance(value, tuple):
            data[name] = "\n".join(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            data[name] = str(value)
        else:
            data[name] = value
    if settings.auth_method == "none":
        data["auth_method"] = clients.CONFIDENTIAL_METHODS[0]
    return data


def _values(form: ClientForm) -> dict[str, Any]:
    """The submission in the service's names; a public client's method is "none" whatever the select says."""
    values: dict[str, Any] = {name: form[name].data for name in clients.FIELDS}
    for name in LIST_FIELDS:
        values[name] = (values[name] or "").split()
    values["backchannel_logout_uri"] = values["backchannel_logout_uri"] or None
    values["jwks_uri"] = values["jwks_uri"] or None
    if values["client_type"] == "public":
        values.pop("auth_method")
    return values


def _render_form(form: ClientForm, row: OidcClient | None, status: int = 200) -> tuple[str, int]:
    return render_template("admin/idp_client_form.html", form=form, row=row, action_form=ActionForm()), status


def _secret_page(row: OidcClient, secret: str, created: bool) -> tuple[str, int]:
    # The POST's own response is the only place the secret appears (this response is no-store, like every page).
    return render_template("admin/idp_client_secret.html", row=row, secret=secret, created=created), 200


def _load(client_id: str) -> OidcClient:
    row = clients.find_client(db_session(), client_id)
    if row is None:
        raise AppError("not_found", _("There is no such client."), _("Go back to the list of clients."))
    return row


@bp.get("/")
@admin_required
def index() -> str:
    return render_template("admin/idp_clients.html", rows=clients.list_clients(db_session()))


@bp.route("/new", methods=["GET", "POST"])
@admin_required
def create() -> tuple[str, int] | Response:
    form = ClientForm(data=_initial(clients.ClientSettings(name="")))
    if not form.is_submitted():
        return _render_form(form, None)
    if not form.validate():
        return _render_form(form, None, 422)
    db = db_session()
    who = signed_in()
    try:
        saved = clients.create_client(
            db,
            audit_ctx(),
            _values(form),
            production=get_settings().is_production,
            created_by=who.id if who is not None else None,
        )
        db.commit()
    except AppError as exc:
        db.rollback()
        form_errors(exc, form)
        return _render_form(form, None, exc.http_status)
    if saved.secret:
        return _secret_page(saved.client, saved.secret, created=True)
    flash(_("Registered “%(name)s”.", name=saved.client.name), "success")
    return redirect(url_for("idp_clients_admin.edit", client_id=saved.client.client_id))


@bp.route("/<client_id>", methods=["GET", "POST"])
@admin_required
def edit(client_id: str) -> tuple[str, int] | Response:
    row = _load(client_id)
    form = ClientForm(data=_initial(clients.settings_of(row)))
    if not form.is_submitted():
        return _render_form(form, row)
    if not form.validate():
        return _render_form(form, row, 422)
    db = db_session()
    try:
        saved = clients.update_client(db, audit_ctx(), row, _values(form), production=get_settings().is_production)
        db.commit()
    except AppError as exc:
        db.rollback()
        form_errors(exc, form)
        return _render_form(form, _load(client_id), exc.http_status)
    if saved.secret:
        return _secret_page(saved.client, saved.secret, created=False)
    flash(_("Saved.") if saved.changes else _("Nothing changed."), "success")
    return redirect(url_for("idp_clients_admin.edit", client_id=client_id))


def _checked_action() -> None:
    if not ActionForm().validate_on_submit():
        raise AppError("validation_failed", _("The form expired."), _("Reload the page and try again."), status=400)


@bp.post("/<client_id>/rotate")
@admin_required
def rotate(client_id: str) -> tuple[str, int]:
    _checked_action()
    row = _load(client_id)
    db = db_session()
    saved = clients.rotate_secret(db, audit_ctx(), row)
    db.commit()
    assert saved.secret is not None
    return _secret_page(saved.client, saved.secret, created=False)


@bp.post("/<client_id>/delete")
@admin_required
def delete(client_id: str) -> Response:
    _checked_action()
    row = _load(client_id)
    name = row.name
    db = db_session()
    clients.delete_client(db, audit_ctx(), row)
    db.commit()
    flash(_("Deleted “%(name)s” and every token issued to it.", name=name), "success")
    return redirect(url_for("idp_clients_admin.index"))
