"""Rewrap on PostgreSQL: a database of its own, created, migrated and dropped around each test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.extensions import Database, make_database
from app.models import StoredSecret
from app.settings import new_master_key
from app.vault import Cipher, get_secret, key_status, put_secret, rewrap, rewrap_pending
from tests.conftest import PostgresDatabase, postgres_admin_url

pytestmark = pytest.mark.postgres

K1 = new_master_key("k1")
K2 = new_master_key("k2")
GRACE = timedelta(days=7)


@pytest.fixture
def pg() -> Iterator[Database]:
    target = PostgresDatabase(postgres_admin_url())
    target.create()
    database = make_database(target.url)
    try:
        yield database
    finally:
        database.remove()
        database.engine.dispose()
        target.drop()


def _fill(database: Database, cipher: Cipher, count: int) -> dict[int, str]:
    expected: dict[int, str] = {}
    with database.session() as session, session.begin():
        for owner_id in range(count):
            if owner_id % 10 == 0:
                put_secret(session, cipher, "account", owner_id, "api_key", f"old-{owner_id}", grace=GRACE)
            expected[owner_id] = f"value-{owner_id}"
            put_secret(session, cipher, "account", owner_id, "api_key", expected[owner_id], grace=GRACE)
    return expected


def _read_all(database: Database, cipher: Cipher, expected: dict[int, str]) -> None:
    with database.session() as session:
        for owner_id, value in expected.items():
            found = get_secret(session, cipher, "account", owner_id, "api_key")
            assert found is not None and found.reveal() == value, owner_id


class Interrupt(Exception):
    pass


def test_rewrap_on_postgres_survives_an_interruption_and_live_writes(pg: Database) -> None:
    expected = _fill(pg, Cipher((K1,)), 500)  # 550 rows: every tenth owner also has a retired value
    with pg.session() as session:
        ciphertexts = {
            row.id: row.ciphertext for row in session.execute(select(StoredSecret.id, StoredSecret.ciphertext))
        }
    rotated = Cipher((K2, K1))

    def stop(count: int) -> None:
        raise Interrupt(count)

    with pytest.raises(Interrupt):
        rewrap(pg.session, rotated, batch_size=200, progress=stop)
    with pg.session() as session:
        assert key_status(session) == {"k1": 350, "k2": 200}
        assert rewrap_pending(session, rotated) == 350
    _read_all(pg, rotated, expected)

    def write_while_rewrapping(count: int) -> None:
        # Another writer replaces a value the next batch has yet to move: its old row is retired (and
        # must still be moved); the new row is written on the active key already.
        if 499 not in replaced:
            with Session(pg.engine) as other, other.begin():
                put_secret(other, rotated, "account", 499, "api_key", "replaced-live", grace=GRACE)
            replaced.add(499)
            expected[499] = "replaced-live"

    replaced: set[int] = set()

    assert rewrap(pg.session, rotated, batch_size=200, progress=write_while_rewrapping) == 350
    with pg.session() as session:
        assert key_status(session) == {"k2": 551}
        after = {row.id: row.ciphertext for row in session.execute(select(StoredSecret.id, StoredSecret.ciphertext))}
    assert {row_id: after[row_id] for row_id in ciphertexts} == ciphertexts
    _read_all(pg, Cipher((K2,)), expected)
    assert rewrap(pg.session, rotated) == 0


def test_concurrent_replacements_leave_one_current_value(pg: Database) -> None:
    """Two transactions replace the same secret at once: the second waits on the first's row lock, meets
    its committed value at the unique index, retries, and retires it — one current value, none lost."""
    cipher = Cipher((K1,))
    with pg.session() as session, session.begin():
        put_secret(session, cipher, "account", 1, "api_key", "original", grace=GRACE)
    first = Session(pg.engine)
    put_secret(first, cipher, "account", 1, "api_key", "from-first", grace=GRACE)  # holds the row lock
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with Session(pg.engine) as session, session.begin():
                put_secret(session, cipher, "account", 1, "api_key", "from-second", grace=GRACE)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(timeout=1.0)
    assert thread.is_alive(), "the second writer should wait for the first one's lock"
    first.commit()
    first.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and errors == []
    with pg.session() as session:
        rows = session.scalars(select(StoredSecret).order_by(StoredSecret.id)).all()
        current = [r for r in rows if r.retired_at is None]
        assert len(current) == 1
        found = get_secret(session, cipher, "account", 1, "api_key")
        assert found is not None and found.reveal() == "from-second"
        assert len(rows) == 3 and all(r.purge_after is not None for r in rows if r.retired_at is not None)
