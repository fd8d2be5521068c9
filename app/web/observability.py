"""Every request's id, log line and metrics, and ``GET /metrics``.

**Request id.** Taken from ``X-Request-ID`` only when the app sits behind a proxy it trusts
(``AMI_AUTH_TRUSTED_PROXIES`` ≥ 1) — the proxy sets it (nginx: ``proxy_set_header X-Request-ID $request_id``)
and overwrites a client's, exactly as with ``X-Forwarded-For`` — and only when it looks like an id (letters,
digits, ``.-_:``, at most 128). Otherwise, a client could write what it likes into our logs, so the app makes a
new one. Either way it is on the request's log lines, in the ``X-Request-ID`` response header, and the
reference an error page shows, so a user's report, the proxy's log and ours meet on one value.

**Request line and metrics.** After the response is ready (this hook runs after every other, so ``status`` and
``duration`` are final): one log line (``ami_auth.request``) and the request counted in
``ami_auth_http_requests_total`` / ``ami_auth_http_request_duration_seconds``, by route *template* — never
the URL, which can hold a token (``/reset/<token>``). Health probes and scrapes log at DEBUG.

**/metrics** (Prometheus text format, ``app.metrics.exposition``) answers only a caller that shows
``Authorization: Bearer <AMI_AUTH_METRICS_TOKEN>`` (compared in constant time) or whose address (after
``AMI_AUTH_TRUSTED_PROXIES``) is in ``AMI_AUTH_METRICS_ALLOW``. Anyone else gets **404**, the answer for a path
that does not exist: a scanner learns neither that metrics are there nor that a token would open them (a 401
or 403 says both). An operator whose scraper gets 404 finds the reason in the log (``metrics refused: …``).
With neither setting, /metrics is 404 for everyone.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import random
import re
import time
from typing import Final, get_args

from flask import Blueprint, Flask, abort, g, request
from werkzeug.wrappers import Response

from app import audit, metrics
from app.auth.throttle import Layer
from app.extensions import get_settings
from app.faults import Service
from app.http.context import SignedIn
from app.models.credentials import CredentialKind
from app.oauth.renewal import Outcome
from app.providers.registry import get_catalog
from app.settings import Settings

log = logging.getLogger("ami_auth.request")
refusals = logging.getLogger("ami_auth.metrics")

bp = Blueprint("observability", __name__)

HEADER: Final = "X-Request-ID"
_WELL_FORMED: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_QUIET: Final = frozenset({"web.healthz", "web.readyz", "observability.scrape"})
UNMATCHED: Final = "unmatched"


def request_id() -> str | None:
    """The current request's id (None outside a request)."""
    value = g.get("request_id")
    return value if isinstance(value, str) else None


def _incoming_id(settings: Settings) -> str:
    if settings.trusted_proxies:
        offered = request.headers.get(HEADER, "")
        if _WELL_FORMED.fullmatch(offered):
            return offered
    # Not a secret, only unique: 128 bits of the process's PRNG (seeded from os.urandom, and again in every forked
    # worker), which spares each request a getrandom call (it lets go of the GIL, and a busy worker's threads
    # then wait to take it back).
    return f"{random.getrandbits(128):032x}"


def _who() -> dict[str, int]:
    """The signed-in user's id, or the service token's, if this request already knew it (never a lookup of
    its own: a fault in a log line must not become a fault of the request)."""
    who = g.get("_login_user")
    try:
        if isinstance(who, SignedIn):
            return {"user_id": who.id}
    except Exception:  # the session's row could not be read: the request has already dealt with that
        return {}
    token = getattr(g.get("api_principal"), "token", None)
    token_id = getattr(token, "id", None)
    return {"token_id": token_id} if isinstance(token_id, int) else {}


def init_observability(app: Flask, settings: Settings) -> None:
    """Register first: the id exists before any other hook logs, and the line is written after all of them."""

    @app.before_request
    def _begin() -> None:
        g.request_started = time.perf_counter()
        g.request_id = _incoming_id(settings)

    @app.after_request
    def _end(response: Response) -> Response:
        rid = request_id()
        if rid is not None:
            response.headers[HEADER] = rid
        started = g.get("request_started")
        duration = time.perf_counter() - started if isinstance(started, float) else 0.0
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        method = request.method if request.method in _METHODS else "other"
        metrics.HTTP_REQUESTS.labels(route=route, method=method, status=str(response.status_code)).inc()
        metrics.HTTP_REQUEST_DURATION.labels(route=route, method=method).observe(duration)
        if response.status_code >= 500:
            level = logging.WARNING
        elif request.endpoint in _QUIET:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s %s %s",
                method,
                route,
                response.status_code,
                extra={
                    "method": method,
                    "route": route,
                    "status": response.status_code,
                    "duration_ms": round(duration * 1000, 1),
                    **_who(),
                },
            )
        return response

    app.register_blueprint(bp)
    _preset_series(app)


def _preset_series(app: Flask) -> None:
    """The label values known in advance start at 0 (metrics.preset): a quiet deployment still shows its
    lockouts, faults and refreshes as 0 rather than as missing. Refreshable provider types come from the
    catalog (its capabilities), not from a list of ids."""
    metrics.preset(metrics.FAULTS, service=get_args(Service))
    metrics.preset(metrics.LOCKOUTS, layer=get_args(Layer))
    metrics.preset(metrics.MFA_FAILURES, method=get_args(CredentialKind))
    with app.app_context():
        refreshable = sorted(e.id for e in get_catalog() if e.capabilities.refresh != "none")
    metrics.preset(metrics.TOKEN_REFRESHES, provider_type=refreshable, outcome=get_args(Outcome))
    metrics.preset(metrics.MAIL_SENDS, transport=("smtp", "outbox"), outcome=("sent",))
    metrics.preset(metrics.WEBHOOK_DELIVERIES, outcome=("delivered", "retrying", "failed"))
    metrics.preset(metrics.OIDC_GRANTS, grant_type=("authorization_code", "refresh_token", "client_credentials"))
    metrics.preset(metrics.PROXY_CALLS, status=("2xx", "3xx", "4xx", "5xx", "none"), outcome=sorted(audit.OUTCOMES))


def _metrics_allowed(settings: Settings) -> str | None:
    """None when the caller may read /metrics, else why not (for the log)."""
    reasons = []
    if settings.metrics_token is not None:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and presented:
            if hmac.compare_digest(presented.strip().encode(), settings.metrics_token.encode()):
                return None
            reasons.append("wrong token")
        else:
            reasons.append("no token")
    if settings.metrics_allow:
        try:
            address = ipaddress.ip_address(request.remote_addr or "")
        except ValueError:
            address = None
        if address is not None and any(address in network for network in settings.metrics_allow):
            return None
        reasons.append("address not in AMI_AUTH_METRICS_ALLOW")
    return ", ".join(reasons) or "neither AMI_AUTH_METRICS_TOKEN nor AMI_AUTH_METRICS_ALLOW is set"


@bp.get("/metrics")
def scrape() -> Response:
    """Prometheus text format, summed over every worker of this gunicorn (see app.metrics)."""
    refused = _metrics_allowed(get_settings())
    if refused is not None:
        refusals.info("metrics refused: %s (from %s)", refused, request.remote_addr)
        abort(404)
    response = Response(metrics.exposition(), content_type=metrics.CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    return response
