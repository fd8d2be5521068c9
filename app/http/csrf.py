"""CSRF: one rule for every state-changing request, browser forms and the JSON API alike.

Two checks, both always (OWASP CSRF Prevention Cheat Sheet: a synchronizer token, plus "verifying origin with
standard headers" as defence in depth):

1. **Where the request comes from.** A real ``Origin`` header must be a trusted origin. When the browser sends
   none, or ``Origin: null``, the ``Referer``'s origin must be, if there is a Referer. With neither, an HTTPS
   request is refused (a browser always sends one of them for our own pages, see below); on plain HTTP —
   development only, production refuses an http base URL — the token alone decides.
2. **The token** (Flask-WTF's signed ``csrf_token``, bound to the session): in the form field, or the
   ``X-CSRFToken`` header that htmx and the CMS send.

Trusted: the origin of ``AMI_AUTH_BASE_URL`` and the origin the request was addressed to (Host, with the scheme
a trusted proxy forwarded), plus, for the API only, ``AMI_AUTH_CMS_ORIGINS``. A page on a sibling origin of the
same site (whose requests do carry the ``SameSite=Lax`` session cookie) is refused by the first check even when
it holds a valid token.

Why not Flask-WTF's own HTTPS rule (``WTF_CSRF_SSL_STRICT``): it demands a Referer naming this host, and a
browser sends none when a page's referrer policy says so. Our pages said ``no-referrer``, so in production every
form POST was refused (issue 10). They now send ``Referrer-Policy: same-origin``: same-origin requests carry
their ``Origin`` and ``Referer``, while no URL — with the setup, reset and dialog tokens some of them hold —
leaks to another site. (Under ``no-referrer`` the Fetch standard, "serializing a request origin", makes every
POST's Origin ``null``; under ``same-origin`` only cross-origin ones.)

A refusal is logged on one line — the reason, the method and the route pattern (``/reset/<token>``, never the
path, which may hold a token); never a token, a cookie or a Referer path — so an operator can see why forms fail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from flask import Flask, g, request
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms.validators import ValidationError

from app.settings import Settings

log = logging.getLogger("ami_auth.csrf")

REFERRER_POLICY: Final = "same-origin"
TOKEN_HEADERS: Final = ("X-CSRFToken", "X-CSRF-Token")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# Flask-WTF's messages (flask_wtf/csrf.py, validate_csrf) → our reason codes.
_TOKEN_REASONS: Final = {
    "The CSRF token is missing.": "token_missing",
    "The CSRF session token is missing.": "no_session",
    "The CSRF token has expired.": "token_expired",
}

REASONS: Final = {
    "origin": "the Origin header names an origin that is not trusted",
    "referrer": "the Referer comes from an origin that is not trusted",
    "no_origin": "the browser sent neither Origin nor Referer over HTTPS",
    "token_missing": "no CSRF token in the form or header",
    "token_invalid": "the CSRF token is not this session's",
    "token_expired": "the CSRF token has expired",
    "no_session": "the session holds no CSRF token (no session cookie came back, or no form was loaded in it)",
}


class CsrfRefused(CSRFError):  # type: ignore[misc]
    """The origin check failed (the token check raises Flask-WTF's own :class:`CSRFError`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(REASONS[reason])
        self.reason = reason


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]``, lower-case, default port dropped; ``None`` for anything that is not http(s)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port in (None, _DEFAULT_PORTS[parts.scheme]) else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}".lower()


def trusted_origins(settings: Settings, extra: Iterable[str] = ()) -> frozenset[str]:
    """AMI Auth's own origins (its base URL, and the one this request was addressed to) and ``extra``."""
    candidates = [settings.base_url, request.host_url, *extra]
    return frozenset(o for o in (origin_of(c) for c in candidates) if o is not None)


def origin_refusal(trusted: frozenset[str]) -> str | None:
    """The reason this request's Origin/Referer is not trusted, or ``None`` when it is."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.strip() != "null":
        return None if origin_of(origin) in trusted else "origin"
    referrer = request.headers.get("Referer")
    if referrer:
        return None if origin_of(referrer) in trusted else "referrer"
    return "no_origin" if request.is_secure else None


def token_refusal(raw: str | None) -> str | None:
    """The reason ``raw`` is not this session's CSRF token, or ``None`` when it is."""
    try:
        validate_csrf(raw)
    except ValidationError as exc:
        return _TOKEN_REASONS.get(str(exc.args[0]) if exc.args else "", "token_invalid")
    return None


def header_token() -> str | None:
    return next((request.headers[h] for h in TOKEN_HEADERS if request.headers.get(h)), None)


def log_refusal(reason: str) -> None:
    """One line an operator can act on; nothing in it is secret (route pattern, not path; origins, not URLs)."""
    rule = request.url_rule.rule if request.url_rule is not None else "(no route)"
    origin = request.headers.get("Origin")
    referrer = request.headers.get("Referer")
    log.warning(
        "CSRF check refused %s %s: %s (reason=%s, origin=%s, referer origin=%s)",
        request.method,
        rule[:200],
        REASONS.get(reason, reason),
        reason,
        (origin or "-")[:100],
        (origin_of(referrer) or "?") if referrer else "-",
    )


def refusal_reason(exc: CSRFError) -> str:
    """The reason code of a refused check, whichever check raised it."""
    if isinstance(exc, CsrfRefused):
        return exc.reason
    return _TOKEN_REASONS.get(str(exc.description), "token_invalid")


def init_csrf(app: Flask, settings: Settings) -> None:
    """Flask-WTF checks the token (its hook runs first, honouring ``csrf.exempt``); this adds the origin rule."""
    app.config["WTF_CSRF_SSL_STRICT"] = False  # replaced by origin_refusal, see the module docstring

    @app.before_request
    def _check_origin() -> None:
        # Flask-WTF marks a request whose token it checked and accepted; exempt views and safe methods are not.
        if not g.get("csrf_valid"):
            return
        reason = origin_refusal(trusted_origins(settings))
        if reason is not None:
            raise CsrfRefused(reason)
