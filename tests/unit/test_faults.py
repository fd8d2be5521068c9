"""app.faults tells outages from bugs, on exceptions raised for real by SQLite, SQLAlchemy and limits/redis-py."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from limits.storage import RedisStorage
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from app import faults
from app.extensions import make_engine
from tests.support.live import free_port


def _raised(action: Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as info:
        action()
    return info.value


def test_sqlite_locked_past_the_busy_timeout_is_a_busy_fault(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with engine.connect() as conn:
            fault = faults.classify(_raised(lambda: conn.execute(text("INSERT INTO t VALUES (1)"))))
    finally:
        holder.close()
        engine.dispose()
    assert fault == faults.Fault("database", "locked", faults.RETRY_BUSY)
    error = fault.error()
    assert (error.code, error.http_status, error.retry_after) == ("service_unavailable", 503, 5)
    assert fault.summary == "the database is locked"


def test_sql_mistakes_and_constraint_violations_stay_bugs(tmp_path: Path) -> None:
    # sqlite3 raises OperationalError for these too: only the result codes of an outage count as faults.
    engine = make_engine(f"sqlite:///{tmp_path / 'y.db'}")
    try:
        with engine.connect() as conn:
            assert faults.classify(_raised(lambda: conn.execute(text("SELECT * FROM missing")))) is None
            assert faults.classify(_raised(lambda: conn.execute(text("SELEKT 1")))) is None
            conn.execute(text("CREATE TABLE u (x INTEGER UNIQUE)"))
            conn.execute(text("INSERT INTO u VALUES (1)"))
            duplicate = _raised(lambda: conn.execute(text("INSERT INTO u VALUES (1)")))
            assert isinstance(duplicate, IntegrityError) and faults.classify(duplicate) is None
    finally:
        engine.dispose()
    assert faults.classify(ValueError("a bug")) is None
    assert faults.classify(KeyError("a bug")) is None


def test_unreachable_redis_is_a_fault_also_when_raised_from() -> None:
    storage = RedisStorage(f"redis://127.0.0.1:{free_port()}/0", wrap_exceptions=True)
    try:
        error = _raised(lambda: storage.incr("k", 5))
    finally:
        storage.storage.close()
    assert faults.classify(error) == faults.Fault("redis", "unreachable", faults.RETRY_OUTAGE)
    try:
        raise RuntimeError("while counting") from error
    except RuntimeError as wrapped:
        assert faults.classify(wrapped) == faults.Fault("redis", "unreachable", faults.RETRY_OUTAGE)
    # An exception merely raised while handling one (implicit context) is not the fault's.
    try:
        try:
            raise error
        except Exception:
            raise RuntimeError("a bug in a handler")  # noqa: B904 - the implicit context is the point
    except RuntimeError as unrelated:
        assert faults.classify(unrelated) is None
