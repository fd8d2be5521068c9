"""Password hashing with argon2id (argon2-cffi) and the password policy (NIST SP 800-63B 5.1.1.2).

Hashing: argon2id with the parameters from settings (default m=19 MiB, t=2, p=1, the OWASP Password
Storage Cheat Sheet's first recommendation). Hashes made with other parameters still verify and are
replaced at the next successful sign-in (:func:`app.auth.users.check_password`).

Policy: length bounds, no composition rules, not one of the 10,000 most common passwords, not containing
the email's local part, and (when ``AMI_AUTH_PWNED_RANGE_URL`` is set) not in a breach corpus, asked
through a k-anonymity range API so the password never leaves the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.errors import N_, AppError
from app.net import OutboundClient
from app.settings import Settings

log = logging.getLogger("ami_auth.passwords")

MAX_PASSWORD_LENGTH = 256
COMMON_PASSWORDS_FILE = Path(__file__).resolve().parent.parent / "data" / "common-passwords.txt"
# The HIBP range API answers within tens of milliseconds; a sign-in should not wait long for a slow one.
BREACH_CHECK_TIMEOUT = 5.0


@lru_cache(maxsize=8)
def _hasher(memory_kib: int, time_cost: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(memory_cost=memory_kib, time_cost=time_cost, parallelism=parallelism)


def hasher(settings: Settings) -> PasswordHasher:
    return _hasher(settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism)


@lru_cache(maxsize=8)
def _dummy_hash(memory_kib: int, time_cost: int, parallelism: int) -> str:
    return _hasher(memory_kib, time_cost, parallelism).hash("not-a-real-password-only-for-timing")


def warm_up(settings: Settings) -> None:
    """Compute the dummy hash now, so the first sign-in with an unknown email is not slower than the rest."""
    _dummy_hash(settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism)


def hash_password(settings: Settings, password: str) -> str:
    return hasher(settings).hash(password)


def verify_password(settings: Settings, stored_hash: str | None, password: str) -> bool:
    """Constant-work verify: with no stored hash, verify against a dummy so timing does not reveal who exists.

    The dummy is made with the current parameters, so it costs what a real, up-to-date hash costs.
    """
    ph = hasher(settings)
    if stored_hash is None:
        with contextlib.suppress(VerificationError):
            ph.verify(
                _dummy_hash(settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism),
                password,
            )
        return False
    try:
        return ph.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(settings: Settings, stored_hash: str) -> bool:
    try:
        return hasher(settings).check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True


# --- the policy ----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The shipped list, lowercased (it is stored lowercased; lowering again costs nothing and is safe)."""
    with COMMON_PASSWORDS_FILE.open(encoding="utf-8") as fh:
        # "# " marks a comment; a bare "#" can start a real entry ("#1bitch" is on the list).
        return frozenset(line.rstrip("\n").lower() for line in fh if line.strip() and not line.startswith("# "))


def is_common(password: str) -> bool:
    """Case-insensitive: "Password1" is as guessable as "password1" to a cracking dictionary."""
    return password.strip().lower() in common_passwords()


def policy_problem(
    settings: Settings, password: str, email: str = "", *, client: OutboundClient | None = None
) -> str | None:
    """The first reason a new password is refused, or None. No composition rules (SP 800-63B 5.1.1.2).

    ``client`` is the app's outbound client (``app.net.get_client(app)``), used for the breached-password
    check when ``AMI_AUTH_PWNED_RANGE_URL`` is set; without one a short-lived client is used.
    """
    if len(password) < settings.password_min_length:
        return N_("Use at least %(num)s characters.", num=settings.password_min_length)
    if len(password) > MAX_PASSWORD_LENGTH:
        return N_("Use at most %(num)s characters.", num=MAX_PASSWORD_LENGTH)
    if is_common(password):
        return N_("This password is one of the most common passwords. Choose one that is harder to guess.")
    local = email.split("@", 1)[0].strip().lower()
    if len(local) >= 3 and local in password.lower():
        # Say what the rule is: the name part of the address (3+ characters), not the whole address.
        return N_(
            "The password contains “%(part)s”, the part of the email address before the @. Choose one without it.",
            part=local,
        )
    if settings.pwned_range_url:
        count = breach_count(settings, password, client=client)
        if count:
            return N_(
                "This password has appeared in a data breach, so attackers try it. Choose a different one "
                "(it has not been shared with anyone: only the first 5 characters of its SHA-1 were sent)."
            )
    return None


def breach_count(settings: Settings, password: str, *, client: OutboundClient | None = None) -> int | None:
    """How often the password appears in the breach corpus, 0 when not at all, None when unknown.

    k-anonymity range API (the HIBP "Pwned Passwords" protocol): send the first 5 hex characters of the
    SHA-1, get back every ``SUFFIX:COUNT`` for that prefix and look for ours locally. ``Add-Padding`` asks
    for decoy lines with a count of 0, so the response size does not hint at the prefix.

    When the API cannot be asked (off, unreachable, refused, an error status), this returns None and the
    caller lets the password through: an outage of a third-party service must not lock people out.
    """
    if not settings.pwned_range_url:
        return None
    # SHA-1 is what the range API is keyed by; it is not used to store anything.
    digest = hashlib.sha1(password.encode("utf-8"), usedforsecurity=False).hexdigest().upper()
    prefix, suffix = digest[:5], digest[5:]
    url = f"{settings.pwned_range_url.rstrip('/')}/{prefix}"
    try:
        if client is not None:
            response = client.get(url, headers={"Add-Padding": "true"}, timeout=BREACH_CHECK_TIMEOUT)
        else:
            with OutboundClient.from_settings(settings) as own:
                response = own.get(url, headers={"Add-Padding": "true"}, timeout=BREACH_CHECK_TIMEOUT)
    except AppError as exc:  # ProviderUnreachable, OutboundBlocked, a malformed URL
        log.warning("breached-password check skipped, the range API could not be asked: %s", exc.text)
        return None
    if response.status_code != 200:
        log.warning("breached-password check skipped, the range API answered HTTP %s", response.status_code)
        return None
    for line in response.text.splitlines():
        candidate, _, count = line.strip().partition(":")
        if candidate.upper() == suffix:
            return int(count) if count.strip().isdigit() else 1
    return 0


def is_breached(settings: Settings, password: str, *, client: OutboundClient | None = None) -> bool:
    """True only when the range API says so (count above 0); False when off, unknown or absent."""
    return bool(breach_count(settings, password, client=client))
