"""The audit chain on PostgreSQL: the advisory lock keeps concurrent writers on one chain.

Runs only when ``AMI_AUTH_TEST_POSTGRES_URL`` names a server we may create databases on, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/test``. Each test gets its own database, dropped after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.audit import AuditContext, record, verify
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
