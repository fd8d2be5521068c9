"""The audit chain's concurrency checks, run on SQLite (tests/unit/test_audit.py) and on PostgreSQL
(tests/integration/test_audit_pg.py): the same assertions against each database's own locking."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit import AuditContext, record, verify
from app.audit_batch import append
from app.extensions import Database, make_database
from app.models.audit import AuditEvent

PER_THREAD = 50


def assert_threads_keep_one_chain(database: Database, threads: int) -> None:
    """``threads`` writers record 50 events each, all starting at once: one unbroken chain holds them all."""
    start = threading.Barrier(threads)

    def worker(n: int) -> None:
        session = database.session()  # scoped_session: one session per thread
        try:
            start.wait()
            for i in range(PER_THREAD):
                record(session, AuditContext(actor=f"thread{n}"), "test.concurrent", details={"i": i})
                session.commit()
        finally:
            database.remove()

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(worker, n) for n in range(threads)]:
            future.result()

    with Session(database.engine) as session:
        result = verify(session, batch=64)
        assert result.ok, result.problem
        assert result.checked == threads * PER_THREAD
        rows = session.execute(select(AuditEvent.actor, AuditEvent.details)).all()
    assert sorted((actor, d["i"]) for actor, d in rows) == sorted(
        (f"thread{n}", i) for n in range(threads) for i in range(PER_THREAD)
    )


def assert_second_writer_waits_for_the_first(database: Database) -> None:
    """The last hash is read under the write lock, so B chains onto A even though A commits later."""
    session_a = Session(database.engine)
    hash_a = record(session_a, AuditContext(actor="alice"), "test.first").hash
    done = threading.Event()
    prev_hash_b: list[str] = []

    def writer_b() -> None:
        with Session(database.engine) as session_b:
            prev_hash_b.append(record(session_b, AuditContext(actor="alice"), "test.second").prev_hash)
            session_b.commit()
        done.set()

    thread = threading.Thread(target=writer_b)
    thread.start()
    try:
        assert not done.wait(0.5), "B recorded while A still held the chain lock"
        session_a.commit()
        assert done.wait(10)
    finally:
        session_a.close()
        thread.join()
    assert prev_hash_b == [hash_a]
    with Session(database.engine) as session:
        assert verify(session).ok


def assert_batched_writers_keep_one_chain(url: str, threads: int) -> None:
    """Two processes' worth of writers (an engine each, as two workers or hosts have) append at once with
    :func:`append` (group commit), alongside a thread that records one event per transaction: every event is
    in one unbroken chain."""
    databases = [make_database(url), make_database(url)]
    start = threading.Barrier(threads * 2 + 1)
    committed: list[bool] = []

    def appender(database: Database, n: int) -> None:
        start.wait()
        for i in range(PER_THREAD):
            ok = append(database.engine, AuditContext(actor=f"appender{n}"), "test.batched", details={"i": i})
            committed.append(ok)

    def recorder() -> None:
        start.wait()
        with Session(databases[0].engine) as session:
            for i in range(PER_THREAD):
                record(session, AuditContext(actor="recorder"), "test.single", details={"i": i})
                session.commit()

    try:
        with ThreadPoolExecutor(threads * 2 + 1) as pool:
            futures = [pool.submit(appender, databases[n % 2], n) for n in range(threads * 2)]
            futures.append(pool.submit(recorder))
            for future in futures:
                future.result()
        assert committed == [True] * (threads * 2 * PER_THREAD)
        with Session(databases[0].engine) as session:
            result = verify(session, batch=64)
            assert result.ok, result.problem
            rows = session.execute(select(AuditEvent.actor, AuditEvent.details)).all()
        assert sorted((actor, d["i"]) for actor, d in rows) == sorted(
            [(f"appender{n}", i) for n in range(threads * 2) for i in range(PER_THREAD)]
            + [("recorder", i) for i in range(PER_THREAD)]
        )
    finally:
        for database in databases:
            database.remove()
            database.engine.dispose()
