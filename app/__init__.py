"""AMI Auth: the app factory."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from app.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app. Raises SettingsError (naming the variable) when the configuration is unusable."""
    if settings is None:
        from dotenv import load_dotenv

        load_dotenv()
        settings = load_settings()

    # The composition root imports every layer, and only when an app is built: every `import app.…` (a model,
    # the settings, a migration) runs this module first, and must not load the faces with it.
    from app.extensions import csrf, init_database, login_manager, make_limit_storage
    from app.logs import configure_logging
    from app.providers.registry import init_providers
    from app.web import register_blueprints
    from app.web.errors import register_error_handlers
    from app.web.input_guard import init_input_guard
    from app.web.observability import init_observability
    from app.web.security import init_security

    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=1024 * 1024,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session; the session has its own expiry
        TEMPLATES_AUTO_RELOAD=settings.env == "development",
    )
    app.extensions["ami_settings"] = settings
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # The client address (throttles, audit) and scheme from that many proxies' X-Forwarded-* headers.
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    configure_logging(settings.log_level)  # one JSON object per line (app.logs)
    init_providers(app)
    init_database(app, settings)
    app.extensions["ami_limits"] = make_limit_storage(settings)
    from app.auth.passwords import warm_up

    warm_up(settings)  # the dummy hash for unknown emails, so the first such sign-in costs what the rest do
    init_observability(app, settings)  # first: the request id exists before any other hook logs (app.web.observability)
    csrf.init_app(app)
    init_input_guard(app)  # after CSRF (a refused form still had to come from this site), before any route
    login_manager.init_app(app)
    from app.i18n import init_i18n

    init_i18n(app)  # the locale per request: the user's language, else Accept-Language (app.i18n)
    init_security(app, settings)
    register_blueprints(app)
    register_error_handlers(app)
    from app.connectors.wiring import register as register_connectors

    register_connectors(app)  # SMTP XOAUTH2 with a connected OAuth account's token; the OAuth code's owner mail

    from app.cli import register_commands

    register_commands(app)
    return app
