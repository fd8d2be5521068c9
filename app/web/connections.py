"""A user's connected OAuth accounts (``/account/connections``): connect, reconnect, refresh now,
disconnect (revoking where the provider can), and connect with a code (the device flow, RFC 8628).

The device flow page shows the user code, the verification URI and a QR code of it, and polls with htmx
every ``interval`` seconds as the provider asked (``slow_down`` makes it 5 s longer, RFC 8628 §3.5;
``AMI_AUTH_DEVICE_POLL_INTERVAL`` overrides it for tests). The poll endpoint also refuses to ask the
provider sooner than the interval, whatever the browser does.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any, Final

import qrcode
import qrcode.image.svg
from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from markupsafe import Markup
from sqlalchemy import select
from werkzeug.wrappers import Response
from wtforms import HiddenField

from app.errors import AppError
from app.extensions import db_session, get_settings
from app.http.context import audit_ctx, signed_in
from app.i18n import gettext as _
from app.models import ConnectedAccount, ProviderConfig
from app.oauth import DeviceAuthorization, poll_once, start_device_authorization
from app.oauth.connections import (
    CONSENT_REQUIRED,
    EXPIRED,
    account_for_user,
    load_tokens,
    revoke_account,
    store_connection,
)
from app.oauth.identity import fetch_identity
from app.oauth.provider import OAuthProvider
from app.oauth.renewal import refresh_access_token
from app.oauth.runtime import build_provider
from app.providers.entries import Notes
from app.providers.registry import get_catalog
from app.vault import SecretUnreadable
from app.web.common import login_required
from app.web.errors import viewer_error
from app.web.oauth import begin_authorization, load_provider, rt

bp = Blueprint("connections", __name__, url_prefix="/account/connections")

DEVICE_KEY: Final = "ami_oauth_device"


class ActionForm(FlaskForm):  # type: ignore[misc]
    """CSRF only: connect, reconnect, refresh, device flow."""


class DisconnectForm(FlaskForm):  # type: ignore[misc]
    force = HiddenField(default="")


def _user_id() -> int:
    who = signed_in()
    assert who is not None
    return who.user.id


def _check_form(form: FlaskForm) -> None:
    if not form.validate_on_submit():
        raise AppError("validation_failed", _("The form expired or did not come from this site."), status=400)


def _oauth_configs() -> list[ProviderConfig]:
    return list(
        db_session().scalars(
            select(ProviderConfig)
            .where(ProviderConfig.provider_type.in_(get_catalog().ids(lambda e: e.capabilities.oauth)))
            .order_by(ProviderConfig.name)
        )
    )


def _provider_or_none(cfg: ProviderConfig) -> OAuthProvider | None:
    try:
        return build_provider(db_session(), rt(), cfg)
    except (AppError, SecretUnreadable):
        return None


def _view(account: ConnectedAccount, provider: OAuthProvider | None, now: datetime) -> dict[str, Any]:
    tokens = None
    found = get_catalog().get(account.provider_config.provider_type)
    with contextlib.suppress(SecretUnreadable):
        tokens = load_tokens(db_session(), rt().cipher, account.id)
    return {
        "account": account,
        "provider": provider,
        "has_refresh": tokens is not None and tokens.refresh_token is not None,
        "never_expires": tokens is not None and tokens.expires_at is None,
        "expired": account.expires_at is not None and account.expires_at <= now,
        "needs_reconnect": account.status in (CONSENT_REQUIRED, EXPIRED),
        "roles": account.provider_data.get("roles") or [],
        "notes": found.notes if found is not None else Notes(),
    }


@bp.get("/")
@login_required
def index() -> str:
    db = db_session()
    user_id = _user_id()
    configs = _oauth_configs()
    by_id = {cfg.id: cfg for cfg in configs}
    providers = {cfg.id: _provider_or_none(cfg) for cfg in configs if cfg.enabled}
    accounts = list(
        db.scalars(
            select(ConnectedAccount)
            .where(ConnectedAccount.user_id == user_id, ConnectedAccount.provider_config_id.in_(list(by_id)))
            .order_by(ConnectedAccount.created_at)
        )
    )
    now = datetime.now(UTC)
    return render_template(
        "account/connections.html",
        rows=[_view(a, providers.get(a.provider_config_id), now) for a in accounts],
        configs=by_id,
        available=[p for p in providers.values() if p is not None],
        form=ActionForm(),
    )


# Connect and reconnect are links (GET), not forms: CSP `form-action 'self'` stops a form submission that
# redirects to another origin, and the provider is one. Starting only writes this browser's own pending
# authorization; nothing changes until the provider's answer comes back with its state (RFC 6749 §10.12).
@bp.get("/connect/<int:config_id>")
@login_required
def connect(config_id: int) -> Response:
    provider = load_provider(db_session(), config_id)
    intent = {"purpose": "connect", "user": _user_id()}
    return begin_authorization(provider, intent, want_refresh=provider.refreshable)


@bp.get("/<int:account_id>/reconnect")
@login_required
def reconnect(account_id: int) -> Response:
    db = db_session()
    account = account_for_user(db, account_id, _user_id())
    provider = load_provider(db, account.provider_config_id)
    intent = {"purpose": "connect", "user": _user_id(), "account": account.id}
    return begin_authorization(provider, intent, want_refresh=provider.refreshable)


@bp.post("/<int:account_id>/refresh")
@login_required
def refresh_now(account_id: int) -> Response:
    _check_form(ActionForm())
    db = db_session()
    account = account_for_user(db, account_id, _user_id())
    try:
        tokens = refresh_access_token(db, account, rt())
    except AppError as exc:
        db.rollback()
        shown, reference = viewer_error(exc)
        flash(
            _("Could not refresh: %(error)s.", error=shown.text.rstrip(".")) + f" {shown.help}{_ref(reference)}",
            "error",
        )
    else:
        when = tokens.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC") if tokens.expires_at else _("no expiry")
        flash(
            _("Refreshed %(label)s: the new access token is valid until %(when)s.", label=account.label, when=when),
            "success",
        )
    return redirect(url_for("connections.index") + f"#account-{account_id}")


def _disconnect_page(account: ConnectedAccount, error: AppError | None = None, status: int = 200) -> tuple[str, int]:
    db = db_session()
    cfg = db.get(ProviderConfig, account.provider_config_id)
    provider = _provider_or_none(cfg) if cfg is not None else None
    html = render_template(
        "account/connections_disconnect.html",
        account=account,
        provider=provider,
        form=DisconnectForm(),
        error=error,
    )
    return html, status


@bp.route("/<int:account_id>/disconnect", methods=["GET", "POST"])
@login_required
def disconnect(account_id: int) -> Response | tuple[str, int]:
    db = db_session()
    account = account_for_user(db, account_id, _user_id())
    if request.method == "GET":
        return _disconnect_page(account)
    form = DisconnectForm()
    _check_form(form)
    label = account.label
    result = revoke_account(db, account, rt(), audit_ctx(), force=form.force.data == "1")
    if result.outcome == "not_revoked" and result.error is not None and form.force.data != "1":
        return _disconnect_page(account, result.error, 502 if result.error.code == "provider_unreachable" else 409)
    if result.outcome == "unsupported":
        when = result.access_token_expires_at
        until = _("until %(at)s", at=when.strftime("%Y-%m-%d %H:%M UTC")) if when else _("until it expires")
        flash(
            _(
                "Removed %(label)s here. This provider cannot revoke tokens: the access token it issued stays valid "
                "%(until)s, and then stops working on its own.",
                label=label,
                until=until,
            ),
            "warning",
        )
    elif result.outcome == "not_revoked":
        flash(
            _("Removed %(label)s here only; the provider could not be asked to revoke its tokens.", label=label),
            "warning",
        )
    else:
        flash(_("Disconnected %(label)s and revoked its access at the provider.", label=label), "success")
    return redirect(url_for("connections.index"))


# --- connect with a code (device flow) ----------------------------------------------------------------------


def _device_state() -> dict[str, Any]:
    data = session.get(DEVICE_KEY)
    return dict(data) if isinstance(data, dict) else {}


def _store_device(config_id: int, entry: dict[str, Any] | None) -> None:
    state = _device_state()
    if entry is None:
        state.pop(str(config_id), None)
    else:
        state[str(config_id)] = entry
    session[DEVICE_KEY] = state


def _interval(device: DeviceAuthorization) -> float:
    override = get_settings().device_poll_interval
    return override if override is not None else device.interval


def _qr_svg(text: str) -> Markup:
    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2)
    svg = image.to_string(encoding="unicode")
    # No style attributes anywhere (CSP style-src 'self'): size and colours come from app.css.
    svg = svg.replace("<svg ", '<svg class="device-qr" role="img" aria-label="QR code of the verification link" ', 1)
    return Markup(svg)  # noqa: S704 - qrcode's own SVG of a URL we built; no user markup inside


@bp.post("/device/<int:config_id>")
@login_required
def device_start(config_id: int) -> Response:
    _check_form(ActionForm())
    # The device flow's own client where the config has one (Google's "TVs and Limited Input devices").
    provider = load_provider(db_session(), config_id).for_device()
    if not provider.device_flow:
        raise AppError("not_found", _("Connecting with a code is not turned on for this provider."))
    device = start_device_authorization(
        rt().client,
        provider.metadata,
        provider.credentials,
        provider.scopes,
        interval=get_settings().device_poll_interval,
        extra_params=provider.authorize_params(),
    )
    _store_device(config_id, {"device": device.to_dict(), "user": _user_id(), "last_poll": 0.0})
    return redirect(url_for("connections.device", config_id=config_id))


def _device_for(config_id: int) -> tuple[DeviceAuthorization, dict[str, Any]] | None:
    entry = _device_state().get(str(config_id))
    if not isinstance(entry, dict) or entry.get("user") != _user_id():
        return None
    return DeviceAuthorization.from_dict(entry["device"]), entry


@bp.get("/device/<int:config_id>")
@login_required
def device(config_id: int) -> Response | str:
    found = _device_for(config_id)
    if found is None:
        flash(_("Start connecting with a code first."), "warning")
        return redirect(url_for("connections.index"))
    device = found[0]
    provider = load_provider(db_session(), config_id)
    link = device.verification_uri_complete or device.verification_uri
    return render_template(
        "account/connections_device.html",
        provider=provider,
        device=device,
        qr=_qr_svg(link),
        status="pending",
        interval=_interval(device),
        form=ActionForm(),
    )


def _status(config_id: int, status: str, interval: float = 0.0, message: str = "", code: str = "") -> str:
    return render_template(
        "account/connections_device_status.html",
        config_id=config_id,
        status=status,
        interval=interval,
        message=message,
        code=code,
    )


def _ref(reference: str | None) -> str:
    return " " + _("(reference %(reference)s)", reference=reference) if reference else ""


def _failed(config_id: int, exc: AppError) -> str:
    shown, reference = viewer_error(exc)
    return _status(
        config_id, "failed", message=f"{shown.text.rstrip('.')}. {shown.help}{_ref(reference)}", code=shown.code
    )


@bp.post("/device/<int:config_id>/poll")
@login_required
def device_poll(config_id: int) -> Response | str:
    _check_form(ActionForm())
    found = _device_for(config_id)
    if found is None:
        return _status(config_id, "gone", message=_("This code is no longer active. Start again."))
    device, entry = found
    interval = _interval(device)
    # RFC 8628 §3.5: never poll the provider faster than the interval, however often the page asks.
    if time.time() - float(entry.get("last_poll") or 0.0) < interval:
        return _status(config_id, "pending", interval)
    entry["last_poll"] = time.time()
    _store_device(config_id, entry)
    db = db_session()
    provider = load_provider(db, config_id).for_device()
    try:
        result = poll_once(
            rt().client,
            provider.metadata,
            provider.credentials,
            device,
            keys=provider.keys,
            policy=provider.policy,
            default_expires_in=provider.default_expires_in,
        )
    except AppError as exc:
        _store_device(config_id, None)
        if exc.code == "token_expired":
            return _status(config_id, "expired", message=_("The code expired before it was approved."), code=exc.code)
        if exc.code == "consent_required":
            return _status(config_id, "denied", message=_("The request was denied at the provider."), code=exc.code)
        if exc.code in ("provider_unreachable", "rate_limited"):
            # Keep polling: a provider hiccup is not the user's answer.
            _store_device(config_id, entry)
            return _status(config_id, "pending", interval, message=exc.text, code=exc.code)
        return _failed(config_id, exc)
    if result.status != "approved" or result.tokens is None:
        if result.status == "slow_down":
            entry["device"] = result.device.to_dict()
            _store_device(config_id, entry)
        return _status(config_id, result.status, _interval(result.device))
    try:
        identity = fetch_identity(rt().client, provider, result.tokens)
        account = store_connection(db, rt().cipher, audit_ctx(), provider, _user_id(), result.tokens, identity)
        db.commit()
    except AppError as exc:
        db.rollback()
        _store_device(config_id, None)
        return _failed(config_id, exc)
    _store_device(config_id, None)
    flash(
        _("Connected %(provider)s account %(label)s.", provider=provider.display_name, label=account.label), "success"
    )
    response = Response(_status(config_id, "approved", message=_("Connected %(label)s.", label=account.label)))
    # htmx follows this header with a full page load of the list.
    response.headers["HX-Redirect"] = url_for("connections.index") + f"#account-{account.id}"
    return response


@bp.post("/device/<int:config_id>/cancel")
@login_required
def device_cancel(config_id: int) -> Response:
    _check_form(ActionForm())
    _store_device(config_id, None)
    return redirect(url_for("connections.index"))
