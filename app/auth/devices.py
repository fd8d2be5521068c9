"""A short, human summary of a User-Agent header ("Firefox on Windows") for session lists.

Deliberately small: the goal is recognising one's own devices, not analytics. Order matters because
browsers copy each other's tokens (Edge and Opera say "Chrome", Chrome says "Safari").
"""

from __future__ import annotations

import re

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
    """'Chrome on Linux', 'Safari on iPhone', 'curl', or 'Unknown device'."""
    ua = user_agent.strip()
    if not ua:
        return "Unknown device"
    browser = next((name for pattern, name in _BROWSERS if re.search(pattern, ua)), None)
    system = next((name for pattern, name in _SYSTEMS if re.search(pattern, ua)), None)
    if browser and system:
        return f"{browser} on {system}"
    if browser or system:
        return browser or f"Browser on {system}"
    first = ua.split(" ", 1)[0].split("/", 1)[0]
    return first[:40] or "Unknown device"
