"""Security headers on every response, and session cookie flags."""

from __future__ import annotations

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from werkzeug.wrappers import Response

from app.http.csrf import REFERRER_POLICY, init_csrf
from app.settings import Settings

FRAMEABLE_ENDPOINT_PREFIX = "dialogs."


def content_security_policy(settings: Settings, frameable: bool) -> str:
    ancestors = " ".join(settings.cms_origins) if (frameable and settings.cms_origins) else "'none'"
    form_targets = " ".join(["'self'", *settings.cms_origins])
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "font-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            f"form-action {form_targets}",
            f"frame-ancestors {ancestors}",
        ]
    )


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed session cookie, unchanged, with its serializer built once per set of keys rather than on
    every request (the keys are SECRET_KEY and SECRET_KEY_FALLBACKS, read each time, so a rotation applies)."""

    def __init__(self) -> None:
        self._serializers: dict[tuple[object, ...], URLSafeTimedSerializer] = {}

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            return None
        keys = (*(app.config["SECRET_KEY_FALLBACKS"] or ()), app.secret_key)
        serializer = self._serializers.get(keys)
        if serializer is None:
            serializer = super().get_signing_serializer(app)
            assert serializer is not None
            self._serializers = {keys: serializer}  # only the current keys are worth keeping
        return serializer


def init_security(app: Flask, settings: Settings) -> None:
    app.config.update(
        SESSION_COOKIE_NAME="ami_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.is_https,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SECURE=settings.is_https,
        PREFERRED_URL_SCHEME="https" if settings.is_https else "http",
    )
    app.session_interface = SessionCookies()
    init_csrf(app, settings)

    # The headers depend only on the settings and on whether the page may be framed: built once per app.
    common = [
        ("X-Content-Type-Options", "nosniff"),
        # same-origin, not no-referrer: our own POSTs must carry their Origin for the CSRF check (app/http/csrf.py),
        # and no URL (setup, reset and dialog links hold tokens) may leak to another site.
        ("Referrer-Policy", REFERRER_POLICY),
        ("Cross-Origin-Opener-Policy", "same-origin"),
    ]
    if settings.is_https:
        common.append(("Strict-Transport-Security", "max-age=63072000; includeSubDomains"))
    framed = [("Content-Security-Policy", content_security_policy(settings, True)), *common]
    unframed = [("Content-Security-Policy", content_security_policy(settings, False)), *common]
    unframed.append(("X-Frame-Options", "DENY"))

    @app.after_request
    def _headers(response: Response) -> Response:
        endpoint = request.endpoint or ""
        headers = response.headers
        for name, value in framed if endpoint.startswith(FRAMEABLE_ENDPOINT_PREFIX) else unframed:
            headers[name] = value
        if "Cache-Control" not in headers and (response.mimetype == "text/html" or request.path.startswith("/api/")):
            headers["Cache-Control"] = "no-store"
        return response
