"""HTTP blueprints, registered in one explicit list."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask

from app.api import accounts as api_accounts
from app.api import (
    accounts_api,
    auth_api,
    compliance_api,
    idp_clients_api,
    openapi,
    provider_configs_api,
    providers_api,
    proxy_api,
    token_api,
    users_api,
    webhooks_api,
)
from app.api import dialogs as api_dialogs
from app.auth.sessions import load_session
from app.connectors.xoauth2 import eligible_accounts
from app.extensions import db_session, get_settings, login_manager
from app.http.context import SignedIn
from app.web import (
    account,
    accounts_admin,
    admin,
    admin_consent,
    auth,
    branding,
    cms_dialogs,  # noqa: F401 - adds the CMS entry routes to the dialogs blueprint
    compliance,
    connections,
    dialogs,
    home,
    idp,
    idp_clients_admin,
    mail_flows,
    mfa,
    mfa_account,  # noqa: F401 - adds the account's MFA page and the admin policy and reset to the mfa blueprint
    oauth,
    providers_admin,
    signin_code,
    throttle_admin,
    tokens_admin,
    users_admin,
    webhooks_admin,
)

BLUEPRINTS = [
    home.bp,
    branding.bp,
    auth.bp,
    signin_code.bp,
    account.bp,
    admin.bp,
    mail_flows.bp,
    users_admin.bp,
    mfa.bp,
    tokens_admin.bp,
    webhooks_admin.bp,
    compliance.bp,
    providers_admin.bp,
    throttle_admin.bp,
    accounts_admin.bp,
    dialogs.bp,  # with the CMS entry routes of cms_dialogs (imported above, so they exist before registration)
    oauth.bp,
    admin_consent.bp,
    connections.bp,
    idp.bp,  # the OpenID Provider (issue 12)
    idp_clients_admin.bp,
]


def api_blueprints() -> list[Blueprint]:
    """The JSON API's blueprints (registered after BLUEPRINTS)."""
    return [
        auth_api.bp,
        compliance_api.bp,
        providers_api.bp,
        provider_configs_api.bp,
        accounts_api.bp,
        api_accounts.bp,
        api_dialogs.bp,
        proxy_api.bp,
        token_api.bp,
        users_api.bp,
        idp_clients_api.bp,
        webhooks_api.bp,
        openapi.bp,
    ]


# The console's navigation, in order: (endpoint, label).
ADMIN_NAV: list[tuple[str, str]] = [
    ("admin.index", "Overview"),
    ("users_admin.users", "Users"),
    ("providers_admin.index", "Providers"),
    ("accounts_admin.index", "Accounts"),
    ("admin.audit_log", "Audit log"),
    ("mfa.admin_security", "Security"),
    ("users_admin.outbox", "Outbox"),
    ("tokens_admin.index", "Service tokens"),
    ("idp_clients_admin.index", "Apps"),
    ("webhooks_admin.index", "Webhooks"),
    ("compliance.report", "Compliance"),
]


def _reject_keys(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in keys}


def _human(value: Any) -> str:
    """An audit detail as a person reads it: no Python spellings (``None``, ``True``, ``['a']``)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple, set)):
        return ", ".join(_human(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_human(v)}" for k, v in value.items()) if value else "none"
    return str(value)


@login_manager.user_loader  # type: ignore[untyped-decorator]
def _load_user(raw_session_id: str) -> SignedIn | None:
    live = load_session(db_session(), get_settings(), raw_session_id)
    return SignedIn(raw_session_id, live) if live is not None else None


def _field_suggestions(kind: str) -> list[tuple[str, str]]:
    """(value, label) pairs a catalog field with ``suggest: <kind>`` offers in its datalist."""
    if kind == "oauth_accounts":
        return [
            (str(a.id), f"#{a.id} {a.label} · {a.provider_config.name} ({a.status})")
            for a in eligible_accounts(db_session())
        ]
    return []


def register_blueprints(app: Flask) -> None:
    login_manager.login_view = "auth.signin"
    login_manager.session_protection = "basic"
    for blueprint in [*BLUEPRINTS, *api_blueprints()]:
        app.register_blueprint(blueprint)
    # MFA enforcement: sessions that skipped an existing second factor, and roles that require one.
    app.before_request(mfa.enforce)
    idp.init_app(app)
    app.jinja_env.filters["reject_keys"] = _reject_keys
    app.jinja_env.filters["human"] = _human
    app.jinja_env.globals["field_suggestions"] = _field_suggestions  # a global: imported macros call it
    settings = get_settings(app)

    @app.context_processor
    def _ui() -> dict[str, Any]:
        return {"admin_nav": ADMIN_NAV, "config_min_password": settings.password_min_length}
