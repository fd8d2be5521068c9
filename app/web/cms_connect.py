"""The OAuth half of the end-user connect link (``POST /api/account-manager/connect-links`` on an OAuth config).

The link's page (``/dialogs/cms``, :mod:`app.web.cms_dialogs`) shows "Continue to <provider>", whose target
(``/dialogs/cms/oauth``) claims the link for the user's own session and starts the same authorization as
Account → Connections (:func:`app.web.oauth.begin_authorization`), with an intent that names the link by its id.
The provider answers on the config's one registered callback (``/oauth/<id>/callback``), which hands that answer
here (:func:`answers`, then :func:`finish`, the way it hands Entra's admin consent to :mod:`app.web.admin_consent`).

:func:`finish` takes the pending authorization (single use, bound to this browser), then the link — unused,
unexpired, opened by this very session (``app.api.dialog_links.find_for_callback``) — completes the authorization
with every check of :func:`app.oauth.complete_authorization`, and stores the token set encrypted for the link's
user (:func:`app.oauth.connections.store_connection`: audited ``connected_account.connect``, which is the webhook
``account.connected``). The browser goes back to ``return_to`` with ``status=saved&account=<id>``; a denied
consent or a provider error spends the link too and goes back with ``status=failed&error=<code>``, nothing
stored. A link that cannot be used raises :class:`~app.api.dialog_links.DialogUnavailable`, which the dialogs
render as their error page (no redirect).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from flask import current_app, redirect, session
from sqlalchemy.exc import IntegrityError
from werkzeug.wrappers import Response

from app import audit
from app.api import dialog_links
from app.errors import AppError
from app.extensions import db_session, get_settings
from app.http.context import audit_ctx, signed_in
from app.i18n import gettext as _
from app.models import DialogToken, ProviderConfig
from app.oauth import take_pending
from app.oauth.connections import store_connection
from app.oauth.flow import peek_pending
from app.oauth.identity import finish_authorization
from app.oauth.runtime import build_provider, runtime
from app.vault import SecretUnreadable

# The intent's purpose (beside "signin" and "connect" of app.web.oauth).
PURPOSE: Final = "cms_connect"


def intent(record: DialogToken) -> dict[str, Any]:
    """What the pending authorization remembers: the link's id and its user (never the link's token)."""
    return {"purpose": PURPOSE, "dialog": record.id, "user": record.for_user_id}


def _intent(provider_key: str) -> dict[str, Any]:
    try:
        found = json.loads(provider_key)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def answers(config_id: int, params: Mapping[str, str]) -> bool:
    """Whether a callback answers an authorization a connect link started in this browser, for this config."""
    pending = peek_pending(session, params.get("state"))
    if pending is None:
        return False
    found = _intent(pending.provider_key)
    return found.get("purpose") == PURPOSE and found.get("config") == config_id


def finish(config_id: int, params: Mapping[str, str]) -> Response:
    db = db_session()
    settings = get_settings()
    pending = take_pending(session, params.get("state"))  # spent now, whatever happens next
    who = signed_in()
    try:
        record = dialog_links.find_for_callback(
            db, settings, _intent(pending.provider_key).get("dialog"), session_id=who.record.id if who else None
        )
    except dialog_links.DialogUnavailable:
        db.rollback()
        raise
    assert who is not None and record.for_user_id is not None
    if who.user.id != record.for_user_id:
        # Only the link's user can have opened it (cms_dialogs); never store an account for anyone else.
        raise dialog_links.DialogUnavailable("elsewhere", record)
    services = runtime(current_app._get_current_object())  # type: ignore[attr-defined]
    try:
        cfg = db.get(ProviderConfig, config_id)
        if cfg is None or cfg.id != record.provider_config_id or not cfg.enabled:
            raise AppError("not_found", _("This provider config is no longer available."))
        try:
            provider = build_provider(db, services, cfg)  # ends the read: nothing held while the provider answers
        except SecretUnreadable as exc:
            raise AppError("secret_unreadable", exc.text) from None
        tokens, identity = finish_authorization(services.client, provider, pending, params)
        # The account is the link's user's, never whoever the browser's session or the provider names.
        account = store_connection(db, services.cipher, audit_ctx(), provider, record.for_user_id, tokens, identity)
        dialog_links.finish(db, audit_ctx(), record, session_id=who.record.id, outcome="saved", account_id=account.id)
        db.commit()
    except dialog_links.DialogUnavailable:
        db.rollback()  # spent meanwhile (Cancel in another tab): keep nothing
        raise
    except IntegrityError:
        db.rollback()
        return give_up(record, config_id, who.record.id, AppError("conflict", _("That account was just connected.")))
    except AppError as exc:
        db.rollback()
        return give_up(record, config_id, who.record.id, exc)
    return redirect(dialog_links.return_url(record, "saved"), code=303)


def give_up(record: DialogToken, config_id: int, session_id: str, exc: AppError) -> Response:
    """Nothing stored: record why, spend the link, and send the browser back with ``status=failed`` (also when
    the authorization could not even start: the provider unreachable, the config disabled meanwhile)."""
    db = db_session()
    audit.record(
        db,
        audit_ctx(),
        "connected_account.connect",
        target=f"provider_config:{config_id}",
        outcome="failure",
        details={"method": "oauth", "code": exc.code, "dialog": record.id},
    )
    try:
        dialog_links.finish(db, audit_ctx(), record, session_id=session_id, outcome="failed")
    except dialog_links.DialogUnavailable:
        db.rollback()  # spent meanwhile (Cancel in another tab): its own answer went back already
        raise
    db.commit()
    return redirect(dialog_links.return_url(record, "failed", exc.code), code=303)
