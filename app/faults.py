"""Faults of the services the app stands on, told apart from bugs: the one map from an exception to its answer.

A *fault* is an outage outside the app's code: the database refusing connections or writes (a read-only
PostgreSQL, a standby after a failover, SQLite locked by another process past its busy timeout, a full disk),
or Redis (the throttle's shared storage) unreachable. The request was fine, nothing it did was kept, and the
same request will work once the service is back, so the answer is 503 ``service_unavailable`` with
``Retry-After`` (RFC 9110 15.6.4 and 10.2.3), never a 500. Anything else unexpected stays a 500
``internal_error`` with a reference: a bug to report. The error handlers (``app.web.errors``), the CLI and
``/readyz`` all classify through :func:`classify`; views do not catch these exceptions themselves.

Throttling fails closed through the same path: when Redis cannot be reached, the throttle's storage raises,
the sign-in (or API call) is refused with 503, and nothing is let through unchecked.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final, Literal

import redis.exceptions
from limits.errors import StorageError
from sqlalchemy import exc as sa_exc

from app.errors import AppError

__all__ = [
    "RETRY_BUSY",
    "RETRY_MAIL",
    "RETRY_OUTAGE",
    "Fault",
    "classify",
    "mail_unavailable",
    "provider_unavailable",
]

# A lock held by a long writer is usually gone in seconds; an outage or a failover takes longer.
RETRY_BUSY: Final = 5
RETRY_OUTAGE: Final = 30
RETRY_MAIL: Final = 60

Service = Literal["database", "redis"]
Reason = Literal["locked", "read-only", "unreachable", "full", "timed out"]

# SQLite primary result codes (https://sqlite.org/rescode.html); extended codes keep them in the low byte.
_SQLITE_REASONS: Final[dict[int, Reason]] = {
    5: "locked",  # SQLITE_BUSY: another connection holds the lock past the busy timeout
    6: "locked",  # SQLITE_LOCKED
    8: "read-only",  # SQLITE_READONLY: the file or its directory is not writable
    10: "unreachable",  # SQLITE_IOERR
    13: "full",  # SQLITE_FULL: the disk is full
    14: "unreachable",  # SQLITE_CANTOPEN
    15: "locked",  # SQLITE_PROTOCOL: a lock race in WAL mode
}

# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html), exact and by class.
_PG_STATES: Final[dict[str, Reason]] = {
    "25006": "read-only",  # read_only_sql_transaction: default_transaction_read_only, or a hot standby
    "55P03": "locked",  # lock_not_available
    "57014": "timed out",  # query_canceled: statement_timeout
}
_PG_CLASSES: Final[dict[str, Reason]] = {
    "08": "unreachable",  # connection exception
    "53": "full",  # insufficient resources: disk full, out of memory, too many connections
    "57": "unreachable",  # operator intervention: shutdown, crash, cannot connect now
    "58": "unreachable",  # system error: I/O error
}


@dataclass(frozen=True)
class Fault:
    """Which service failed and how: ``reason`` is for operators (logs, ``/readyz``, the CLI), never a DSN."""

    service: Service
    reason: Reason
    retry_after: int

    @property
    def summary(self) -> str:
        """One line for an operator: "the database is read-only", "Redis is unreachable"."""
        name = "the database" if self.service == "database" else "Redis (the throttle's storage)"
        verb = "has" if self.reason == "timed out" else "is"
        return f"{name} {verb} {self.reason}"

    def error(self) -> AppError:
        """The answer a user gets: what happened in words they can act on (no host, no driver text)."""
        if self.service == "redis":
            return AppError(
                "service_unavailable",
                hint="The service cannot check its sign-in and request limits right now, so it refuses requests "
                "instead of letting them through unchecked. Nothing was changed. Try again in a minute; if it "
                "keeps happening, tell an administrator.",
                retry_after=self.retry_after,
            )
        if self.reason in ("locked", "timed out"):
            return AppError(
                "service_unavailable",
                "The service is busy.",
                "Nothing was changed. Try again in a few seconds.",
                retry_after=self.retry_after,
            )
        return AppError("service_unavailable", retry_after=self.retry_after)


def classify(exc: BaseException) -> Fault | None:
    """The fault behind ``exc`` (or behind what it was raised from), or None when it is not one (a bug)."""
    seen: BaseException | None = exc
    for _ in range(5):  # the explicit cause chain only: an exception merely raised *during* a fault is not one
        if seen is None:
            return None
        fault = _database_fault(seen) or _redis_fault(seen)
        if fault is not None:
            return fault
        seen = seen.__cause__
    return None


def mail_unavailable(message: str) -> AppError:
    """A user action that needs mail, with the mail server down: ``message`` says what became of the action."""
    return AppError(
        "service_unavailable",
        message,
        "The mail server cannot be reached right now. Try again in a few minutes; if it keeps failing, "
        "tell an administrator.",
        retry_after=RETRY_MAIL,
    )


def provider_unavailable(exc: AppError) -> AppError:
    """A sign-in (or connection) provider that did not answer, or answered 5xx, while a user was using it.

    ``provider_unreachable`` stays the answer where a URL was just typed (an admin's connection test: bad input
    is possible); in a user's flow it is an outage of the provider's, and the user is told to wait or use
    another way in. ``Retry-After`` is the provider's own when it sent one.
    """
    return AppError(
        "service_unavailable",
        "The provider cannot be reached right now, so nothing was done.",
        "Try again in a minute, or sign in another way; if it keeps happening, tell an administrator.",
        retry_after=exc.retry_after or RETRY_OUTAGE,
    )


def _fault(service: Service, reason: Reason) -> Fault:
    return Fault(service, reason, RETRY_BUSY if reason in ("locked", "timed out") else RETRY_OUTAGE)


def _database_fault(exc: BaseException) -> Fault | None:
    if isinstance(exc, sa_exc.TimeoutError):  # every pooled connection busy for pool_timeout seconds
        return _fault("database", "timed out")
    if isinstance(exc, sa_exc.DisconnectionError):
        return _fault("database", "unreachable")
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        # sqlite3's OperationalError also covers SQL mistakes ("no such table"): only these codes are faults.
        code = getattr(orig, "sqlite_errorcode", None)
        reason = _SQLITE_REASONS.get(code & 0xFF) if isinstance(code, int) else None
        return _fault("database", reason) if reason is not None else None
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str):
        reason = _PG_STATES.get(state) or _PG_CLASSES.get(state[:2])
        return _fault("database", reason) if reason is not None else None
    if exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        # No SQLSTATE: the driver failed to connect or lost the connection (refused, reset, closed).
        return _fault("database", "unreachable")
    return None


def _redis_fault(exc: BaseException) -> Fault | None:
    if isinstance(exc, StorageError):  # limits wraps its storage's errors (wrap_exceptions=True)
        exc = exc.storage_error
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return _fault("redis", "unreachable")
    if isinstance(exc, redis.exceptions.ReadOnlyError | redis.exceptions.MasterDownError):
        return _fault("redis", "read-only")
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return _fault("redis", "full")
    if isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("MISCONF"):
        # Redis refuses writes when it cannot persist (stop-writes-on-bgsave-error).
        return _fault("redis", "read-only")
    return None
