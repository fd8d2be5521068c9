"""The audit log on a real SQLite file: chaining, tamper detection, redaction, concurrency, export, CLI."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from flask import Flask
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from app.audit import (
    GENESIS_HASH,
    AuditContext,
    compute_hash,
    export_jsonl,
    query,
    record,
    verify,
)
from app.audit_cli import audit_cli
from app.audit_details import REDACTED, sanitize_details
from app.errors import AppError
from app.extensions import Database, get_database, init_database, make_database
from app.migrate import upgrade
from app.models.audit import AuditEvent
from app.settings import load_settings
from tests.support.audit_chain import (
    assert_batched_writers_keep_one_chain,
    assert_second_writer_waits_for_the_first,
    assert_threads_keep_one_chain,
)

ALICE = AuditContext(actor="alice@example.com", actor_id=7, ip="127.0.0.1", user_agent="pytest")


class SecretLike:
    """Stands in for app.vault's Secret: its repr is the mask, its value must never be stored."""

    def __init__(self, value: str, shown: str = "**********") -> None:
        self._value = value
        self._shown = shown

    def __repr__(self) -> str:
        return self._shown


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = "sqlite:///" + str(tmp_path / "audit.db")
    upgrade(url)
    return url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    database = make_database(db_url)
    yield database
    database.remove()
    database.engine.dispose()


@pytest.fixture
def session(database: Database) -> Session:
    return database.session()


def add_events(session: Session, count: int, start: int = 1) -> list[AuditEvent]:
    events = []
    for n in range(start, start + count):
        events.append(
            record(
                session,
                ALICE,
                f"test.event{n}",
                target=f"user:{n}",
                outcome="failure" if n % 2 == 0 else "success",
                details={"n": n, "note": f"event {n}", "tags": ["a", "b"]},
            )
        )
        session.commit()
    return events


def tamper(engine: Engine, sql: str, **params: object) -> None:
    """Change the table behind the application's back, as someone with database access could."""
    with engine.begin() as conn:
        conn.execute(text(sql), params)


def row_values(engine: Engine, event_id: int) -> dict[str, Any]:
    """A row as stored (timestamps and JSON as text), the way a raw SQL client sees it."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM audit_events WHERE id = :id"), {"id": event_id}).one()
    return dict(row._mapping)


# --- chaining and verify ---------------------------------------------------------------------------


def test_empty_log_verifies(session: Session) -> None:
    result = verify(session)
    assert (result.ok, result.checked, result.first_bad_id, result.problem) == (True, 0, None, "")
    assert result.head_hash == GENESIS_HASH


def test_clean_chain_verifies_and_links_each_event_to_the_previous(session: Session) -> None:
    events = add_events(session, 5)

    assert events[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert [e.id for e in events] == [1, 2, 3, 4, 5]
    result = verify(session)
    assert result.ok and result.checked == 5 and result.problem == ""
    assert result.head_hash == events[-1].hash


def test_verify_walks_in_batches(session: Session, database: Database) -> None:
    add_events(session, 7)
    assert verify(session, batch=2).checked == 7
    tamper(database.engine, "DELETE FROM audit_events WHERE id = 5")
    result = verify(session, batch=2)  # the gap sits across a batch boundary
    assert (result.ok, result.first_bad_id) == (False, 6)


def test_events_recorded_in_one_transaction_chain_onto_each_other(session: Session) -> None:
    first = record(session, ALICE, "test.one")
    second = record(session, ALICE, "test.two")
    session.commit()
    assert second.prev_hash == first.hash
    assert verify(session).ok


def test_a_rolled_back_event_leaves_the_chain_intact(session: Session) -> None:
    add_events(session, 2)
    record(session, ALICE, "test.discarded")
    session.rollback()
    add_events(session, 2, start=3)
    result = verify(session)
    assert result.ok and result.checked == 4


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("action", "test.innocent"),
        ("details", '{"n": 3, "note": "nothing to see", "tags": ["a", "b"]}'),
        ("outcome", "denied"),
        ("actor", "mallory@example.com"),
        ("at", "2020-01-01 00:00:00.000000"),
    ],
)
def test_an_edited_event_is_named(session: Session, database: Database, column: str, value: str) -> None:
    add_events(session, 5)
    assert row_values(database.engine, 3)[column] != value
    tamper(database.engine, f"UPDATE audit_events SET {column} = :value WHERE id = 3", value=value)

    result = verify(session)
    assert not result.ok
    assert result.first_bad_id == 3
    assert result.problem == "event 3 was edited: its contents do not match its hash"
    assert result.checked == 3


def test_a_deleted_event_is_named_by_its_successor(session: Session, database: Database) -> None:
    events = add_events(session, 5)
    tamper(database.engine, "DELETE FROM audit_events WHERE id = 3")

    result = verify(session)
    assert (result.ok, result.first_bad_id, result.checked) == (False, 4, 3)
    assert result.problem.startswith("an event before 4 was deleted or inserted, or the order changed")
    assert "event 2" in result.problem
    assert result.head_hash == events[1].hash  # the chain is intact up to event 2


def test_deleting_the_oldest_events_is_detected(session: Session, database: Database) -> None:
    add_events(session, 3)
    tamper(database.engine, "DELETE FROM audit_events WHERE id = 1")

    result = verify(session)
    assert (result.ok, result.first_bad_id) == (False, 2)
    assert "genesis hash" in result.problem


def test_swapping_two_events_is_detected(session: Session, database: Database) -> None:
    add_events(session, 5)
    second, third = row_values(database.engine, 2), row_values(database.engine, 3)
    columns = [c for c in second if c != "id"]
    assign = ", ".join(f"{c} = :{c}" for c in columns)
    with database.engine.begin() as conn:
        # hash is unique, so park one row's hash while the contents change places.
        conn.execute(text("UPDATE audit_events SET hash = 'parked' WHERE id = 2"))
        conn.execute(text(f"UPDATE audit_events SET {assign} WHERE id = 3"), {c: second[c] for c in columns})
        conn.execute(text(f"UPDATE audit_events SET {assign} WHERE id = 2"), {c: third[c] for c in columns})
    assert row_values(database.engine, 2)["action"] == "test.event3"

    result = verify(session)
    assert (result.ok, result.first_bad_id) == (False, 2)
    assert result.problem.startswith("an event before 2 was deleted or inserted, or the order changed")


def test_a_forged_event_with_a_valid_hash_is_caught_by_the_next_link(session: Session, database: Database) -> None:
    events = add_events(session, 5)
    # Make room in the middle and write an event hashed exactly as record() would (the scheme is public).
    tamper(database.engine, "UPDATE audit_events SET id = id + 100 WHERE id >= 3")
    forged_hash = compute_hash(
        prev_hash=events[1].hash,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        actor="system",
        actor_id=None,
        action="user.role_granted",
        target="user:666",
        ip="",
        user_agent="",
        outcome="success",
        details={"role": "admin"},
    )
    tamper(
        database.engine,
        "INSERT INTO audit_events (id, at, actor, actor_id, action, target, ip, user_agent, outcome, details,"
        " prev_hash, hash) VALUES (3, '2026-01-01 00:00:00.000000', 'system', NULL, 'user.role_granted',"
        " 'user:666', '', '', 'success', '{\"role\": \"admin\"}', :prev, :hash)",
        prev=events[1].hash,
        hash=forged_hash,
    )

    result = verify(session)
    assert (result.ok, result.first_bad_id, result.checked) == (False, 103, 4)
    assert "an event before 103 was deleted or inserted" in result.problem
    assert "event 3" in result.problem


def test_a_forged_event_with_a_made_up_hash_is_named(session: Session, database: Database) -> None:
    events = add_events(session, 2)
    tamper(
        database.engine,
        "INSERT INTO audit_events (at, actor, action, target, ip, user_agent, outcome, details, prev_hash,"
        " hash) VALUES ('2026-01-01 00:00:00.000000', 'system', 'user.deleted', '', '', '', 'success', '{}',"
        " :prev, :hash)",
        prev=events[1].hash,
        hash="f" * 64,
    )
    result = verify(session)
    assert (result.ok, result.first_bad_id) == (False, 3)
    assert result.problem == "event 3 was edited: its contents do not match its hash"


def test_a_truncated_head_is_only_caught_by_a_head_hash_kept_elsewhere(session: Session, database: Database) -> None:
    add_events(session, 4)
    anchored = verify(session).head_hash
    tamper(database.engine, "DELETE FROM audit_events WHERE id = 4")

    result = verify(session)
    assert result.ok and result.checked == 3  # the documented blind spot of an unkeyed chain
    assert result.head_hash != anchored


# --- record(): inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("shown", ["**********", "Secret('**********')"])
def test_secrets_are_redacted_before_they_reach_the_table(session: Session, database: Database, shown: str) -> None:
    details: dict[str, object] = {
        "password": "hunter2-plaintext",
        "new_password": "correct-horse-plaintext",
        "refresh_token": "rt-plaintext",
        "Authorization": "Bearer authz-plaintext",
        "API_KEY": "apikey-plaintext",
        "private_key": "pk-plaintext",
        "session_cookie": "cookie-plaintext",
        "client_secret": 12345,
        "token_hint": ["list-plaintext"],
        "password_changed": True,
        "token": None,
        "username": "alice",
        "provider": {"name": "github", "client_secret": "nested-plaintext", "scopes": ["repo"]},
        "headers": [{"x-api-key": "listed-plaintext"}, SecretLike("wrapped-in-list-plaintext", shown)],
        "value": SecretLike("bare-plaintext", shown),
    }
    event = record(session, ALICE, "provider.updated", details=details)
    session.commit()

    assert event.details == {
        "password": REDACTED,
        "new_password": REDACTED,
        "refresh_token": REDACTED,
        "Authorization": REDACTED,
        "API_KEY": REDACTED,
        "private_key": REDACTED,
        "session_cookie": REDACTED,
        "client_secret": REDACTED,
        "token_hint": REDACTED,
        "password_changed": True,
        "token": None,
        "username": "alice",
        "provider": {"name": "github", "client_secret": REDACTED, "scopes": ["repo"]},
        "headers": [{"x-api-key": REDACTED}, REDACTED],
        "value": REDACTED,
    }
    with database.engine.connect() as conn:
        stored = conn.execute(text("SELECT details FROM audit_events")).scalar_one()
    assert "plaintext" not in stored and "12345" not in stored
    assert verify(session).ok


def test_details_are_normalised_to_json() -> None:
    moment = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    cleaned = sanitize_details(
        {
            "when": moment.astimezone(UTC),
            "naive": datetime(2026, 3, 1, 12, 30),
            "day": date(2026, 3, 1),
            "ttl": timedelta(minutes=5),
            "amount": Decimal("1.50"),
            "id": UUID(int=1),
            "path": Path("/tmp/x"),
            "pair": (1, 2),
            "roles": {"viewer", "admin"},
            "ratio": math.nan,
            "blob": b"\x00\x01\x02",
            3: "int key",
        }
    )
    assert cleaned == {
        "when": "2026-03-01T12:30:00+00:00",
        "naive": "2026-03-01T12:30:00",
        "day": "2026-03-01",
        "ttl": 300.0,
        "amount": "1.50",
        "id": "00000000-0000-0000-0000-000000000001",
        "path": "/tmp/x",
        "pair": [1, 2],
        "roles": ["admin", "viewer"],
        "ratio": "nan",
        "blob": "[3 bytes]",
        "3": "int key",
    }
    json.dumps(cleaned, allow_nan=False)


def test_unknown_detail_types_are_refused_rather_than_guessed(session: Session) -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match=r"Opaque at details\.thing"):
        record(session, ALICE, "test.opaque", details={"thing": Opaque()})
    session.rollback()
    assert verify(session).checked == 0


def test_record_rejects_bad_action_and_outcome(session: Session) -> None:
    with pytest.raises(ValueError, match="action"):
        record(session, ALICE, "")
    with pytest.raises(ValueError, match="action"):
        record(session, ALICE, "x" * 81)
    with pytest.raises(ValueError, match="outcome"):
        record(session, ALICE, "test.bad", outcome="maybe")  # type: ignore[arg-type]


def test_client_supplied_fields_are_clipped_to_their_columns(session: Session) -> None:
    ctx = AuditContext(actor="a" * 300, ip="1" * 100, user_agent="Mozilla " * 100)
    event = record(session, ctx, "test.long", target="t" * 300)
    session.commit()
    assert (len(event.actor), len(event.ip), len(event.user_agent), len(event.target)) == (200, 64, 400, 200)
    assert verify(session).ok


def test_context_defaults_to_the_system_actor(session: Session) -> None:
    event = record(session, AuditContext(), "job.rotation_reminder")
    assert (event.actor, event.actor_id, event.ip, event.user_agent) == ("system", None, "", "")


# --- concurrency ---------------------------------------------------------------------------------


def test_four_threads_recording_at_once_keep_one_chain(database: Database) -> None:
    assert_threads_keep_one_chain(database, 4)


def test_a_second_writer_waits_for_the_first_to_commit(database: Database) -> None:
    assert_second_writer_waits_for_the_first(database)


def test_batched_appends_from_two_processes_keep_one_chain(db_url: str) -> None:
    assert_batched_writers_keep_one_chain(db_url, 3)


# --- query -----------------------------------------------------------------------------------------


def test_query_filters_and_pages_newest_first(session: Session) -> None:
    events = add_events(session, 6)
    record(session, AuditContext(actor="bob"), "user.signed_in", target="user:2", outcome="denied")
    session.commit()

    assert [e.id for e in query(session)] == [7, 6, 5, 4, 3, 2, 1]
    assert [e.id for e in query(session, outcome="failure")] == [6, 4, 2]
    assert [e.id for e in query(session, actor="bob")] == [7]
    assert [e.id for e in query(session, action="test.event3")] == [3]
    assert [e.id for e in query(session, target="user:2")] == [7, 2]
    assert [e.id for e in query(session, since=events[3].at, until=events[5].at)] == [5, 4]

    first = query(session, limit=3)
    second = query(session, limit=3, before_id=first[-1].id)
    third = query(session, limit=3, before_id=second[-1].id)
    assert [[e.id for e in page] for page in (first, second, third)] == [[7, 6, 5], [4, 3, 2], [1]]
    assert [e.id for e in query(session, outcome="failure", limit=2, before_id=4)] == [events[1].id]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"outcome": "maybe"}, "outcome"),
        ({"since": datetime(2026, 1, 1)}, "since"),
    ],
)
def test_query_rejects_bad_filters(session: Session, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(AppError) as caught:
        query(session, **kwargs)
    assert caught.value.code == "validation_failed"
    assert field in caught.value.fields


# --- export ----------------------------------------------------------------------------------------


def check_export_lines(lines: list[str], expected_ids: list[int]) -> None:
    """Every line is JSON, in id order, and carries what is needed to re-check its hash offline."""
    assert [json.loads(line)["id"] for line in lines] == expected_ids
    for line in lines:
        event = json.loads(line)
        fields = {k: v for k, v in event.items() if k not in {"id", "hash"}}
        fields["at"] = datetime.fromisoformat(fields["at"])
        assert compute_hash(**fields) == event["hash"]


def test_export_writes_one_json_line_per_event(session: Session, tmp_path: Path) -> None:
    add_events(session, 5)
    steps: list[int] = []
    path = tmp_path / "audit.jsonl"
    with path.open("w") as fh:
        written = export_jsonl(session, fh, batch=2, progress=steps.append)
    assert written == 5 and steps == [2, 2, 1]
    lines = path.read_text().splitlines()
    check_export_lines(lines, [1, 2, 3, 4, 5])
    assert json.loads(lines[1])["prev_hash"] == json.loads(lines[0])["hash"]

    with path.open("a") as fh:
        assert export_jsonl(session, fh, after_id=5) == 0
        add_events(session, 2, start=6)
        assert export_jsonl(session, fh, after_id=5) == 2
    check_export_lines(path.read_text().splitlines(), [1, 2, 3, 4, 5, 6, 7])


# --- CLI -------------------------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path, db_url: str) -> Iterator[Flask]:
    settings = load_settings(
        {
            "AMI_AUTH_ENV": "test",
            "AMI_AUTH_INSTANCE_DIR": str(tmp_path),
            "AMI_AUTH_DATABASE_URL": db_url,
            "AMI_AUTH_SECRET_KEY": "x" * 40,
            "AMI_AUTH_MASTER_KEYS": "k1:" + base64.b64encode(bytes(32)).decode(),
        }
    )
    app = Flask("audit_cli_test")
    app.extensions["ami_settings"] = settings
    init_database(app, settings)
    app.cli.add_command(audit_cli)
    yield app
    get_database(app).engine.dispose()


def seed(app: Flask, count: int, start: int = 1) -> None:
    with Session(get_database(app).engine) as session:
        add_events(session, count, start)


def test_cli_verify_reports_ok(app: Flask) -> None:
    seed(app, 3)
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK: checked 3 events; head hash ")


def test_cli_verify_fails_naming_the_event(app: Flask) -> None:
    seed(app, 4)
    tamper(get_database(app).engine, "UPDATE audit_events SET outcome = 'success' WHERE id = 2")
    result = app.test_cli_runner().invoke(args=["audit", "verify", "--batch", "2"])
    assert result.exit_code == 1
    assert "TAMPERED: event 2 was edited" in result.stderr
    assert "checked 2 events" in result.stdout


def test_cli_export_to_stdout(app: Flask) -> None:
    seed(app, 3)
    result = app.test_cli_runner().invoke(args=["audit", "export"])
    assert result.exit_code == 0, result.output
    check_export_lines(result.stdout.splitlines(), [1, 2, 3])
    assert "Exported 3 events." in result.stderr


def test_cli_export_resumes_an_interrupted_export_without_duplicates(app: Flask, tmp_path: Path) -> None:
    seed(app, 5)
    out = tmp_path / "export.jsonl"
    runner = app.test_cli_runner()
    assert runner.invoke(args=["audit", "export", "--output", str(out)]).exit_code == 0
    full = out.read_text().splitlines(keepends=True)
    # As if the process died mid-write: three whole lines and half of the fourth.
    out.write_text("".join(full[:3]) + full[3][:20])
    seed(app, 2, start=6)

    result = runner.invoke(args=["audit", "export", "--output", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "Removed an incomplete last line" in result.stderr
    assert "Exported 4 events after event 3." in result.stderr
    check_export_lines(out.read_text().splitlines(), [1, 2, 3, 4, 5, 6, 7])

    again = runner.invoke(args=["audit", "export", "--output", str(out), "--resume"])
    assert again.exit_code == 0 and "Exported 0 events after event 7." in again.stderr
    check_export_lines(out.read_text().splitlines(), [1, 2, 3, 4, 5, 6, 7])


def test_cli_export_resume_starts_a_missing_file(app: Flask, tmp_path: Path) -> None:
    seed(app, 2)
    out = tmp_path / "new.jsonl"
    result = app.test_cli_runner().invoke(args=["audit", "export", "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    check_export_lines(out.read_text().splitlines(), [1, 2])


def test_cli_export_refuses_to_resume_a_file_from_another_log(app: Flask, tmp_path: Path) -> None:
    seed(app, 2)
    out = tmp_path / "foreign.jsonl"
    out.write_text(json.dumps({"id": 2, "hash": "a" * 64}) + "\n")
    result = app.test_cli_runner().invoke(args=["audit", "export", "-o", str(out), "--resume"])
    assert result.exit_code == 1
    assert "does not continue this database's audit log: event 2 has a different hash" in result.output


def test_cli_export_resume_needs_an_output_file(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["audit", "export", "--resume"])
    assert result.exit_code == 2
    assert "--resume needs --output" in result.output


def test_cli_export_resume_finds_the_last_line_across_read_chunks(app: Flask, tmp_path: Path) -> None:
    """Lines longer than the 64 KiB backward-read chunk still resume at the right event."""
    with Session(get_database(app).engine) as session:
        for n in range(3):
            record(session, ALICE, "test.big", details={"note": str(n) * 100_000})
        session.commit()
    out = tmp_path / "big.jsonl"
    runner = app.test_cli_runner()
    assert runner.invoke(args=["audit", "export", "-o", str(out)]).exit_code == 0
    full = out.read_text().splitlines(keepends=True)
    out.write_text("".join(full[:2]) + full[2][:70_000])

    result = runner.invoke(args=["audit", "export", "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "Exported 1 event after event 2." in result.stderr
    check_export_lines(out.read_text().splitlines(), [1, 2, 3])
