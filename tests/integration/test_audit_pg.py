"""The audit chain on PostgreSQL: the advisory lock keeps concurrent writers on one chain.

Runs only when ``AMI_AUTH_TEST_POSTGRES_URL`` names a server we may create databases on, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/test``. Each test gets its own database, dropped after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Connection, create_engine, select, text
from sqlalchemy.orm import Session

from app import audit_batch
from app.audit import PG_CHAIN_LOCK_KEY, AuditContext, new_event, record, verify
from app.audit_batch import Pending, append, drain, flush
from app.audit_details import REDACTED
from app.extensions import Database, make_database
from app.models.audit import AuditEvent
from tests.conftest import PostgresDatabase, postgres_admin_url
from tests.support.audit_chain import (
    assert_batched_writers_keep_one_chain,
    assert_second_writer_waits_for_the_first,
    assert_threads_keep_one_chain,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A database of this test's own, migrated to head, dropped after."""
    target = PostgresDatabase(postgres_admin_url())
    target.create()
    try:
        yield target.url
    finally:
        target.drop()


@pytest.fixture
def database(pg_url: str) -> Iterator[Database]:
    database = make_database(pg_url)
    yield database
    database.remove()
    database.engine.dispose()


def test_eight_threads_recording_at_once_keep_one_chain(database: Database) -> None:
    assert_threads_keep_one_chain(database, 8)


def test_a_second_writer_waits_for_the_first_to_commit(database: Database) -> None:
    assert_second_writer_waits_for_the_first(database)


def test_batched_appends_from_two_processes_keep_one_chain(pg_url: str) -> None:
    assert_batched_writers_keep_one_chain(pg_url, 4)


def test_stored_values_hash_the_same_after_the_round_trip(database: Database) -> None:
    """JSON floats, unicode and microsecond timestamps come back from PostgreSQL exactly as hashed."""
    with Session(database.engine) as session:
        record(
            session,
            AuditContext(actor="zoë@example.com", actor_id=1, ip="::1", user_agent="Mozilla/5.0 ✓"),
            "provider.updated",
            target="provider:github",
            outcome="denied",
            details={
                "ratio": 0.1,
                "big": 2**53 + 1,
                "nested": {"b": [1.5, None, "é"], "a": True},
                "token": "x",
            },
        )
        session.commit()
        assert session.scalars(select(AuditEvent.details)).one()["token"] == REDACTED
        assert verify(session).ok

    with database.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET details = '{\"ratio\": 0.2}' WHERE id = 1"))
    with Session(database.engine) as session:
        result = verify(session)
    assert (result.ok, result.first_bad_id) == (False, 1)


def test_repeatable_read_is_refused(database: Database) -> None:
    """Its snapshot can predate the advisory lock, which would fork the chain."""
    repeatable = database.engine.execution_options(isolation_level="REPEATABLE READ")
    with Session(repeatable) as session, pytest.raises(RuntimeError, match="REPEATABLE READ"):
        record(session, AuditContext(), "test.snapshot")


def _proxy_calls(outcome: str) -> float:
    labels = {"action": "account.proxy", "outcome": outcome}
    return REGISTRY.get_sample_value("ami_auth_audit_events_total", labels) or 0.0


def _connections_to(database: Database, expected: int) -> int:
    """Server connections to this test's database, once they are ``expected`` (a closed one takes a moment to
    leave pg_stat_activity) or after 5 s."""
    admin = create_engine(postgres_admin_url())
    try:
        deadline = time.monotonic() + 5
        while True:
            with admin.connect() as conn:
                count = conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
                    {"name": database.engine.url.database},
                ).scalar_one()
            if count == expected or time.monotonic() > deadline:
                return int(count)
            time.sleep(0.05)
    finally:
        admin.dispose()


def test_appended_values_hash_the_same_after_the_round_trip_and_are_counted(database: Database) -> None:
    """The batch writer's own PostgreSQL path (pipelined, psycopg's parameters): what it stores verifies, after
    one event written the ORM way, and each committed event is counted in /metrics."""
    with Session(database.engine) as session:
        record(session, AuditContext(actor="admin"), "provider.updated", target="provider:github")
        session.commit()
    before = _proxy_calls("success")
    ctx = AuditContext(actor="service_token:1", ip="::1", user_agent="Mozilla/5.0 ✓")
    details = {"method": "POST", "path": "/v1/chat/é", "status": 200, "ratio": 0.1, "token": "sk-should-not-stay"}
    assert append(database.engine, ctx, "account.proxy", target="connected_account:7", details=details)
    assert append(database.engine, ctx, "account.proxy", target="connected_account:7", details={"status": 201})
    assert _proxy_calls("success") - before == 2
    with Session(database.engine) as session:
        result = verify(session)
        assert result.ok, result.problem
        assert result.checked == 3
        stored = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [(e.actor, e.action, e.target, e.ip, e.user_agent) for e in stored[1:]] == [
        ("service_token:1", "account.proxy", "connected_account:7", "::1", "Mozilla/5.0 ✓")
    ] * 2
    assert stored[1].details == {**details, "token": REDACTED}
    assert stored[1].at <= stored[2].at


def test_the_batch_writer_replaces_a_connection_the_server_closed(database: Database) -> None:
    """Its connection is kept between batches; when the server ends it (a restart, an idle timeout), the next
    batch takes a new one and the event is written once."""
    assert append(database.engine, AuditContext(actor="a"), "account.proxy", details={"i": 1})
    with database.engine.connect() as conn:
        ended = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    assert ended >= 1
    assert append(database.engine, AuditContext(actor="a"), "account.proxy", details={"i": 2})
    with Session(database.engine) as session:
        assert verify(session).ok
        assert [d["i"] for d in session.scalars(select(AuditEvent.details).order_by(AuditEvent.id))] == [1, 2]


def test_disposing_the_engine_closes_the_batch_writers_connection(pg_url: str) -> None:
    database = make_database(pg_url)
    assert append(database.engine, AuditContext(actor="a"), "account.proxy")
    assert _connections_to(database, 1) == 1  # the writer's, kept
    database.engine.dispose()
    assert _connections_to(database, 0) == 0


def test_events_appended_without_waiting_are_written_in_order_by_the_writer_thread(database: Database) -> None:
    """The proxy's way (wait=False): append returns at once; the writer thread commits the events in the order
    they came, as one chain that verifies, and counts them."""
    before = _proxy_calls("success")
    ctx = AuditContext(actor="service_token:1")
    for i in range(50):
        append(database.engine, ctx, "account.proxy", target="connected_account:7", details={"i": i}, wait=False)
    assert flush(database.engine, timeout=10)
    assert _proxy_calls("success") - before == 50
    with Session(database.engine) as session:
        assert verify(session).ok
        assert [d["i"] for d in session.scalars(select(AuditEvent.details).order_by(AuditEvent.id))] == list(range(50))


def test_a_full_queue_makes_append_wait_for_the_database(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the database holds the writer back (here: another session holds the chain lock), at most QUEUE_MAX
    events wait in memory; the next append waits for room rather than growing the backlog, and nothing is lost."""
    monkeypatch.setattr(audit_batch, "QUEUE_MAX", 2)
    ctx = AuditContext(actor="service_token:1")
    with database.engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_CHAIN_LOCK_KEY})
        append(database.engine, ctx, "account.proxy", details={"i": 0}, wait=False)  # the writer takes it, then waits
        deadline = time.monotonic() + 5
        while _lock_waiters(holder) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        append(database.engine, ctx, "account.proxy", details={"i": 1}, wait=False)
        append(database.engine, ctx, "account.proxy", details={"i": 2}, wait=False)  # the queue is full now
        third = threading.Thread(
            target=append, args=(database.engine, ctx, "account.proxy"), kwargs={"details": {"i": 3}, "wait": False}
        )
        third.start()
        third.join(0.5)
        assert third.is_alive(), "append went on with a full queue"
        holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_CHAIN_LOCK_KEY})
        holder.commit()
    third.join(10)
    assert not third.is_alive()
    assert flush(database.engine, timeout=10)
    with Session(database.engine) as session:
        assert verify(session).ok
        assert [d["i"] for d in session.scalars(select(AuditEvent.details).order_by(AuditEvent.id))] == [0, 1, 2, 3]


def _lock_waiters(conn: Connection) -> int:
    return int(
        conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar_one()
    )


def test_drain_writes_what_is_queued_when_the_writer_thread_is_gone(database: Database) -> None:
    """At exit (gunicorn's worker_exit, atexit) the queue is written even if no thread is left to write it."""
    writer = audit_batch._writer(database.engine)
    writer.submit(Pending(new_event(AuditContext(actor="a"), "account.proxy", "", "success", {"i": 1})))
    assert flush(database.engine, timeout=10)
    thread = writer._thread
    assert thread is not None
    writer._thread = None  # as after the interpreter stopped it
    writer._queue.append(Pending(new_event(AuditContext(actor="a"), "account.proxy", "", "success", {"i": 2})))
    drain(timeout=10)
    with Session(database.engine) as session:
        assert [d["i"] for d in session.scalars(select(AuditEvent.details).order_by(AuditEvent.id))] == [1, 2]


def test_an_idle_writer_thread_ends_and_the_next_event_starts_one(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_batch, "IDLE_SECONDS", 0.2)
    ctx = AuditContext(actor="service_token:1")
    append(database.engine, ctx, "account.proxy", details={"i": 1}, wait=False)
    assert flush(database.engine, timeout=10)
    writer = audit_batch._writer(database.engine)
    first = writer._thread
    assert first is not None
    first.join(5)
    assert not first.is_alive() and writer._thread is None
    append(database.engine, ctx, "account.proxy", details={"i": 2}, wait=False)
    assert flush(database.engine, timeout=10)
    with Session(database.engine) as session:
        assert verify(session).ok
        assert [d["i"] for d in session.scalars(select(AuditEvent.details).order_by(AuditEvent.id))] == [1, 2]


def test_events_handed_over_one_by_one_within_the_gather_window_are_committed_together(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread waits GATHER_SECONDS after the first event for more (a lone caller's calls do not each
    wake it): five events handed over 50 ms apart within a (here: long) window are one transaction."""
    monkeypatch.setattr(audit_batch, "GATHER_SECONDS", 2.0)
    ctx = AuditContext(actor="service_token:1")
    for i in range(5):
        append(database.engine, ctx, "account.proxy", details={"i": i}, wait=False)
        time.sleep(0.05)
    assert flush(database.engine, timeout=10)
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT count(DISTINCT xmin::text) FROM audit_events")).scalar_one() == 1
    with Session(database.engine) as session:
        assert verify(session).ok
        assert [d["i"] for d in session.scalars(select(AuditEvent.details).order_by(AuditEvent.id))] == list(range(5))


def test_flush_does_not_wait_for_the_gather_window(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_batch, "GATHER_SECONDS", 600.0)
    append(database.engine, AuditContext(actor="service_token:1"), "account.proxy", details={"i": 1}, wait=False)
    assert flush(database.engine, timeout=10)
    with Session(database.engine) as session:
        assert [d["i"] for d in session.scalars(select(AuditEvent.details))] == [1]
