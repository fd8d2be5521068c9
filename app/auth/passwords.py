"""Password hashing with argon2id (argon2-cffi) and the password policy (NIST SP 800-63B)."""

from __future__ import annotations

import contextlib
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.settings import Settings

MAX_PASSWORD_LENGTH = 256


@lru_cache(maxsize=8)
def _hasher(memory_kib: int, time_cost: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(memory_cost=memory_kib, time_cost=time_cost, parallelism=parallelism)


def hasher(settings: Settings) -> PasswordHasher:
    return _hasher(settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism)


@lru_cache(maxsize=8)
def _dummy_hash(memory_kib: int, time_cost: int, parallelism: int) -> str:
    return _hasher(memory_kib, time_cost, parallelism).hash("not-a-real-password-only-for-timing")


def hash_password(settings: Settings, password: str) -> str:
    return hasher(settings).hash(password)


def verify_password(settings: Settings, stored_hash: str | None, password: str) -> bool:
    """Constant-work verify: with no stored hash, verify against a dummy so timing does not reveal who exists."""
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
    return hasher(settings).check_needs_rehash(stored_hash)


def policy_problem(settings: Settings, password: str, email: str = "") -> str | None:
    """The first reason a new password is refused, or None. No composition rules (SP 800-63B 5.1.1.2)."""
    if len(password) < settings.password_min_length:
        return f"Use at least {settings.password_min_length} characters."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"Use at most {MAX_PASSWORD_LENGTH} characters."
    local = email.split("@", 1)[0].strip().lower()
    if len(local) >= 3 and local in password.lower():
        return "Do not include your email address in the password."
    return None
