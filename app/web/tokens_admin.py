"""Console: service tokens for the JSON API — list, create (shown once), revoke."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_wtf import FlaskForm
from sqlalchemy import select
from werkzeug.wrappers import Response
from wtforms import IntegerField, SelectMultipleField, StringField
from wtforms.validators import Length, NumberRange, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from app.api import tokens
from app.errors import AppError
from app.extensions import db_session
from app.http.context import audit_ctx, signed_in
from app.i18n import gettext as _
from app.i18n import lazy_gettext as _l
from app.models import User, utcnow
from app.models.base import ID_MAX
from app.providers.registry import get_catalog
from app.web.common import admin_required, form_errors

bp = Blueprint("tokens_admin", __name__, url_prefix="/admin/tokens")


class MultiCheckboxField(SelectMultipleField):  # type: ignore[misc]
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class TokenForm(FlaskForm):  # type: ignore[misc]
    name = StringField(
        _l("Name"),
        validators=[Length(max=tokens.NAME_MAX)],
        description=_l("Who uses it, e.g. “CMS production”."),
    )
    scopes = MultiCheckboxField(_l("Scopes"), choices=list(tokens.SCOPES))
    expires_days = IntegerField(
        _l("Expires after (days)"),
        validators=[
            Optional(),
            NumberRange(
                1,
                tokens.EXPIRES_DAYS_MAX,
                _l("Use a number of days from 1 to %(max)s.", max=tokens.EXPIRES_DAYS_MAX),
            ),
        ],
        description=_l("Leave empty for a token that does not expire."),
    )
    account_ids = StringField(
        _l("Only these accounts"),
        validators=[Length(max=500)],
        description=_l(
            "Connected-account ids, comma-separated: the account scopes (proxy, token, headers) reach only "
            "these. Leave empty for every account."
        ),
    )
    provider_types = StringField(
        _l("Only these provider types"),
        validators=[Length(max=500)],
        description=_l("Provider type ids, comma-separated (e.g. openai, anthropic). Leave empty for every type."),
    )


def _limits(form: TokenForm) -> tokens.AccountLimits | None:
    """The account limits the form asks for; field errors on the form for what cannot be read."""
    ids: set[int] = set()
    for part in (form.account_ids.data or "").replace(" ", ",").split(","):
        if not part:
            continue
        if not part.isascii() or not part.isdigit() or not 0 < int(part) <= ID_MAX:
            form.account_ids.errors = [_("“%(part)s” is not an account id: use numbers, e.g. 12, 15.", part=part[:20])]
            break
        ids.add(int(part))
    known = set(get_catalog().ids())
    types = {part for part in (form.provider_types.data or "").replace(" ", ",").split(",") if part}
    unknown = sorted(types - known)
    if unknown:
        form.provider_types.errors = [
            _(
                "Unknown provider type %(type)s; use e.g. %(known)s.",
                type=repr(unknown[0][:40]),
                known=", ".join(sorted(known)[:4]),
            )
        ]
    if not ids and not types:
        return None
    return tokens.AccountLimits(frozenset(ids), frozenset(types))


class RevokeForm(FlaskForm):  # type: ignore[misc]
    """Only the CSRF token."""


def _render_list(form: TokenForm, status: int = 200) -> tuple[str, int]:
    db = db_session()
    rows = tokens.list_tokens(db)
    creator_ids = {t.created_by for t in rows if t.created_by is not None}
    creators: dict[int, str] = {}
    if creator_ids:
        for user_id, email in db.execute(select(User.id, User.email).where(User.id.in_(creator_ids))):
            creators[user_id] = email
    now = utcnow()
    return (
        render_template(
            "admin/tokens.html",
            rows=[(t, tokens.status(t, now), creators.get(t.created_by or 0, "")) for t in rows],
            form=form,
            revoke_form=RevokeForm(),
            scope_help={scope: _(text) for scope, text in tokens.SCOPES.items()},
        ),
        status,
    )


@bp.get("/")
@admin_required
def index() -> tuple[str, int]:
    return _render_list(TokenForm())


@bp.post("/")
@admin_required
def create() -> tuple[str, int]:
    # CSRF was checked before the view (CSRFProtect); what is left is the fields.
    form = TokenForm()
    form.validate()
    limits = _limits(form)
    expires_days = form.expires_days.data if not form.expires_days.errors else None
    problems = tokens.request_problems(form.name.data or "", form.scopes.data or [], expires_days)
    # Show every problem at once: the logic's message where the field has none from the form yet.
    form_errors(AppError("validation_failed", fields={k: v for k, v in problems.items() if not form[k].errors}), form)
    if form.errors:
        return _render_list(form, 422)
    who = signed_in()
    assert who is not None
    db = db_session()
    issued = tokens.create_token(
        db,
        audit_ctx(),
        name=form.name.data or "",
        scopes=form.scopes.data or [],
        created_by=who.user.id,
        expires_days=expires_days,
        limits=limits,
    )
    db.commit()
    # Rendered in the POST's response (never stored, never redirected through a session): this page is
    # the only place the token ever appears, and its response is no-store.
    return render_template("admin/tokens_created.html", token=issued.record, raw=issued.raw), 200


@bp.post("/<int:token_id>/revoke")
@admin_required
def revoke(token_id: int) -> Response:
    form = RevokeForm()
    if not form.validate_on_submit():
        raise AppError("validation_failed", _("The form expired."), _("Reload the page and try again."), status=400)
    db = db_session()
    record = tokens.revoke_token(db, audit_ctx(), token_id)
    db.commit()
    flash(
        _(
            "Revoked the token “%(name)s” (%(prefix)s…). Calls with it now get 401.",
            name=record.name,
            prefix=record.prefix,
        ),
        "success",
    )
    return redirect(url_for("tokens_admin.index"))
