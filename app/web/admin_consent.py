"""Tenant-wide admin consent from the OAuth setup page (Entra ID's ``/adminconsent``; any type whose hook has
an ``admin_consent`` point).

An admin presses "Grant admin consent…": the console remembers a fresh ``state`` in the admin's session and
sends the browser to the provider's admin-consent URL. The provider answers on the config's one callback
(``/oauth/<id>/callback``, the redirect URI already registered) with ``admin_consent=True&tenant=…`` or an
``error``; :func:`answers` recognises that answer by its state and :func:`finish` records it
(``provider_config.admin_consent``) and shows it on the setup page.
https://learn.microsoft.com/entra/identity-platform/v2-admin-consent
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlencode

from flask import Blueprint, flash, redirect, session, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response

from app import audit
from app.errors import AppError
from app.extensions import db_session, get_settings
from app.http.context import audit_ctx, signed_in
from app.i18n import gettext as _
from app.models import ProviderConfig
from app.oauth.runtime import redirect_uri
from app.providers import configs
from app.providers.hooks import HOOKS
from app.providers.validation import effective_values
from app.web.common import admin_required

bp = Blueprint("admin_consent", __name__)

SESSION_KEY: Final = "ami_admin_consent"
MAX_AGE: Final = 15 * 60
_SHOWN_MAX: Final = 300  # a provider's error_description, shown to the admin, cut short


class ConsentForm(FlaskForm):  # type: ignore[misc]
    """CSRF only."""


def consent_url(cfg: ProviderConfig) -> str | None:
    """The config's admin-consent URL without ``state``, or None when its type (or tenant) has none."""
    entry = configs.entry_for(cfg)
    values = effective_values(entry, "config", cfg.config or {})
    for name in entry.hooks:
        hook = HOOKS[name].admin_consent
        if hook is not None:
            return hook(entry, values, redirect_uri(get_settings(), cfg.id))
    return None


@bp.post("/admin/providers/<int:config_id>/admin-consent")
@admin_required
def start(config_id: int) -> Response:
    if not ConsentForm().validate_on_submit():
        raise AppError("validation_failed", _("The form expired or did not come from this site."), status=400)
    url = consent_url(configs.get_config(db_session(), config_id))
    if url is None:
        raise AppError("not_found", _("This provider config has no admin consent."))
    state = secrets.token_urlsafe(32)
    session[SESSION_KEY] = {"state": state, "config": config_id, "exp": time.time() + MAX_AGE}
    return redirect(f"{url}&{urlencode({'state': state})}")


def answers(config_id: int, params: Mapping[str, str]) -> bool:
    """Whether a callback is the answer to this admin's consent request (its state, unexpired, this config)."""
    pending = session.get(SESSION_KEY)
    if not isinstance(pending, dict) or pending.get("config") != config_id:
        return False
    state = params.get("state") or ""
    fresh = float(pending.get("exp") or 0) >= time.time()
    return fresh and bool(state) and secrets.compare_digest(str(pending.get("state")), state)


def finish(config_id: int, params: Mapping[str, str]) -> Response:
    """Record the provider's answer and show it on the setup page (admins only)."""
    session.pop(SESSION_KEY, None)
    who = signed_in()
    if who is None or not who.is_admin:
        raise AppError("permission_denied", _("Only an admin can complete an admin consent."))
    granted = params.get("admin_consent", "").lower() == "true" and not params.get("error")
    tenant = (params.get("tenant") or "")[:100]
    db = db_session()
    audit.record(
        db,
        audit_ctx(),
        "provider_config.admin_consent",
        target=f"provider_config:{config_id}",
        outcome="success" if granted else "failure",
        details={"tenant": tenant or None, "error": (params.get("error") or "")[:100] or None},
    )
    db.commit()
    if granted:
        flash(
            _("Admin consent granted for tenant %(tenant)s: its users are no longer asked one by one.", tenant=tenant),
            "success",
        )
    else:
        why = (params.get("error_description") or params.get("error") or _("no reason given"))[:_SHOWN_MAX]
        flash(_("Admin consent was not granted: %(why)s", why=why), "error")
    return redirect(url_for("oauth.admin_setup", config_id=config_id))
