"""HTTP blueprints, registered in one explicit list."""

from __future__ import annotations

from typing import Any

from flask import Flask

from app import api
from app.extensions import db_session, get_settings, login_manager
from app.web import account, admin, auth, connections, home, oauth, providers_admin
from app.web.common import SignedIn

BLUEPRINTS = [home.bp, auth.bp, account.bp, admin.bp, providers_admin.bp, api.bp, oauth.bp, connections.bp]

# The console's navigation, in order: (endpoint, label).
ADMIN_NAV: list[tuple[str, str]] = [
    ("admin.index", "Overview"),
    ("providers_admin.index", "Providers"),
    ("admin.audit_log", "Audit log"),
]


def _reject_keys(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in keys}


@login_manager.user_loader  # type: ignore[untyped-decorator]
def _load_user(raw_session_id: str) -> SignedIn | None:
    from app.auth.sessions import load_session

    record = load_session(db_session(), get_settings(), raw_session_id)
    return SignedIn(raw_session_id, record) if record is not None else None


def register_blueprints(app: Flask) -> None:
    login_manager.login_view = "auth.signin"
    login_manager.session_protection = "basic"
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.jinja_env.filters["reject_keys"] = _reject_keys
    settings = get_settings(app)

    @app.context_processor
    def _ui() -> dict[str, Any]:
        return {"admin_nav": ADMIN_NAV, "config_min_password": settings.password_min_length}
