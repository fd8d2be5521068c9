"""Throttling client authentication at the token, introspection and revocation endpoints.

Failed client authentications (a wrong secret, a bad private_key_jwt assertion) are counted per claimed client id and
network (the caller's IP bucket), and per network across all clients: past the limit, those endpoints answer 429 with
``Retry-After`` before checking anything, so a secret cannot be guessed at speed. Counting per client *and network*
keeps a stranger from locking the real app out by failing with its client id. The counters live in the app's
``limits`` storage (Redis in production, shared by every worker).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote

from limits import RateLimitItemPerMinute
from limits.storage import Storage
from limits.strategies import MovingWindowRateLimiter
from werkzeug.wrappers import Response

FAILURES_PER_CLIENT_NETWORK: Final = 10
FAILURES_PER_NETWORK: Final = 30
_NS: Final = "ami-oidc-client-auth"
_PAIR: Final = RateLimitItemPerMinute(FAILURES_PER_CLIENT_NETWORK, namespace=f"{_NS}-pair")
_NETWORK: Final = RateLimitItemPerMinute(FAILURES_PER_NETWORK, namespace=f"{_NS}-net")


def claimed_client_id(authorization: str | None, form: Mapping[str, str]) -> str:
    """The client id a request claims (RFC 6749 §2.3.1 Basic, or the form's ``client_id``), hashed for use as a key."""
    claimed = form.get("client_id") or ""
    if authorization and authorization[:6].lower() == "basic ":
        try:
            claimed = unquote(base64.b64decode(authorization[6:].strip()).decode().split(":", 1)[0])
        except (binascii.Error, UnicodeDecodeError, ValueError):
            claimed = ""
    return hashlib.sha256(claimed[:200].encode()).hexdigest()[:32]


def wait_seconds(storage: Storage, client_key: str, network: str) -> int:
    """0 when the caller may try; otherwise how long until it may (the older failures leave the window)."""
    limiter = MovingWindowRateLimiter(storage)
    waits = []
    for item, ids in ((_PAIR, (client_key, network)), (_NETWORK, (network,))):
        if not limiter.test(item, *ids):
            reset = limiter.get_window_stats(item, *ids).reset_time
            waits.append(max(1, math.ceil(reset - time.time())))
    return max(waits, default=0)


def record_failure(storage: Storage, client_key: str, network: str) -> None:
    limiter = MovingWindowRateLimiter(storage)
    limiter.hit(_PAIR, client_key, network)
    limiter.hit(_NETWORK, network)


def refusal(wait: int) -> Response:
    """429 in the endpoints' RFC 6749 §5.2 error shape, with Retry-After."""
    body = {"error": "invalid_client", "error_description": f"Too many failed attempts: retry in {wait} s."}
    headers = {"Retry-After": str(wait), "Cache-Control": "no-store"}
    return Response(json.dumps(body), status=429, headers=headers, mimetype="application/json")
