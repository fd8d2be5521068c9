"""Throttling of sign-in attempts and of account mail, on the ``limits`` library.

Everything lives in the app's ``limits`` storage (``app.extensions["ami_limits"]``): memory for a single
process, Redis when ``AMI_AUTH_REDIS_URL`` is set, so every worker and host sees the same counts and locks.

Layers (NIST SP 800-63B 5.2.2 asks verifiers to limit consecutive failed attempts on one account;
OWASP's Authentication Cheat Sheet adds per-client limits so one source cannot spray many accounts):

* **per IP** - every sign-in attempt counts, moving window of one minute (``AMI_AUTH_THROTTLE_IP_PER_MINUTE``).
  IPv6 clients are grouped by /64, the smallest block a home connection is usually given.
* **per account, per source** (smart lockout, the idea of Entra ID's) - failures are counted apart by
  where they come from: each *known browser* of the account (a device cookie that completed a sign-in
  to it), each *known network* (an IP bucket a sign-in to it succeeded from), and everything else
  together (*unfamiliar*). After ``AMI_AUTH_THROTTLE_ACCOUNT_FAILURES`` consecutive failures from one
  source that source is locked; every further failure after a lock ends locks it again for twice as long,
  up to ``AMI_AUTH_THROTTLE_LOCK_MAX_SECONDS``. A stranger can therefore lock the unfamiliar source only:
  the owner's own browser (and network) keep their own count. A completed sign-in forgets the failures
  of the source it came through (never another source's); an admin's unlock or the owner's unlock link
  forgets them all. A locked source is not even verified, so a lock also stops the hashing work.
* **per IP x account** - at most :data:`PAIR_FAILURES_PER_HOUR` failures an hour from one IP against one
  account (known browsers excepted: they have their own count). An unlock does not clear it: unlocking
  an account for its owner must not reopen it to the client that was hammering it.
* **mail sends** - reset / verification / unlock mail per recipient and per IP (:func:`check_mail_send`).

A browser or network becomes *known* to an account when a sign-in to it completes by any method
(:func:`remember_source`), and stays known for :data:`KNOWN_DEVICE_DAYS` / :data:`KNOWN_NETWORK_DAYS`
after the last one. Only a sign-in can make a source known, so a stranger cannot get into a count that
is not the unfamiliar one without the owner's browser (its cookie) or the owner's network.

Unknown emails are counted exactly like known ones (keys are derived from the normalized email), so a
lock or its absence says nothing about whether an account exists; an unknown email only ever has the
unfamiliar source. Keys hold a hash of the email (and of the device cookie), not the values themselves.
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
from app.errors import N_, AppError
from app.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "FAILURE_MEMORY_SECONDS",
    "KNOWN_DEVICE_DAYS",
    "KNOWN_NETWORK_DAYS",
    "MAIL_PER_IP_PER_HOUR",
    "MAIL_PER_RECIPIENT_PER_15_MINUTES",
    "PAIR_FAILURES_PER_HOUR",
    "AccountStatus",
    "Source",
    "Throttled",
    "account_status",
    "check_mail_send",
    "check_signin",
    "describe_wait",
    "ip_bucket",
    "lock_seconds",
    "record_failure",
    "record_success",
    "remember_source",
    "source_of",
    "unlock_account",
]

Layer = Literal["ip", "account", "ip_account", "mail_recipient", "mail_ip"]
# Where failed sign-ins come from, each counted on its own (see the module docstring).
Source = Literal["known_device", "known_network", "unfamiliar"]
UnlockedBy = Literal["admin", "link"]

# Consecutive failures are forgotten a day after the first one, so a typo now and then never adds up.
FAILURE_MEMORY_SECONDS = 24 * 3600
PAIR_FAILURES_PER_HOUR = 10
MAIL_PER_RECIPIENT_PER_15_MINUTES = 3
MAIL_PER_IP_PER_HOUR = 20
# How long a browser / network stays known to an account after its last completed sign-in. A network is
# forgotten sooner: addresses change hands, a browser's cookie does not.
KNOWN_DEVICE_DAYS = 90
KNOWN_NETWORK_DAYS = 30
# An unlock moves an account's known-source counts to a new generation (they cannot be listed to be
# cleared one by one); the generation outlives every count it orphans (failures 24 h, locks <= 7 days).
_GENERATION_SECONDS = 8 * 24 * 3600

_NS = "ami"
_PAIR = RateLimitItemPerHour(PAIR_FAILURES_PER_HOUR, namespace=f"{_NS}-signin-pair")
_MAIL_RECIPIENT = RateLimitItemPerMinute(MAIL_PER_RECIPIENT_PER_15_MINUTES, 15, namespace=f"{_NS}-mail-to")
_MAIL_IP = RateLimitItemPerHour(MAIL_PER_IP_PER_HOUR, namespace=f"{_NS}-mail-ip")

ACCOUNT_LOCKED = N_("Too many failed sign-ins for this account.")


class Throttled(AppError):
    """A request refused by a throttle: ``rate_limited`` (HTTP 429) with ``Retry-After`` in seconds.

    ``source`` says which count an account lock is on (``None`` for the other layers).
    """

    def __init__(self, layer: Layer, retry_after: int, message: str, source: Source | None = None) -> None:
        super().__init__(
            "rate_limited",
            message=message,
            hint=N_("Try again in %(wait)s.", wait=describe_wait(retry_after)),
            retry_after=retry_after,
        )
        self.layer = layer
        self.source = source


@dataclass(frozen=True)
class AccountStatus:
    """What the account layer knows about an email's unfamiliar source (the one a stranger can lock):
    consecutive failures and the current lock, if any."""

    failures: int
    locked_until: float | None  # a time.time() timestamp

    @property
    def locked(self) -> bool:
        return self.locked_until is not None

    def retry_after(self, now: float | None = None) -> int:
        if self.locked_until is None:
            return 0
        return _seconds_until(self.locked_until, now)


@dataclass(frozen=True)
class _Count:
    """One source's failure count and lock for one account."""

    source: Source
    failures_key: str
    lock_key: str


# --- helpers ------------------------------------------------------------------------------------------


def describe_wait(seconds: int) -> str:
    """ "1 minute", "2 minutes", "45 seconds", "1 hour": rounded up, so the user never comes back too early."""
    if seconds < 60:
        return N_("%(num)s second", num=seconds) if seconds == 1 else N_("%(num)s seconds", num=seconds)
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return N_("%(num)s minute", num=minutes) if minutes == 1 else N_("%(num)s minutes", num=minutes)
    hours = math.ceil(minutes / 60)
    return N_("%(num)s hour", num=hours) if hours == 1 else N_("%(num)s hours", num=hours)


def _seconds_until(timestamp: float, now: float | None = None) -> int:
    return max(1, math.ceil(timestamp - (now if now is not None else time.time())))


def _hash(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()[:32]


def _account_id(email: str) -> str:
    # Same normalization as app.auth.users.normalize_email; hashed so Redis never holds an address.
    return _hash("account", email.strip().lower())


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


def _known_device_key(account: str, device: str) -> str:
    return f"{_NS}/known-device/{account}/{_hash('device', device)}"


def _known_network_key(account: str, bucket: str) -> str:
    return f"{_NS}/known-network/{account}/{bucket}"


def _generation_key(account: str) -> str:
    return f"{_NS}/account-generation/{account}"


def _count(storage: Storage, email: str, ip: str, device: str | None) -> _Count:
    """The count a sign-in attempt from this browser and address falls in: a known browser first, then a
    known network, else the unfamiliar one (the keys the throttle has always used for the account)."""
    account = _account_id(email)
    known: tuple[Source, str] | None = None
    if device and storage.get(_known_device_key(account, device)) > 0:
        known = ("known_device", "device/" + _hash("device", device))
    elif ip and storage.get(_known_network_key(account, ip_bucket(ip))) > 0:
        known = ("known_network", "network/" + ip_bucket(ip))
    if known is None:
        return _Count("unfamiliar", _failures_key(email), _lock_key(email))
    source, suffix = known
    generation = storage.get(_generation_key(account))
    return _Count(
        source,
        f"{_NS}/account-failures/{account}/{generation}/{suffix}",
        f"{_NS}/account-lock/{account}/{generation}/{suffix}",
    )


def _ip_item(settings: Settings) -> RateLimitItem:
    return RateLimitItemPerMinute(settings.throttle_ip_per_minute, namespace=f"{_NS}-signin-ip")


def _limiter(storage: Storage) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(storage)


def _window_wait(limiter: MovingWindowRateLimiter, item: RateLimitItem, *identifiers: str) -> int:
    stats = limiter.get_window_stats(item, *identifiers)
    return _seconds_until(stats.reset_time)


def _set_for(storage: Storage, key: str, seconds: int) -> None:
    # incr only sets the expiry on a fresh key: clear first so the value gets its full length.
    storage.clear(key)
    storage.incr(key, seconds)


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
    """The unfamiliar source's state for an email (for the admin console and for tests)."""
    failures = storage.get(_failures_key(email))
    lock_key = _lock_key(email)
    if storage.get(lock_key) > 0:
        return AccountStatus(failures, storage.get_expiry(lock_key))
    return AccountStatus(failures, None)


def source_of(storage: Storage, email: str, ip: str, device: str | None = None) -> Source:
    """Which count a sign-in to ``email`` from this address (and device cookie) would fall in."""
    return _count(storage, email, ip, device).source


def check_signin(storage: Storage, settings: Settings, *, email: str, ip: str, device: str | None = None) -> None:
    """Call before verifying a password (or a second factor). Raises :class:`Throttled` when refused.

    ``device`` is the browser's device cookie, if it sent one. The attempt is counted against the IP
    whatever happens next; the account and IP x account layers only count failures, in
    :func:`record_failure`.
    """
    limiter = _limiter(storage)
    ip_item = _ip_item(settings)
    client = ip_bucket(ip)
    if not limiter.hit(ip_item, client):
        raise Throttled(
            "ip",
            _window_wait(limiter, ip_item, client),
            N_("Too many sign-in attempts from your network."),
        )
    count = _count(storage, email, ip, device)
    if storage.get(count.lock_key) > 0:
        wait = _seconds_until(storage.get_expiry(count.lock_key))
        raise Throttled("account", wait, ACCOUNT_LOCKED, count.source)
    account = _account_id(email)
    if count.source != "known_device" and not limiter.test(_PAIR, client, account):
        raise Throttled(
            "ip_account",
            _window_wait(limiter, _PAIR, client, account),
            N_("Too many failed sign-ins for this account from your network."),
            count.source,
        )


def record_failure(
    storage: Storage,
    settings: Settings,
    email: str,
    ip: str,
    *,
    device: str | None = None,
    db: Session | None = None,
    ctx: audit.AuditContext | None = None,
) -> Throttled | None:
    """Count a failed password or second-factor check. Returns the lock it started, if it started one.

    With ``db`` and ``ctx`` a new lock is recorded in the audit log (``account.locked``, naming the source
    it is on); the caller commits.
    """
    count = _count(storage, email, ip, device)
    failures = storage.incr(count.failures_key, FAILURE_MEMORY_SECONDS)
    seconds = lock_seconds(settings, failures)
    started: Throttled | None = None
    if seconds:
        _set_for(storage, count.lock_key, seconds)
        started = Throttled("account", seconds, ACCOUNT_LOCKED, count.source)
        _audit_lock(db, ctx, email, "account", count.source, seconds, failures)
    if count.source == "known_device":
        return started  # the browser's own count is the bound; the pair window is for everyone else
    limiter = _limiter(storage)
    client, account = ip_bucket(ip), _account_id(email)
    # Only a failure that fills the window starts a pair lock; later ones are refused before they count.
    if limiter.hit(_PAIR, client, account) and not limiter.test(_PAIR, client, account) and started is None:
        wait = _window_wait(limiter, _PAIR, client, account)
        started = Throttled(
            "ip_account", wait, N_("Too many failed sign-ins for this account from your network."), count.source
        )
        _audit_lock(db, ctx, email, "ip_account", count.source, wait, failures)
    return started


def record_success(storage: Storage, settings: Settings, email: str, ip: str, *, device: str | None = None) -> None:
    """A correct password (and second factor): forget the failures of the source the sign-in came through
    and this client's pair window. Other sources keep theirs, so the owner signing in from their own browser
    does not hand a stranger a fresh set of guesses."""
    count = _count(storage, email, ip, device)
    storage.clear(count.failures_key)
    storage.clear(count.lock_key)
    _limiter(storage).clear(_PAIR, ip_bucket(ip), _account_id(email))


def remember_source(storage: Storage, email: str, *, ip: str | None, device: str | None) -> None:
    """A sign-in to ``email`` completed (any method) from this browser and network: both are known to the
    account from now on, for :data:`KNOWN_DEVICE_DAYS` / :data:`KNOWN_NETWORK_DAYS` after the last time.
    ``ip=None`` remembers the browser only (the unlock link proves the mailbox, not the network)."""
    account = _account_id(email)
    if device:
        _set_for(storage, _known_device_key(account, device), KNOWN_DEVICE_DAYS * 86400)
    if ip:
        _set_for(storage, _known_network_key(account, ip_bucket(ip)), KNOWN_NETWORK_DAYS * 86400)


def unlock_account(
    storage: Storage,
    email: str,
    *,
    by: UnlockedBy = "admin",
    db: Session | None = None,
    ctx: audit.AuditContext | None = None,
) -> bool:
    """Clear every source's lock and failure count of an account (an admin's "Unlock", or the owner's unlock
    link). Returns whether the unfamiliar source was locked. The IP x account windows stay.

    With ``db`` and ``ctx`` the unlock is recorded in the audit log (``account.unlocked``); the caller commits.
    """
    was_locked = account_status(storage, email).locked
    storage.clear(_failures_key(email))
    storage.clear(_lock_key(email))
    # The known sources' counts cannot be listed: move the account to a new generation of them instead.
    generation_key = _generation_key(_account_id(email))
    generation = storage.get(generation_key)
    storage.clear(generation_key)
    storage.incr(generation_key, _GENERATION_SECONDS, amount=generation + 1)
    if db is not None and ctx is not None:
        audit.record(
            db,
            ctx,
            "account.unlocked",
            target=f"email:{email.strip().lower()}",
            details={"was_locked": was_locked, "by": by},
        )
    return was_locked


def _audit_lock(
    db: Session | None,
    ctx: audit.AuditContext | None,
    email: str,
    layer: Layer,
    source: Source,
    seconds: int,
    failures: int,
) -> None:
    if db is None or ctx is None:
        return
    audit.record(
        db,
        ctx,
        "account.locked",
        target=f"email:{email.strip().lower()}",
        outcome="denied",
        details={"layer": layer, "source": source, "seconds": seconds, "failures": failures},
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
            N_("Too many emails were sent to this address."),
        )
    if count_ip and not limiter.test(_MAIL_IP, client):
        raise Throttled(
            "mail_ip", _window_wait(limiter, _MAIL_IP, client), N_("Too many emails were requested from your network.")
        )
    limiter.hit(_MAIL_RECIPIENT, recipient)
    if count_ip:
        limiter.hit(_MAIL_IP, client)
