"""Console: webhook endpoints — list, register (secret shown once), change, rotate the secret (shown once),
the delivery log with response codes, redeliver, delete. The rules are app.services.webhooks'."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import BooleanField, IntegerField, SelectMultipleField, StringField
from wtforms.validators import NumberRange, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from app.errors import AppError
from app.extensions import db_session, get_cipher, get_settings
from app.http.context import audit_ctx
from app.i18n import gettext as _
from app.i18n import lazy_gettext as _l
from app.services import webhooks
from app.web.common import admin_required, keep_on_form
from app.webhook_events import EVENT_TYPES

bp = Blueprint("webhooks_admin", __name__, url_prefix="/admin/webhooks")


class MultiCheckboxField(SelectMultipleField):  # type: ignore[misc]
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class EndpointForm(FlaskForm):  # type: ignore[misc]
    url = StringField(
        _l("URL"), description=_l("Where AMI Auth POSTs the signed events, e.g. https://cms.example.com/hooks.")
    )
    description = StringField(_l("Description"), description=_l("What receives them (optional)."))
    events = MultiCheckboxField(_l("Events"), choices=[t.name for t in EVENT_TYPES])
    enabled = BooleanField(_l("Enabled"), default=True)


class RotateForm(FlaskForm):  # type: ignore[misc]
    overlap_hours = IntegerField(
        _l("Overlap (hours)"),
        default=24,
        validators=[Optional(), NumberRange(0, 168, _l("Use a number of hours from 0 to 168."))],
        description=_l("How long the old secret keeps signing too, so the receiver can switch without missing one."),
    )


class ActionForm(FlaskForm):  # type: ignore[misc]
    """Only the CSRF token."""


def _expired() -> AppError:
    return AppError("validation_failed", _("The form expired."), _("Reload the page and try again."), status=400)


def _event_help() -> dict[str, str]:
    """What each event means, in the reader's language (app/webhook_events.py holds the English)."""
    return {t.name: _(t.description) for t in EVENT_TYPES}


def _render_list(form: EndpointForm, status: int = 200) -> tuple[str, int]:
    db = db_session()
    rows = [(e, webhooks.pending_count(db, e)) for e in webhooks.list_endpoints(db)]
    return (
        render_template("admin/webhooks.html", rows=rows, form=form, event_help=_event_help()),
        status,
    )


@bp.get("/")
@admin_required
def index() -> tuple[str, int]:
    return _render_list(EndpointForm())


@bp.post("/")
@admin_required
def create() -> tuple[str, int]:
    form = EndpointForm()
    form.validate()
    db = db_session()
    try:
        made = webhooks.create_endpoint(
            db,
            get_settings(),
            get_cipher(),
            audit_ctx(),
            url=form.url.data or "",
            events=form.events.data or [],
            description=form.description.data or "",
            enabled=bool(form.enabled.data),
        )
        db.commit()
    except AppError as exc:
        keep_on_form(db, exc, form)
        return _render_list(form, 422)
    # Rendered in the POST's answer, never stored or redirected: the only place the secret appears.
    return render_template("admin/webhooks_secret.html", endpoint=made.endpoint, secret=made.value, created=True), 200


@bp.get("/<int:endpoint_id>")
@admin_required
def detail(endpoint_id: int) -> tuple[str, int]:
    return _render_detail(endpoint_id, EndpointForm(), RotateForm())


def _render_detail(endpoint_id: int, form: EndpointForm, rotate_form: RotateForm, status: int = 200) -> tuple[str, int]:
    db = db_session()
    endpoint = webhooks.get_endpoint(db, endpoint_id)
    if not form.is_submitted():
        form.url.data = endpoint.url
        form.description.data = endpoint.description
        form.events.data = list(endpoint.events)
        form.enabled.data = endpoint.enabled
    return (
        render_template(
            "admin/webhooks_detail.html",
            endpoint=endpoint,
            form=form,
            rotate_form=rotate_form,
            action_form=ActionForm(),
            views=webhooks.deliveries(db, endpoint, limit=100),
            event_help=_event_help(),
        ),
        status,
    )


@bp.post("/<int:endpoint_id>")
@admin_required
def update(endpoint_id: int) -> Response | tuple[str, int]:
    form = EndpointForm()
    form.validate()
    db = db_session()
    endpoint = webhooks.get_endpoint(db, endpoint_id)
    try:
        changed = webhooks.update_endpoint(
            db,
            get_settings(),
            audit_ctx(),
            endpoint,
            url=form.url.data or "",
            events=form.events.data or [],
            description=form.description.data or "",
            enabled=bool(form.enabled.data),
        )
        db.commit()
    except AppError as exc:
        keep_on_form(db, exc, form)
        return _render_detail(endpoint_id, form, RotateForm(), 422)
    flash(_("Saved.") if changed else _("Nothing changed."), "success")
    return redirect(url_for("webhooks_admin.detail", endpoint_id=endpoint_id))


@bp.post("/<int:endpoint_id>/rotate")
@admin_required
def rotate(endpoint_id: int) -> tuple[str, int]:
    rotate_form = RotateForm()
    if not rotate_form.validate_on_submit():
        return _render_detail(endpoint_id, EndpointForm(), rotate_form, 422)
    hours = rotate_form.overlap_hours.data if rotate_form.overlap_hours.data is not None else 24
    db = db_session()
    endpoint = webhooks.get_endpoint(db, endpoint_id)
    made = webhooks.rotate_secret(db, get_cipher(), audit_ctx(), endpoint, overlap=timedelta(hours=hours))
    db.commit()
    return render_template("admin/webhooks_secret.html", endpoint=endpoint, secret=made.value, created=False), 200


@bp.post("/<int:endpoint_id>/deliveries/<int:delivery_id>/redeliver")
@admin_required
def redeliver(endpoint_id: int, delivery_id: int) -> Response:
    if not ActionForm().validate_on_submit():
        raise _expired()
    db = db_session()
    delivery = webhooks.get_delivery(db, webhooks.get_endpoint(db, endpoint_id), delivery_id)
    webhooks.redeliver(db, audit_ctx(), delivery)
    db.commit()
    flash(_("Delivery %(id)s is queued again; the delivery job sends it on its next run.", id=delivery_id), "success")
    return redirect(url_for("webhooks_admin.detail", endpoint_id=endpoint_id))


@bp.post("/<int:endpoint_id>/delete")
@admin_required
def delete(endpoint_id: int) -> Response:
    if not ActionForm().validate_on_submit():
        raise _expired()
    db = db_session()
    webhooks.delete_endpoint(db, audit_ctx(), webhooks.get_endpoint(db, endpoint_id))
    db.commit()
    flash(_("Endpoint deleted, with its secrets and delivery log."), "success")
    return redirect(url_for("webhooks_admin.index"))
