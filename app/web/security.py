"""Security headers on every response, and session cookie flags."""

from __future__ import annotations

from flask import Flask, request
from werkzeug.wrappers import Response

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

    @app.after_request
    def _headers(response: Response) -> Response:
        endpoint = request.endpoint or ""
        frameable = endpoint.startswith(FRAMEABLE_ENDPOINT_PREFIX)
        response.headers["Content-Security-Policy"] = content_security_policy(settings, frameable)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if not frameable:
            response.headers["X-Frame-Options"] = "DENY"
        if settings.is_https:
            response.headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
        if response.mimetype == "text/html" or request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response
