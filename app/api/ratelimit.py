"""Rate limits for the JSON API on the shared ``limits`` storage, and the RateLimit headers a caller reads.

``AMI_AUTH_API_RATE_PER_MINUTE`` per token (or per signed-in user), ``AMI_AUTH_API_IP_RATE_PER_MINUTE`` per client
IP for requests without a valid credential. Over a limit: 429 ``rate_limited`` with ``Retry-After``, audited at
most once a minute per bucket. :mod:`app.api.security` calls these while it authenticates a request.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Final

from flask import current_app, g, request
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter
from werkzeug.wrappers import Response

from app import audit
from app.auth.throttle import ip_bucket
from app.errors import AppError
from app.extensions import db_session
from app.http.context import audit_ctx, client_ip
from app.settings import Settings

_NS: Final = "ami-api"
# A refused request is audited at most once a minute per bucket, so a flood cannot flood the audit chain.
_REFUSAL_AUDIT: Final = RateLimitItemPerMinute(1, namespace=f"{_NS}-429-audit")


@dataclass(frozen=True)
class RateState:
    """Where the caller stands against the limit this request was counted under (for the RateLimit headers)."""

    policy: str
    quota: int
    window: int
    remaining: int
    reset: int


def request_details(**extra: object) -> dict[str, object]:
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    return {"method": request.method, "path": rule[:200], **extra}


# When each fixed window this process counts in ends (``time.time()``), per storage and key. A window's key
# expires when the window ends, set by the count that opened it; so a count of 1 opened it here and then, and a
# later count finds the end here, or (the window opened in another process, or an earlier one ended) reads it
# once from the storage.
_window_ends: weakref.WeakKeyDictionary[Storage, dict[str, float]] = weakref.WeakKeyDictionary()
_WINDOW_ENDS_MAX: Final = 10_000
_window_lock = threading.Lock()


def _window_end(storage: Storage, key: str, count: int, expiry: int) -> float:
    now = time.time()
    with _window_lock:
        ends = _window_ends.setdefault(storage, {})
        end = now + expiry if count == 1 else ends.get(key, 0.0)
    if end <= now:
        end = storage.get_expiry(key)
    with _window_lock:
        if key not in ends and len(ends) >= _WINDOW_ENDS_MAX:
            ends.clear()
        ends[key] = end
    return end


def _storage() -> Storage:
    storage: Storage = current_app.extensions["ami_limits"]
    return storage


def principal_item(settings: Settings) -> RateLimitItem:
    return RateLimitItemPerMinute(settings.api_rate_per_minute, namespace=_NS)


def _ip_item(settings: Settings) -> RateLimitItem:
    return RateLimitItemPerMinute(settings.api_ip_rate_per_minute, namespace=f"{_NS}-ip")


def limit_ip(settings: Settings, *, target: str | None = None, ctx: audit.AuditContext | None = None) -> None:
    bucket = ip_bucket(client_ip())
    limit(settings, _ip_item(settings), "ip", bucket, target=target or f"ip:{bucket}", ctx=ctx)


def limit(
    settings: Settings,
    item: RateLimitItem,
    kind: str,
    identifier: str,
    *,
    target: str,
    ctx: audit.AuditContext | None = None,
) -> None:
    """Count one request; over the limit raise 429 with Retry-After (audited once a minute per bucket).

    One round trip to the storage (Redis in production) for the count, as ``FixedWindowRateLimiter.hit`` makes:
    its count is what the RateLimit headers need too, and when the window ends is known in this process
    (:func:`_window_end`), so the library's ``get_window_stats`` (two more round trips, on every API call) is not
    needed."""
    storage, key, window = _storage(), item.key_for(kind, identifier), item.get_expiry()
    count = storage.incr(key, window)  # FixedWindowRateLimiter.hit: allowed while count <= amount
    until_reset = max(1, math.ceil(_window_end(storage, key, count, window) - time.time()))
    g.api_rate = RateState(kind, item.amount, window, max(0, item.amount - count), until_reset)
    if count <= item.amount:
        return
    retry_after = until_reset
    if FixedWindowRateLimiter(storage).hit(_REFUSAL_AUDIT, kind, identifier):
        db = db_session()
        audit.record(
            db,
            ctx or audit_ctx(),
            "api.rate_limited",
            target=target,
            outcome="denied",
            details=request_details(limit=item.amount, per="minute", bucket=kind),
        )
        db.commit()
    raise AppError(
        "rate_limited",
        "Too many API requests.",
        f"Wait {retry_after} second{'s' if retry_after != 1 else ''} and try again.",
        retry_after=retry_after,
    )


def rate_headers(response: Response) -> None:
    """draft-ietf-httpapi-ratelimit-headers-10: the policy this request was counted under and what is left."""
    state = g.get("api_rate")
    if not isinstance(state, RateState):
        return
    response.headers["RateLimit-Policy"] = f'"{state.policy}";q={state.quota};w={state.window}'
    response.headers["RateLimit"] = f'"{state.policy}";r={state.remaining};t={state.reset}'
