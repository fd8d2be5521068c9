"""Sign in with a provider, the one callback every OAuth flow returns to, "link your account", and the
console's OAuth setup page (redirect URI, setup notes, "Test connection").

- ``GET /oauth/<config_id>/login`` → the provider's authorization endpoint (state, nonce, PKCE kept in
  the browser session by :func:`app.oauth.remember_pending`: single use, bound to this browser).
- ``GET /oauth/<config_id>/callback`` → completes a sign-in or a connect (the pending authorization says
  which), with every check of :func:`app.oauth.complete_authorization`.
- ``/oauth/link`` → an identity that may not link by itself is linked after the AMI password.
- ``/admin/providers/<id>/oauth`` (+ ``POST …/test-oauth``) → the redirect URI to register, setup notes,
  and what discovery and the JWKS say.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from typing import Any, Final

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from markupsafe import Markup, escape
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from app import audit, faults
from app.auth import role_mapping, throttle, users
from app.errors import N_, AppError, translated
from app.extensions import db_session, end_read, get_limit_storage, get_settings
from app.http.context import audit_ctx, client_ip, signed_in
from app.i18n import gettext as _
from app.i18n import lazy_gettext
from app.jobs.scheduler import ensure_started
from app.models import ProviderConfig, User
from app.oauth import remember_pending, start_authorization, take_pending
from app.oauth.connections import store_connection
from app.oauth.identities import link_identity, resolve_signin
from app.oauth.identity import finish_authorization
from app.oauth.provider import OAuthProvider
from app.oauth.runtime import OAuthRuntime, build_provider, redirect_uri, runtime
from app.oauth.setup_check import test_connection
from app.providers import configs
from app.providers.registry import get_catalog
from app.vault import SecretUnreadable
from app.web import admin_consent, cms_connect
from app.web.browser import browser_id
from app.web.common import admin_required, form_errors, landing, safe_next
from app.web.errors import viewer_error
from app.web.signin import establish_session, needs_second_factor, record_failed_signin, start_second_factor

bp = Blueprint("oauth", __name__)
log = logging.getLogger("ami_auth.oauth")

LINK_KEY: Final = "ami_oauth_link"
LINK_MAX_AGE: Final = 600.0
Purpose = str  # "signin" | "connect"


# --- shared helpers (also used by app/web/connections.py) -------------------------------------------------


def rt() -> OAuthRuntime:
    return runtime(current_app._get_current_object())  # type: ignore[attr-defined]


def is_oauth_type(provider_type: str) -> bool:
    """Whether configs of this type connect through OAuth (the catalog says; an unknown type does not)."""
    found = get_catalog().get(provider_type)
    return found is not None and found.capabilities.oauth


def enabled_oauth_config(db: Session, config_id: int) -> ProviderConfig:
    cfg = db.get(ProviderConfig, config_id)
    if cfg is None or not cfg.enabled or not is_oauth_type(cfg.provider_type):
        raise AppError("not_found", N_("This sign-in option is not available."), N_("Go back and choose another."))
    return cfg


def load_provider(db: Session, config_id: int) -> OAuthProvider:
    cfg = enabled_oauth_config(db, config_id)
    try:
        return build_provider(db, rt(), cfg)
    except SecretUnreadable as exc:
        raise AppError("secret_unreadable", exc.text) from None


def begin_authorization(provider: OAuthProvider, intent: dict[str, Any], *, want_refresh: bool) -> Response:
    """Remember a pending authorization for this browser and send it to the provider."""
    offline_scope, refresh_params = provider.refresh_request() if want_refresh else (None, None)
    request_ = start_authorization(
        provider.metadata,
        provider.credentials,
        redirect_uri=redirect_uri(get_settings(), provider.config_id),
        scopes=provider.scopes,
        pkce=provider.pkce,
        want_refresh=want_refresh,
        offline_scope=offline_scope,
        refresh_params=refresh_params,
        extra_params=provider.authorize_params(),
        provider_key=json.dumps({"config": provider.config_id, **intent}, separators=(",", ":")),
    )
    remember_pending(session, request_.pending)
    return redirect(request_.url)


@functools.cache
def _signin_configs(types: tuple[str, ...]) -> Select[Any]:
    # Built once per catalog; columns only (the sign-in page is the busiest page: no ORM objects for its buttons).
    return (
        select(ProviderConfig.id, ProviderConfig.name, ProviderConfig.provider_type, ProviderConfig.config)
        .where(ProviderConfig.enabled.is_(True), ProviderConfig.provider_type.in_(types))
        .order_by(ProviderConfig.name)
    )


def signin_providers() -> list[dict[str, Any]]:
    """Enabled configs of the types that offer sign-in, for the buttons on /signin (called from the
    template): the config's name in the entry's button label, and its logo."""
    catalog = get_catalog()
    rows = db_session().connection().execute(_signin_configs(catalog.ids(lambda e: e.capabilities.signin)))
    buttons = []
    for row in rows:
        if (row.config or {}).get("signin", True) is False:
            continue
        found = catalog.get(row.provider_type)
        if found is None:
            continue
        capabilities = found.capabilities
        buttons.append(
            {
                "id": row.id,
                "name": row.name,
                "type": row.provider_type,
                # The public label an admin set, apart from the configuration's internal name.
                "label": (row.config or {}).get("button_label") or capabilities.button(row.name),
                "logo": capabilities.logo,
            }
        )
    return buttons


# The little markup catalog notes may use: `code`, **strong**, *emphasis*; everything else is escaped text.
_NOTE_MARKUP: Final = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*|\*([^*]+)\*")


@bp.app_template_filter("note_markup")
def note_markup(text: str) -> Markup:
    parts: list[Markup] = []
    position = 0
    for match in _NOTE_MARKUP.finditer(text):
        parts.append(escape(text[position : match.start()]))
        code, strong, emphasis = match.groups()
        if code is not None:
            parts.append(Markup("<code>%s</code>") % code)
        elif strong is not None:
            parts.append(Markup("<strong>%s</strong>") % strong)
        else:
            parts.append(Markup("<em>%s</em>") % emphasis)
        position = match.end()
    parts.append(escape(text[position:]))
    return Markup("").join(parts)


@bp.app_context_processor
def _oauth_ui() -> dict[str, Any]:
    # A callable, so the query runs only on the page that renders the buttons.
    return {"oauth_signin_providers": signin_providers}


@bp.before_app_request
def _start_scheduler() -> None:
    # Lazily, in processes that serve requests (never in the CLI); off with AMI_AUTH_SCHEDULER=false.
    ensure_started(current_app._get_current_object())  # type: ignore[attr-defined]


def finish_signin(user_id: int, methods: list[str], next_url: str, details: dict[str, Any]) -> Response:
    """Start the session after an OAuth sign-in — or, for a user with a second factor, the second-factor
    step first, exactly as after a password (the MFA policy applies whatever the first factor was)."""
    db = db_session()
    user = db.get(User, user_id)
    if user is None or not user.is_active:
        raise AppError("permission_denied", N_("This account is disabled."), N_("Ask an administrator to enable it."))
    if needs_second_factor(user):
        return start_second_factor(user, methods, next_url)
    if "password" in methods:  # the link page checked the password under the throttle: the sign-in is complete
        throttle.record_success(get_limit_storage(), get_settings(), user.email, client_ip(), device=browser_id())
    audit.record(db, audit_ctx(), "signin.success", target=f"user:{user.id}", details={"method": "oauth", **details})
    establish_session(user, methods)  # commits the event with the session
    return redirect(landing(user.is_admin, next_url))


def _error_page(exc: AppError, *, back: str, back_label: str) -> Response:
    if exc.code == "provider_unreachable":
        # The provider is down (no answer, or a 5xx) in the middle of a user's sign-in or connection: a fault
        # they can only wait out, not bad input. The detail (host, status) goes to the log, not the page.
        log.warning("OAuth provider unavailable: %s", exc.text)
        exc = faults.provider_unavailable(exc)
    exc, reference = viewer_error(exc)
    html = render_template("oauth/error.html", error=exc, back=back, back_label=back_label, reference=reference)
    response = Response(html, status=exc.http_status, mimetype="text/html")
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


# --- sign in ---------------------------------------------------------------------------------------------


@bp.get("/oauth/<int:config_id>/login")
def login(config_id: int) -> Response | tuple[str, int]:
    next_url = safe_next(request.args.get("next"), url_for("web.home"))
    if signed_in() is not None:
        return redirect(next_url)
    db = db_session()
    try:
        provider = load_provider(db, config_id)
        if not provider.signin_enabled:
            raise AppError("not_found", N_("This sign-in option is not available."), N_("Go back and choose another."))
        return begin_authorization(provider, {"purpose": "signin", "next": next_url}, want_refresh=False)
    except AppError as exc:
        return _error_page(exc, back=url_for("auth.signin"), back_label=_("Back to sign in"))


@bp.get("/oauth/<int:config_id>/callback")
def callback(config_id: int) -> Response | tuple[str, int]:
    params = {k: v for k, v in request.args.items()}
    if admin_consent.answers(config_id, params):
        return admin_consent.finish(config_id, params)
    if cms_connect.answers(config_id, params):
        return cms_connect.finish(config_id, params)
    db = db_session()
    purpose: Purpose = "signin"
    back, back_label = url_for("auth.signin"), _("Back to sign in")
    try:
        pending = take_pending(session, params.get("state"))
        try:
            intent = json.loads(pending.provider_key)
        except ValueError:
            intent = {}
        if not isinstance(intent, dict) or intent.get("config") != config_id:
            raise AppError("validation_failed", N_("The response belongs to another provider."), N_("Start again."))
        purpose = str(intent.get("purpose", "signin"))
        if purpose == "connect":
            back, back_label = url_for("connections.index"), _("Back to connections")
        # Loading the provider ends the read (build_provider): nothing is held while the provider answers (the
        # token request, its keys, its userinfo: seconds each when it is slow), else a worker's every connection
        # could be waiting on sign-ins.
        provider = load_provider(db, config_id)
        services = rt()
        tokens, identity = finish_authorization(services.client, provider, pending, params)
        if purpose == "connect":
            who = signed_in()
            if who is None or who.user.id != intent.get("user"):
                raise AppError("not_authenticated", N_("Sign in again, then connect the account."))
            reconnect = intent.get("account")
            account = store_connection(
                db,
                services.cipher,
                audit_ctx(),
                provider,
                who.user.id,
                tokens,
                identity,
                reconnect_id=reconnect if isinstance(reconnect, int) else None,
            )
            db.commit()
            flash(
                _("Connected %(provider)s account %(account)s.", provider=provider.display_name, account=account.label),
                "success",
            )
            return redirect(url_for("connections.index") + f"#account-{account.id}")
        next_url = safe_next(str(intent.get("next") or ""), url_for("web.home"))
        result = resolve_signin(db, get_settings(), audit_ctx(), provider, identity)
        if result.outcome == "link_required":
            db.commit()
            session[LINK_KEY] = {
                "config": config_id,
                "subject": identity.subject,
                "email": identity.email,
                "name": identity.name,
                "provider": provider.display_name,
                "reason": translated(result.reason),  # the session keeps text: in this browser's language
                "next": next_url,
                "exp": time.time() + LINK_MAX_AGE,
            }
            return redirect(url_for("oauth.link"))
        assert result.user is not None
        # The provider's groups decide the role when the config maps them (app.auth.role_mapping).
        role_mapping.apply(
            db,
            audit_ctx(),
            result.user,
            provider.values.get("role_mapping"),
            identity.groups,
            provider_config_id=config_id,
        )
        db.commit()
        return finish_signin(
            result.user.id, ["oauth"], next_url, {"provider_config": config_id, "outcome": result.outcome}
        )
    except IntegrityError:
        db.rollback()
        return _error_page(
            AppError("conflict", N_("That account was just linked."), N_("Start again.")),
            back=back,
            back_label=back_label,
        )
    except AppError as exc:
        db.rollback()
        audit.record(
            db,
            audit_ctx(),
            "signin.failure" if purpose == "signin" else "connected_account.connect",
            target=f"provider_config:{config_id}",
            outcome="failure",
            details={"method": "oauth", "code": exc.code},
        )
        db.commit()
        return _error_page(exc, back=back, back_label=back_label)


# --- link your account ---------------------------------------------------------------------------------------


class LinkForm(FlaskForm):  # type: ignore[misc]
    email = EmailField(lazy_gettext("Your AMI Auth email"), validators=[DataRequired(), Length(max=320)])
    password = PasswordField(lazy_gettext("Your AMI Auth password"), validators=[DataRequired(), Length(max=256)])


def _pending_link() -> dict[str, Any]:
    data = session.get(LINK_KEY)
    if not isinstance(data, dict) or float(data.get("exp") or 0) < time.time():
        session.pop(LINK_KEY, None)
        raise AppError(
            "token_expired", N_("There is no sign-in waiting to be linked."), N_("Start the sign-in again."), status=410
        )
    return data


@bp.route("/oauth/link", methods=["GET", "POST"])
def link() -> Response | tuple[str, int]:
    try:
        pending = _pending_link()
    except AppError as exc:
        return _error_page(exc, back=url_for("auth.signin"), back_label=_("Back to sign in"))
    form = LinkForm(data={"email": pending.get("email") or ""} if request.method == "GET" else None)
    if form.validate_on_submit():
        db = db_session()
        settings, storage = get_settings(), get_limit_storage()
        email, ip, device = users.normalize_email(form.email.data), client_ip(), browser_id()
        try:
            # The same throttle as the sign-in page: this form checks the same passwords.
            throttle.check_signin(storage, settings, email=email, ip=ip, device=device)
        except throttle.Throttled as exc:
            return _link_throttled(form, pending, exc)
        check = users.check_password(db, settings, form.email.data, form.password.data)
        if check.ok and check.user is not None:
            try:
                link_identity(
                    db, audit_ctx(), check.user, int(pending["config"]), str(pending["subject"]), pending.get("email")
                )
                db.commit()
            except (AppError, IntegrityError) as exc:
                db.rollback()
                error = exc if isinstance(exc, AppError) else AppError("conflict", N_("That account was just linked."))
                return _error_page(error, back=url_for("auth.signin"), back_label=_("Back to sign in"))
            session.pop(LINK_KEY, None)
            return finish_signin(
                check.user.id,
                ["password", "oauth"],
                safe_next(pending.get("next"), "/"),
                {"provider_config": pending["config"], "outcome": "linked"},
            )
        lock = record_failed_signin(email, "password", purpose="oauth_link")
        if lock is not None:
            return _link_throttled(form, pending, lock)
        form_errors(AppError("invalid_credentials", fields={"password": N_("Email or password is not right.")}), form)
    status = 401 if form.is_submitted() and form.errors else 200
    return render_template("oauth/link.html", form=form, pending=pending), status


def _link_throttled(form: LinkForm, pending: dict[str, Any], exc: throttle.Throttled) -> Response:
    """429 with Retry-After; the lock's reason on the password field, where the guesses were typed."""
    form.password.errors = [*form.password.errors, f"{exc.text} {exc.help}"]
    html = render_template("oauth/link.html", form=form, pending=pending)
    response = Response(html, status=exc.http_status, mimetype="text/html")
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


# --- console: setup notes and "Test connection" ------------------------------------------------------------


class TestForm(FlaskForm):  # type: ignore[misc]
    """CSRF only."""


def _setup_page(config_id: int, report: Any = None, status: int = 200) -> tuple[str, int]:
    db = db_session()
    cfg = configs.get_config(db, config_id)
    if not is_oauth_type(cfg.provider_type):
        raise AppError("not_found", N_("This provider config does not use OAuth."))
    html = render_template(
        "oauth/admin_setup.html",
        cfg=cfg,
        provider=configs.entry_for(cfg),
        redirect_uri=redirect_uri(get_settings(), cfg.id),
        form=TestForm(),
        report=report,
        admin_consent_url=admin_consent.consent_url(cfg),
        consent_form=admin_consent.ConsentForm(),
    )
    return html, status


@bp.get("/admin/providers/<int:config_id>/oauth")
@admin_required
def admin_setup(config_id: int) -> tuple[str, int]:
    return _setup_page(config_id)


@bp.post("/admin/providers/<int:config_id>/test-oauth")
@admin_required
def admin_test(config_id: int) -> tuple[str, int]:
    form = TestForm()
    if not form.validate_on_submit():
        raise AppError("validation_failed", N_("The form expired or did not come from this site."), status=400)
    db = db_session()
    cfg = configs.get_config(db, config_id)
    entry = configs.entry_for(cfg)
    try:
        secrets = configs.read_secrets(db, rt().cipher, entry, cfg)
    except SecretUnreadable as exc:
        raise AppError("secret_unreadable", exc.text) from None
    end_read(db)  # nothing held while the provider answers
    report = test_connection(rt().client, entry, cfg.config or {}, secrets, config_id=cfg.id)
    audit.record(
        db,
        audit_ctx(),
        "provider_config.test",
        target=f"provider_config:{cfg.id}",
        outcome="success" if report.ok else "untested" if report.error is None else "failure",
        details={"kind": "oauth", "code": report.error.code if report.error is not None else None},
    )
    db.commit()
    return _setup_page(config_id, report, 200 if report.ok or not report.tested else 422)
