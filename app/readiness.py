"""What ``GET /readyz`` answers: can this process serve sign-ins right now?

Ready means every check below is ``ok``; otherwise the check that failed says why in a word or two (never a
host, a DSN or a driver message — the probe is unauthenticated):

* ``database``: reachable *and writable*. A sign-in writes (its session, its audit event), so a database that
  answers reads but refuses writes cannot serve it: PostgreSQL read-only (``default_transaction_read_only``,
  a standby after a failover) and SQLite locked by another writer past :data:`SQLITE_LOCK_WAIT_MS` both fail.
* ``migrations``: the schema is at the head revision this code expects.
* ``keys``: a master key is loaded.
* ``redis`` (only with ``AMI_AUTH_REDIS_URL``): the throttle's storage takes a write. Throttling fails closed,
  so without it every sign-in is refused with 503.

It is polled by load balancers, so it stays cheap and bounded:

* the checks run in a thread of their own and the probe waits at most :data:`TIMEOUT_SECONDS` for them;
  a check still running then is reported as ``timed out``, and no second one starts until it ends, so a
  hung database cannot pile up threads or hold a worker;
* each statement is bounded too (PostgreSQL ``statement_timeout``, the SQLite lock wait, Redis socket
  timeouts, the database connect timeout in :mod:`app.extensions`);
* a result is reused for :data:`CACHE_SECONDS`: several load balancers probing every worker of every host
  then cost one database and one Redis round trip a second per worker, while a failure or a recovery still
  shows within a second, well inside any load balancer's interval times its failure threshold.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Final

from alembic.runtime.migration import MigrationContext
from flask import Flask
from limits.storage import Storage
from sqlalchemy import Connection, Engine

from app import faults
from app.extensions import get_database, get_limit_storage, get_settings
from app.migrate import head_revisions

__all__ = ["CACHE_SECONDS", "TIMEOUT_SECONDS", "Readiness", "Report", "readiness"]

CACHE_SECONDS: Final = 1.0
TIMEOUT_SECONDS: Final = 2.0
SQLITE_LOCK_WAIT_MS: Final = 1000
PG_STATEMENT_TIMEOUT_MS: Final = 1000
_PROBE_KEY: Final = "ami/readyz"
_PENDING: Final = "timed out"


@dataclass(frozen=True)
class Report:
    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(value == "ok" for value in self.checks.values())


class Readiness:
    """The checks of one app, cached and bounded (see the module docstring)."""

    def __init__(self, engine: Engine, storage: Storage | None, *, keys_loaded: bool) -> None:
        self.engine = engine
        self.storage = storage  # None: memory storage, nothing to reach
        self.keys_loaded = keys_loaded
        self._heads = head_revisions(engine.url.render_as_string(hide_password=False))
        self._lock = threading.Lock()
        self._report: Report | None = None
        self._at = 0.0
        self._running: threading.Thread | None = None

    def report(self) -> Report:
        with self._lock:
            if self._report is not None and time.monotonic() - self._at < CACHE_SECONDS:
                return self._report
            if self._running is not None and self._running.is_alive():
                # Still waiting on the last check: say so without starting another.
                return self._timed_out()
            checks = self._pending()
            thread = threading.Thread(target=self._run, args=(checks,), name="ami-readyz", daemon=True)
            thread.start()
            thread.join(TIMEOUT_SECONDS)
            self._running = thread if thread.is_alive() else None
            self._report, self._at = Report(dict(checks)), time.monotonic()
            return self._report

    def _pending(self) -> dict[str, str]:
        checks = {"database": _PENDING, "migrations": _PENDING, "keys": "ok" if self.keys_loaded else "no master key"}
        if self.storage is not None:
            checks["redis"] = _PENDING
        return checks

    def _timed_out(self) -> Report:
        return Report(self._pending())

    def _run(self, checks: dict[str, str]) -> None:
        """Fill ``checks`` in place, one entry at a time, so a check that hangs leaves only itself ``timed out``."""
        try:
            with self.engine.connect() as conn:
                current = set(MigrationContext.configure(conn).get_current_heads())
                checks["migrations"] = "ok" if current == self._heads else "behind head: run `ami-auth db upgrade`"
                checks["database"] = _writable(conn)
        except Exception as exc:  # readiness reports a failure instead of raising it
            checks["database"] = _reason(exc)
            if checks["migrations"] == _PENDING:
                checks["migrations"] = "unknown"
        if self.storage is not None:
            try:
                self.storage.incr(_PROBE_KEY, 5)  # a write, as every sign-in's throttle check makes
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"] = _reason(exc)


def _writable(conn: Connection) -> str:
    """``ok``, or why the database cannot take a write; leaves nothing written (the caller rolls back)."""
    if conn.dialect.name == "postgresql":
        # SET LOCAL: the bound ends with this transaction, the pooled connection keeps its own settings.
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {PG_STATEMENT_TIMEOUT_MS}")
        if conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on":
            # A connection opened while the database was read-only stays so: drop it, so that the next probe
            # (and request) sees a recovery on a new one.
            conn.invalidate()
            return "read-only"
        return "ok"
    if conn.dialect.name == "sqlite":
        previous = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {SQLITE_LOCK_WAIT_MS}")
        try:
            # The write lock a sign-in needs, taken and given back at once.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            conn.exec_driver_sql("ROLLBACK")
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(previous or 0)}")
        return "ok"
    conn.exec_driver_sql("SELECT 1")
    return "ok"


def _reason(exc: Exception) -> str:
    fault = faults.classify(exc)
    return fault.reason if fault is not None else f"failed: {type(exc).__name__}"


def readiness(app: Flask) -> Readiness:
    """The app's readiness checks (built on first use: the migration heads are read from disk once)."""
    found = app.extensions.get("ami_readiness")
    if isinstance(found, Readiness):
        return found
    settings = get_settings(app)
    checker = Readiness(
        get_database(app).engine,
        get_limit_storage(app) if settings.redis_url else None,
        keys_loaded=bool(settings.master_keys),
    )
    app.extensions["ami_readiness"] = checker
    return checker
