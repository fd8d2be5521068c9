"""The browser's device cookie: which browser a sign-in attempt comes from, for the sign-in throttle.

A browser that completes a sign-in gets ``ami_device`` (a random id, app.auth.devices) and becomes known
to that account (app.auth.throttle.remember_source); its failed sign-ins are then counted apart from a
stranger's, so a stranger who locks the account does not lock its owner out of their own browser. The
cookie grants nothing else: a session still needs the password (and second factor) as always.
"""

from __future__ import annotations

from flask import after_this_request, request
from werkzeug.wrappers import Response

from app.auth import devices, throttle
from app.extensions import get_limit_storage, get_settings
from app.http.context import client_ip

DEVICE_COOKIE = "ami_device"


def browser_id() -> str | None:
    """The device id this browser sent, if it sent a well-formed one."""
    return devices.valid_device_id(request.cookies.get(DEVICE_COOKIE))


def remember_browser(email: str, *, network: bool = True) -> None:
    """A sign-in to ``email`` completed in this browser: remember the browser (and, with ``network``, the
    client's network) for that account, and give the browser its device cookie (kept for as long as the
    throttle remembers it, renewed at each sign-in)."""
    raw = browser_id() or devices.new_device_id()
    throttle.remember_source(get_limit_storage(), email, ip=client_ip() if network else None, device=raw)
    secure = get_settings().is_https

    @after_this_request
    def _set_cookie(response: Response) -> Response:
        response.set_cookie(
            DEVICE_COOKIE,
            raw,
            max_age=throttle.KNOWN_DEVICE_DAYS * 86400,
            path="/",
            secure=secure,
            httponly=True,
            samesite="Lax",
        )
        return response
