"""What every answer under /api carries besides its body: the Bearer challenge, CORS, RateLimit and deprecation headers.

CORS: ``Access-Control-Allow-Origin`` only for an exact origin of ``AMI_AUTH_CMS_ORIGINS``, with credentials;
preflights are answered from the route's methods. Every 401 carries ``WWW-Authenticate`` (RFC 9110 section 11.6.1).
:func:`install` runs once per app, from the first API blueprint registered (:func:`app.api.security.api_blueprint`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from datetime import time as day_start
from email.utils import format_datetime
from typing import Final

from flask import current_app, g, request
from flask.blueprints import BlueprintSetupState
from werkzeug.wrappers import Response

from app.api.ratelimit import rate_headers
from app.api.registry import operation_of
from app.settings import Settings

API_PREFIX: Final = "/api"
ALLOWED_REQUEST_HEADERS: Final = "Authorization, Content-Type, Idempotency-Key, X-CSRFToken, X-CSRF-Token"
# What a CMS page may read of an answer besides the CORS-safelisted headers.
EXPOSED_HEADERS: Final = (
    "Retry-After, RateLimit, RateLimit-Policy, Location, Idempotent-Replayed, Deprecation, Sunset, Link, "
    "WWW-Authenticate, X-Request-ID"
)
REALM: Final = "AMI Auth"
PREFLIGHT_MAX_AGE: Final = "600"


def challenge(error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    """An RFC 6750 section 3 challenge. No ``error`` when the request carried no bearer token at all."""
    parts = [f'realm="{REALM}"']
    if error is not None:
        parts.append(f'error="{error}"')
    if description is not None:
        # A quoted-string of %x20-21 / %x23-5B / %x5D-7E (RFC 6750 section 3): no quote or backslash.
        text = "".join(c for c in description if " " <= c <= "~" and c not in '"\\')
        parts.append(f'error_description="{text}"')
    if scope is not None:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


def install(state: BlueprintSetupState) -> None:
    """Install the /api response hook once per app, however many API blueprints are registered."""
    app = state.app
    if app.extensions.get("ami_api_hooks"):
        return
    app.extensions["ami_api_hooks"] = True
    settings: Settings = app.extensions["ami_settings"]
    allowed = frozenset(settings.cms_origins)

    @app.after_request
    def _api_headers(response: Response) -> Response:
        if not request.path.startswith(API_PREFIX + "/"):
            return response
        rate_headers(response)
        if response.status_code == 401 and "WWW-Authenticate" not in response.headers:
            # RFC 9110 section 11.6.1: every 401 carries a challenge.
            response.headers["WWW-Authenticate"] = g.get("api_challenge") or challenge()
        elif response.status_code == 403 and g.get("api_challenge"):
            response.headers["WWW-Authenticate"] = g.api_challenge
        _deprecation_headers(response)
        return _cors(response)

    def _cors(response: Response) -> Response:
        # The answer depends on Origin, so caches must key on it (Fetch standard, CORS protocol).
        if "Vary" in response.headers:
            response.vary.add("Origin")
        else:  # the usual case, without parsing and re-serialising the header
            response.headers["Vary"] = "Origin"
        origin = request.headers.get("Origin")
        if origin is None or origin not in allowed:
            return response
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            methods = sorted(response.allow - {"HEAD"}) if response.allow else ["GET"]
            response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_REQUEST_HEADERS
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response


def _deprecation_headers(response: Response) -> None:
    """A deprecated operation says so on every answer (docs/api.md, "Versioning and deprecation")."""
    rule = request.url_rule
    view = current_app.view_functions.get(rule.endpoint) if rule is not None else None
    doc = operation_of(view)
    if doc is None or doc.deprecation is None:
        return
    info = doc.deprecation
    since = datetime.combine(info.since, day_start(0), tzinfo=UTC)
    sunset = datetime.combine(info.sunset, day_start(0), tzinfo=UTC)
    response.headers["Deprecation"] = f"@{int(since.timestamp())}"  # RFC 9745: a structured-field date
    response.headers["Sunset"] = format_datetime(sunset, usegmt=True)  # RFC 8594: an HTTP-date
    response.headers["Link"] = f'<{info.successor}>; rel="successor-version"'
