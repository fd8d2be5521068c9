"""Extensions created once and bound to an app in ``create_app``.

The database is plain SQLAlchemy 2: one engine and one scoped session per app, kept in
``app.extensions``. Logic functions take a ``Session`` argument; views get it from :func:`db_session`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from flask import Flask, current_app
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from limits.storage import MemoryStorage, RedisStorage, Storage
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from app.settings import Settings, make_private_dir
from app.vault import Cipher

login_manager = LoginManager()
csrf = CSRFProtect()


@dataclass
class Database:
    engine: Engine
    sessions: scoped_session[Session]

    def session(self) -> Session:
        return self.sessions()

    def remove(self) -> None:
        self.sessions.remove()


# How long a SQLite statement waits for the write lock (or, for a checkpoint, for readers) before "database is
# locked": longer than any write transaction here takes.
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Deleted ciphertext must not linger in free pages until a VACUUM.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


# Seconds a new PostgreSQL connection may take (libpq waits forever by default): a request, or a /readyz probe,
# against an unreachable database host then fails in bounded time with 503 instead of hanging a worker.
DB_CONNECT_TIMEOUT = 5
# Redis: connect and per-command bounds. The throttle's scripts take microseconds; a second means Redis is gone.
REDIS_CONNECT_TIMEOUT = 1.0
REDIS_COMMAND_TIMEOUT = 2.0


def _drop_read_only_connections(context: ExceptionContext) -> None:
    """A write refused as read-only (SQLSTATE 25006) drops the pool's connections, as a disconnect would.

    PostgreSQL fixes ``default_transaction_read_only`` when a connection starts, and a standby promoted after
    a failover is writable only on new connections: without this, connections opened while the database was
    read-only would keep failing after it recovered.
    """
    if getattr(context.original_exception, "sqlstate", None) == "25006":
        context.is_disconnect = True


def private_sqlite_file(url: str) -> None:
    """Create a SQLite database file 0600 (its directory 0700) before SQLite does, whatever the umask.

    SQLite would create it 0644 minus the umask, and gives its -wal and -shm files the database file's
    mode: made private first, all three are (the file holds password hashes and ciphertext). An existing
    file is left as it is; in-memory and URI databases are SQLite's business.
    """
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.exists():
        return
    make_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it a moment ago
        return
    try:
        os.fchmod(fd, 0o600)  # the umask filtered the mode given to open
    finally:
        os.close(fd)


def make_engine(url: str) -> Engine:
    """An engine with the settings the app relies on: SQLite in WAL with foreign keys on, its files private."""
    if url.startswith("sqlite"):
        private_sqlite_file(url)
        # hide_parameters: SQLAlchemy errors would otherwise print bound values (wrapped keys, hashes) to logs.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {"connect_timeout": DB_CONNECT_TIMEOUT} if url.startswith("postgresql") else {}
    engine = create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, hide_parameters=True, connect_args=connect_args
    )
    event.listen(engine, "handle_error", _drop_read_only_connections)
    return engine


def make_database(url: str) -> Database:
    engine = make_engine(url)
    return Database(engine, scoped_session(sessionmaker(engine, expire_on_commit=False)))


def end_read(db: Session) -> None:
    """End the session's transaction before waiting on a peer (a provider, a vendor: up to the outbound timeout,
    with retries), so that no pooled connection waits with it. A commit of nothing: what was loaded stays loaded
    (``expire_on_commit=False``), where a rollback would expire it and the next attribute read would open a new
    transaction. Refused while changes are pending: a function that only means to let go of its connection must
    not commit a caller's half-done work."""
    if db.new or db.dirty or db.deleted:
        raise RuntimeError("changes are pending: commit or roll them back before waiting on a peer")
    db.commit()


class SweptMemoryStorage(MemoryStorage):
    """``limits``' memory storage, sweeping expired entries every few seconds instead of every 10 ms.

    The stock storage starts a new ``threading.Timer`` (a new OS thread) 10 ms after the previous sweep on the
    next hit, so a busy worker starts up to a hundred threads a second. The sweep only frees memory: every read
    (``get``, ``acquire_entry``, ``get_moving_window``) already ignores expired entries itself, so counting and
    expiry stay exact; entries just linger in memory a few seconds longer.
    """

    SWEEP_SECONDS = 5.0

    # Overrides MemoryStorage's private ``__schedule_expiry`` (name-mangled); tests/unit/test_limit_storage.py
    # fails if a new ``limits`` release renames it.
    def _MemoryStorage__schedule_expiry(self) -> None:
        if not self.timer.is_alive():
            self.timer = threading.Timer(self.SWEEP_SECONDS, self._MemoryStorage__expire_events)  # type: ignore[attr-defined]
            # A daemon: a sleeping sweep must not hold up a worker's (or a CLI command's) exit.
            self.timer.daemon = True
            self.timer.start()


def make_limit_storage(settings: Settings) -> Storage:
    """``limits`` storage: memory for one process, Redis when configured so every worker shares counts."""
    if settings.redis_url:
        # Every key lives under the prefix, so several installs (or test sessions) can share one Redis.
        # wrap_exceptions: every storage failure is one type, limits' StorageError, whichever call raised it.
        # Bounded waits and one immediate retry (for a pooled connection Redis closed when it restarted) instead
        # of redis-py's three retries with backoff: an outage answers 503 within seconds (app.faults).
        return RedisStorage(
            settings.redis_url,
            key_prefix=settings.redis_key_prefix,
            wrap_exceptions=True,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
            socket_timeout=REDIS_COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 1),  # type: ignore[arg-type]  # passed on to redis.Redis.from_url
        )
    return SweptMemoryStorage()


def init_database(app: Flask, settings: Settings) -> Database:
    database = make_database(settings.database_url)
    app.extensions["ami_db"] = database

    @app.teardown_appcontext
    def _remove_session(_exc: BaseException | None) -> None:
        database.remove()

    return database


def get_database(app: Flask | None = None) -> Database:
    target = app or current_app
    database: Database = target.extensions["ami_db"]
    return database


def db_session() -> Session:
    """The request's database session (views and CLI only; logic receives a Session)."""
    return get_database().session()


def get_settings(app: Flask | None = None) -> Settings:
    target = app or current_app
    settings: Settings = target.extensions["ami_settings"]
    return settings


def get_limit_storage(app: Flask | None = None) -> Storage:
    """The app's ``limits`` storage (throttle counters and locks)."""
    target = app or current_app
    storage: Storage = target.extensions["ami_limits"]
    return storage


def get_cipher(app: Flask | None = None) -> Cipher:
    """The app's vault cipher over the configured key ring (built once per app)."""
    target = app or current_app
    cipher: Cipher | None = target.extensions.get("ami_cipher")
    if cipher is None:
        cipher = Cipher(get_settings(target).master_keys)
        target.extensions["ami_cipher"] = cipher
    return cipher
