"""Throttling of sign-in attempts and of account mail, on the ``limits`` library.

Everything lives in the app's ``limits`` storage (``app.extensions["ami_limits"]``): memory for a single
process, Redis when ``AMI_AUTH_REDIS_URL`` is set, so every worker and host sees the same counts and locks.

Layers (NIST SP 800-63B 5.2.2 asks verifiers to limit consecutive failed attempts on one account;
OWASP's Authentication Cheat Sheet adds per-client limits so one source cannot spray many accounts):

* **per IP** - every sign-in attempt counts, moving window of one minute (``AMI_AUTH_THROTTLE_IP_PER_MINUTE``).
  IPv6 clients are grouped by /64, the smallest block a home connection is usually given.
* **per account** - after ``AMI_AUTH_THROTTLE_ACCOUNT_FAILURES`` consecutive failures the account is
  locked; every further failure after a lock ends locks it again for twice as long, up to
  ``AMI_AUTH_THROTTLE_LOCK_MAX_SECONDS``. A success (or an admin's unlock) starts over. A locked account
  is not even verified, so a lock also stops the hashing work.
* **per IP x account** - at most :data:`PAIR_FAILURES_PER_HOUR` failures an hour from one IP against one
  account. An admin's unlock does not clear it: unlocking an account for its owner must not reopen it
  to the client that was hammering it.
* **mail sends** - reset / verification mail per recipient and per IP (:func:`check_mail_send`).

Unknown emails are counted exactly like known ones (keys are derived from the normalized email), so a
lock or its absence says nothing about whether an account exists. Keys hold a hash of the email, not
the email itself.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import Storage
from limits.strategies import MovingWindowRateLimiter

from app import audit
from app.errors import AppError
from app.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "FAILURE_MEMORY_SECONDS",
    "MAIL_PER_IP_PER_HOUR",
    "MAIL_PER_RECIPIENT_PER_15_MINUTES",
    "PAIR_FAILURES_PER_HOUR",
    "AccountStatus",
    "Throttled",
    "account_status",
    "check_mail_send",
    "check_signin",
    "describe_wait",
    "ip_bucket",
    "lock_seconds",
    "record_failure",
    "record_success",
    "unlock_account",
]

Layer = Literal["ip", "account", "ip_account", "mail_recipient", "mail_ip"]

# Consecutive failures are forgotten a day after the first one, so a typo now and then never adds up.
FAILURE_MEMORY_SECONDS = 24 * 3600
PAIR_FAILURES_PER_HOUR = 10
MAIL_PER_RECIPIENT_PER_15_MINUTES = 3
MAIL_PER_IP_PER_HOUR = 20

_NS = "ami"
_PAIR = RateLimitItemPerHour(PAIR_FAILURES_PER_HOUR, namespace=f"{_NS}-signin-pair")
_MAIL_RECIPIENT = RateLimitItemPerMinute(MAIL_PER_RECIPIENT_PER_15_MINUTES, 15, namespace=f"{_NS}-mail-to")
_MAIL_IP = RateLimitItemPerHour(MAIL_PER_IP_PER_HOUR, namespace=f"{_NS}-mail-ip")


class Throttled(AppError):
    """A request refused by a throttle: ``rate_limited`` (HTTP 429) with ``Retry-After`` in seconds."""

    def __init__(self, layer: Layer, retry_after: int, message: str) -> None:
        super().__init__(
            "rate_limited", message=message, hint=f"Try again in {describe_wait(retry_after)}.", retry_after=retry_after
        )
        self.layer = layer


@dataclass(frozen=True)
class AccountStatus:
    """What the account layer knows about an email: consecutive failures and the current lock, if any."""

    failures: int
    locked_until: float | None  # a time.time() timestamp

    @property
    def locked(self) -> bool:
        return self.locked_until is not None

    def retry_after(self, now: float | None = None) -> int:
        if self.locked_until is None:
            return 0
        return _seconds_until(self.locked_until, now)


# --- helpers ------------------------------------------------------------------------------------------


def describe_wait(seconds: int) -> str:
    """ "1 minute", "2 minutes", "45 seconds", "1 hour": rounded up, so the user never comes back too early."""
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = math.ceil(minutes / 60)
    return f"{hours} hour{'s' if hours != 1 else ''}"


def _seconds_until(timestamp: float, now: float | None = None) -> int:
    return max(1, math.ceil(timestamp - (now if now is not None else time.time())))


def _account_id(email: str) -> str:
    # Same normalization as app.auth.users.normalize_email; hashed so Redis never holds an address.
    return hashlib.sha256(("account:" + email.strip().lower()).encode()).hexdigest()[:32]


def ip_bucket(ip: str) -> str:
    """The client's bucket: the address itself for IPv4, its /64 for IPv6 (one subscriber's block); the API's
    per-IP limit uses the same rule."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return hashlib.sha256(ip.encode()).hexdigest()[:32]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False).network_address) + "/64"
    return str(address)


def _failures_key(email: str) -> str:
    return f"{_NS}/account-failures/{_account_id(email)}"


def _lock_key(email: str) -> str:
    return f"{_NS}/account-lock/{_account_id(email)}"


def _ip_item(settings: Settings) -> RateLimitItem:
    return RateLimitItemPerMinute(settings.throttle_ip_per_minute, namespace=f"{_NS}-signin-ip")


def _limiter(storage: Storage) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(storage)


def _window_wait(limiter: MovingWindowRateLimiter, item: RateLimitItem, *identifiers: str) -> int:
    stats = limiter.get_window_stats(item, *identifiers)
    return _seconds_until(stats.reset_time)


def lock_seconds(settings: Settings, failures: int) -> int:
    """How long the lock after ``failures`` consecutive failures lasts (0 before the threshold).

    The threshold-th failure locks for ``throttle_lock_seconds``; each one after it doubles that, up to
    ``throttle_lock_max_seconds`` (defaults: 5 failures, 1 minute doubling to 1 hour).
    """
    level = failures - settings.throttle_account_failures
    if level < 0:
        return 0
    # Cap the exponent first: 2**level for a huge failure count would be a pointless big integer.
    doubled = settings.throttle_lock_seconds * 2 ** min(level, 32)
    return int(min(doubled, settings.throttle_lock_max_seconds))


# --- sign-in ------------------------------------------------------------------------------------------


def account_status(storage: Storage, email: str) -> AccountStatus:
    """The account layer's state for an email (for the admin console and for tests)."""
    failures = storage.get(_failures_key(email))
    lock_key = _lock_key(email)
    if storage.get(lock_key) > 0:
        return AccountStatus(failures, storage.get_expiry(lock_key))
    return AccountStatus(failures, None)


def check_signin(storage: Storage, settings: Settings, *, email: str, ip: str) -> None:
    """Call before verifying a password (or a second factor). Raises :class:`Throttled` when refused.

    The attempt is counted against the IP whatever happens next; the account and IP x account layers
    only count failures, in :func:`record_failure`.
    """
    limiter = _limiter(storage)
    ip_item = _ip_item(settings)
    client = ip_bucket(ip)
    if not limiter.hit(ip_item, client):
        raise Throttled(
            "ip",
            _window_wait(limiter, ip_item, client),
            "Too many sign-in attempts from your network.",
        )
    status = account_status(storage, email)
    if status.locked_until is not None:
        raise Throttled("account", status.retry_after(), "Too many failed sign-ins for this account.")
    account = _account_id(email)
    if not limiter.test(_PAIR, client, account):
        raise Throttled(
            "ip_account",
            _window_wait(limiter, _PAIR, client, account),
            "Too many failed sign-ins for this account from your network.",
        )


def record_failure(
    storage: Storage,
    settings: Settings,
    email: str,
    ip: str,
    *,
    db: Session | None = None,
    ctx: audit.AuditContext | None = None,
) -> Throttled | None:
    """Count a failed password or second-factor check. Returns the lock it started, if it started one.

    With ``db`` and ``ctx`` a new lock is recorded in the audit log (``account.locked``); the caller commits.
    """
    failures = storage.incr(_failures_key(email), FAILURE_MEMORY_SECONDS)
    seconds = lock_seconds(settings, failures)
    started: Throttled | None = None
    if seconds:
        lock_key = _lock_key(email)
        # incr only sets the expiry on a fresh key: clear first so the new lock gets its full length.
        storage.clear(lock_key)
        storage.incr(lock_key, seconds)
        started = Throttled("account", seconds, "Too many failed sign-ins for this account.")
        _audit_lock(db, ctx, email, "account", seconds, failures)
    limiter = _limiter(storage)
    client, account = ip_bucket(ip), _account_id(email)
    # Only a failure that fills the window starts a pair lock; later ones are refused before they count.
    if limiter.hit(_PAIR, client, account) and not limiter.test(_PAIR, client, account) and started is None:
        wait = _window_wait(limiter, _PAIR, client, account)
        started = Throttled("ip_account", wait, "Too many failed sign-ins for this account from your network.")
        _audit_lock(db, ctx, email, "ip_account", wait, failures)
    return started


def record_success(storage: Storage, settings: Settings, email: str, ip: str) -> None:
    """A correct password (and second factor): forget this account's failures and this client's."""
    storage.clear(_failures_key(email))
    storage.clear(_lock_key(email))
    _limiter(storage).clear(_PAIR, ip_bucket(ip), _account_id(email))


def unlock_account(
    storage: Storage,
    email: str,
    *,
    db: Session | None = None,
    ctx: audit.AuditContext | None = None,
) -> bool:
    """Clear the account lock and its failure count (an admin's "Unlock"). Returns whether it was locked.

    With ``db`` and ``ctx`` the unlock is recorded in the audit log (``account.unlocked``); the caller commits.
    """
    was_locked = account_status(storage, email).locked
    storage.clear(_failures_key(email))
    storage.clear(_lock_key(email))
    if db is not None and ctx is not None:
        audit.record(
            db,
            ctx,
            "account.unlocked",
            target=f"email:{email.strip().lower()}",
            details={"was_locked": was_locked},
        )
    return was_locked


def _audit_lock(
    db: Session | None, ctx: audit.AuditContext | None, email: str, layer: Layer, seconds: int, failures: int
) -> None:
    if db is None or ctx is None:
        return
    audit.record(
        db,
        ctx,
        "account.locked",
        target=f"email:{email.strip().lower()}",
        outcome="denied",
        details={"layer": layer, "seconds": seconds, "failures": failures},
    )


# --- mail ---------------------------------------------------------------------------------------------


def check_mail_send(storage: Storage, settings: Settings, *, email: str, ip: str, count_ip: bool = True) -> None:
    """Call before sending a reset or verification mail; counts the send or raises :class:`Throttled`.

    Per recipient (3 per 15 minutes) so nobody's inbox can be flooded, and per IP (20 an hour) so one
    client cannot mail many addresses (``count_ip=False`` skips that layer, e.g. for an admin's
    invitations). Call it whether or not the address belongs to an account, so the answer does not
    reveal which addresses exist.
    """
    limiter = _limiter(storage)
    recipient, client = _account_id(email), ip_bucket(ip)
    if not limiter.test(_MAIL_RECIPIENT, recipient):
        raise Throttled(
            "mail_recipient",
            _window_wait(limiter, _MAIL_RECIPIENT, recipient),
            "Too many emails were sent to this address.",
        )
    if count_ip and not limiter.test(_MAIL_IP, client):
        raise Throttled(
            "mail_ip", _window_wait(limiter, _MAIL_IP, client), "Too many emails were requested from your network."
        )
    limiter.hit(_MAIL_RECIPIENT, recipient)
    if count_ip:
        limiter.hit(_MAIL_IP, client)
