"""Telling a user's own devices apart: a short summary of a User-Agent header ("Firefox on Windows") for
session lists, and the random device id a browser keeps in a cookie once it has signed in.

The summary is deliberately small: the goal is recognising one's own devices, not analytics. Order
matters because browsers copy each other's tokens (Edge and Opera say "Chrome", Chrome says "Safari").

The device id only tells the sign-in throttle which browser an attempt comes from (app.auth.throttle
counts a known browser's failures apart from a stranger's); it grants nothing by itself. 32 random bytes,
so it cannot be guessed; the server keeps only a hash of it.
"""

from __future__ import annotations

import re
import secrets

from app.errors import N_

# token_urlsafe(32): 43 characters of the URL-safe base64 alphabet.
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{43}")


def new_device_id() -> str:
    return secrets.token_urlsafe(32)


def valid_device_id(raw: str | None) -> str | None:
    """The cookie's value when it has the shape of a device id (anything else is ignored, not an error)."""
    return raw if raw is not None and _DEVICE_ID.fullmatch(raw) else None


_BROWSERS: tuple[tuple[str, str], ...] = (
    (r"\bEdgA?/", "Edge"),
    (r"\bOPR/|\bOpera\b", "Opera"),
    (r"\bSamsungBrowser/", "Samsung Internet"),
    (r"\bFirefox/|\bFxiOS/", "Firefox"),
    (r"\bHeadlessChrome/", "Headless Chrome"),
    (r"\bChrome/|\bCriOS/|\bChromium/", "Chrome"),
    (r"\bVersion/[\d.]+.*\bSafari/", "Safari"),
    (r"^curl/", "curl"),
    (r"^python-requests/|^python-httpx/|^Python-urllib/", "Python"),
)

_SYSTEMS: tuple[tuple[str, str], ...] = (
    (r"\biPhone\b", "iPhone"),
    (r"\biPad\b", "iPad"),
    (r"\bAndroid\b", "Android"),
    (r"\bCrOS\b", "ChromeOS"),
    (r"\bWindows\b", "Windows"),
    (r"\bMac OS X\b|\bMacintosh\b", "macOS"),
    (r"\bLinux\b|\bX11\b", "Linux"),
)


def device_summary(user_agent: str) -> str:
    """'Chrome on Linux', 'Safari on iPhone', 'curl', or 'Unknown device': English (the audit log records it), marked
    so that a page shows it in its reader's language (:func:`app.errors.translated`)."""
    ua = user_agent.strip()
    if not ua:
        return N_("Unknown device")
    browser = next((name for pattern, name in _BROWSERS if re.search(pattern, ua)), None)
    system = next((name for pattern, name in _SYSTEMS if re.search(pattern, ua)), None)
    if browser and system:
        return N_("%(browser)s on %(system)s", browser=browser, system=system)
    if browser or system:
        return browser or N_("Browser on %(system)s", system=system)
    first = ua.split(" ", 1)[0].split("/", 1)[0]
    return first[:40] or N_("Unknown device")
