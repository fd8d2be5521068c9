"""The audit log: append-only events, each carrying the SHA-256 of the one before it (a hash chain).

The logic layer calls :func:`record` inside its own transaction, so an event is stored if and only if
the change it describes is committed. :func:`verify` walks the chain and names the first event that was
edited, deleted, inserted or moved. Nothing here knows about Flask: the web layer turns a request into
an :class:`AuditContext`.

What the chain can and cannot prove
-----------------------------------
The hash is unkeyed: anyone who can write to the table and read this module can compute it. So the
chain proves that the rows *between the first and the last* are the ones that were written, in that
order, unchanged. It cannot detect removing the newest events (a truncated head) or appending
correctly linked forged events at the end, because what remains is still a valid chain. To cover that,
keep a copy of :attr:`VerifyResult.head_hash` (printed by ``ami-auth audit verify``) or of an export
somewhere the database's writers cannot reach, and compare later. Removing the *oldest* events is
detected, since the first remaining event no longer links to :data:`GENESIS_HASH`.

Concurrency
-----------
Two transactions that both read "the last hash" before either commits would fork the chain. So
:func:`record` first takes a lock that is held until the caller's transaction ends, and only then
reads the last hash:

* PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key. This needs READ COMMITTED (the default) or
  SERIALIZABLE; under REPEATABLE READ the snapshot may predate the lock, so :func:`record` refuses.
* SQLite: the stdlib driver's legacy transaction control (Python < 3.16 default) does not BEGIN before
  a SELECT, so a plain "read last hash, then INSERT" reads outside the transaction. :func:`record`
  therefore issues a write that matches no rows first: the driver opens the transaction and SQLite
  grants the single write lock (waiting up to ``busy_timeout``) before the read. In WAL mode SQLite
  refuses to write from a stale snapshot (``SQLITE_BUSY_SNAPSHOT``), so even if the engine is later
  switched to emit its own BEGIN, a race surfaces as an error, never as a fork.
  See https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#sqlite-transactions.

Either way the chain lock is held until the caller commits: record events late in a transaction and
commit promptly.

An event that describes nothing else in a transaction (the proxy's one event per call) can go through
:func:`app.audit_batch.append` instead, which commits it in a transaction of its own together with whatever events other
threads of the process are appending at that moment (group commit: one chain lock, one read of the last hash,
one multi-row INSERT, one commit per batch), so a hundred concurrent calls cost the chain one lock instead of a
hundred. The chain stays right across workers and hosts: a batch is a transaction like any other, taken under
the same lock. :func:`append` returns only once its event is committed, so a crash loses nothing more than
:func:`record` would: the events of calls that had not finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO, cast, get_args

from sqlalchemy import Connection, Row, Table, func, insert, select, text
from sqlalchemy.orm import Session

from app import metrics, webhook_events
from app.audit_details import canonical_json, sanitize_details
from app.errors import AppError
from app.models.audit import AuditEvent
from app.models.base import utcnow

Outcome = Literal["success", "failure", "denied", "untested"]  # untested: a check that could check nothing
OUTCOMES: Final[frozenset[str]] = frozenset(get_args(Outcome))

GENESIS_HASH: Final = "0" * 64
MAX_QUERY_LIMIT: Final = 500


# Column widths from app.models.audit; values that come from the client (user agent, IP) are clipped
# rather than rejected, because an over-long header must not make the audited action fail.
_ACTION_MAX: Final = 80
_ACTOR_MAX: Final = 200
_TARGET_MAX: Final = 200
_IP_MAX: Final = 64
_USER_AGENT_MAX: Final = 400

# pg_advisory_xact_lock key shared by every process writing the chain. Advisory keys are one global
# namespace per database, so it is a spelled-out random-looking constant rather than a small number
# another feature might pick. (First 8 bytes of SHA-256("ami_auth.audit_chain"), as a signed int64.)
PG_CHAIN_LOCK_KEY: Final = int.from_bytes(hashlib.sha256(b"ami_auth.audit_chain").digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class AuditContext:
    """Who acted and from where; the web layer builds it from the request, jobs use the default."""

    actor: str = "system"
    actor_id: int | None = None
    ip: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_id: int | None = None
    problem: str = ""
    # Hash of the newest event that verified (GENESIS_HASH if none). Kept outside the database, it
    # lets a later run notice a truncated head or forged appends, which the chain alone cannot.
    head_hash: str = GENESIS_HASH


# --- hashing -------------------------------------------------------------------------------------


def _iso(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    # Fixed-width microseconds: both SQLite and PostgreSQL store microseconds, so the value read back
    # formats to exactly the same text that was hashed.
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def compute_hash(
    *,
    prev_hash: str,
    at: datetime,
    actor: str,
    actor_id: int | None,
    action: str,
    target: str,
    ip: str,
    user_agent: str,
    outcome: str,
    details: Mapping[str, Any],
) -> str:
    """SHA-256 (hex) of the canonical JSON of an event's fields and the previous event's hash.

    Changing the fields or their encoding invalidates every stored chain; that would need a scheme
    version stored per row.
    """
    payload = {
        "prev_hash": prev_hash,
        "at": _iso(at),
        "actor": actor,
        "actor_id": actor_id,
        "action": action,
        "target": target,
        "ip": ip,
        "user_agent": user_agent,
        "outcome": outcome,
        "details": details,
    }
    return hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()


def _hash_of(event: AuditEvent | Row[Any]) -> str:
    return compute_hash(
        prev_hash=event.prev_hash,
        at=event.at,
        actor=event.actor,
        actor_id=event.actor_id,
        action=event.action,
        target=event.target,
        ip=event.ip,
        user_agent=event.user_agent,
        outcome=event.outcome,
        details=event.details,
    )


# --- writing -------------------------------------------------------------------------------------


def check_isolation(isolation: str) -> None:
    """Refuse to write the chain under REPEATABLE READ (PostgreSQL's ``transaction_isolation`` setting)."""
    if isolation == "repeatable read":
        raise RuntimeError(
            "audit.record needs READ COMMITTED or SERIALIZABLE: under REPEATABLE READ the snapshot "
            "can predate the chain lock and the chain would fork"
        )


def lock_chain(session: Session) -> Connection:
    """Hold the chain's write lock until the caller's transaction ends (see the module docstring); returns
    the session's connection (statements on it skip the ORM's per-execute bookkeeping)."""
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        isolation = connection.execute(
            text("SELECT pg_advisory_xact_lock(:key), current_setting('transaction_isolation')"),
            {"key": PG_CHAIN_LOCK_KEY},
        ).one()[1]
        check_isolation(isolation)
    elif dialect == "sqlite":
        # Matches no rows, but it is DML, so pysqlite emits BEGIN, and SQLite takes the database's
        # write lock before running it; the read of the last hash below then sees the final state.
        connection.execute(_SQLITE_LOCK)
    else:
        raise RuntimeError(f"audit chain locking is not implemented for the {dialect!r} dialect")
    return connection


_TABLE: Final = cast(Table, AuditEvent.__table__)
INSERTED: Final = tuple(c.name for c in _TABLE.columns if c.name != "id")
LAST_HASH: Final = select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
_SQLITE_LOCK: Final = text("UPDATE audit_events SET id = id WHERE 1 = 0")
# Built once: the parameters travel with execute(), so every record() reuses one compiled statement.
_INSERT: Final = insert(_TABLE).returning(_TABLE.c.id)
INSERT_MANY: Final = insert(_TABLE)  # with a list of rows: one multi-row INSERT (SQLAlchemy's insertmanyvalues)


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit]


def record(
    session: Session,
    ctx: AuditContext,
    action: str,
    *,
    target: str = "",
    outcome: Outcome = "success",
    details: Mapping[str, object] | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction (the caller commits or rolls back).

    ``details`` go through :func:`sanitize_details` first, so a credential never reaches the table.
    The row is inserted at once (a Core INSERT … RETURNING id: the unit of work's flush costs more than the
    rest of an audit write), so the returned event has its id and the next :func:`record` in the same
    transaction chains onto it. The returned object is not attached to ``session``: it is a record of
    what was written, and the table is append-only.
    """
    event = new_event(ctx, action, target, outcome, details)
    connection = lock_chain(session)
    # Taken under the lock, so timestamps follow chain order as far as the clock allows.
    link(event, connection.execute(LAST_HASH).scalar() or GENESIS_HASH)
    event.id = connection.execute(_INSERT, {name: getattr(event, name) for name in INSERTED}).scalar_one()
    after_insert(session, event)
    return event


def new_event(
    ctx: AuditContext, action: str, target: str, outcome: Outcome, details: Mapping[str, object] | None
) -> AuditEvent:
    """The event's own fields, checked and clipped (its place in the chain comes later, under the lock)."""
    if not action or len(action) > _ACTION_MAX:
        raise ValueError(f"audit action must be 1-{_ACTION_MAX} characters, got {action!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {sorted(OUTCOMES)}, got {outcome!r}")
    return AuditEvent(
        actor=_clip(ctx.actor, _ACTOR_MAX),
        actor_id=ctx.actor_id,
        action=action,
        target=_clip(target, _TARGET_MAX),
        ip=_clip(ctx.ip, _IP_MAX),
        user_agent=_clip(ctx.user_agent, _USER_AGENT_MAX),
        outcome=outcome,
        details=sanitize_details(details or {}),
    )


def link(event: AuditEvent, prev_hash: str) -> str:
    """Stamp ``event`` (under the chain lock) and link it after ``prev_hash``; return its hash."""
    event.at = utcnow()
    event.prev_hash = prev_hash
    event.hash = _hash_of(event)
    return event.hash


def after_insert(session: Session, event: AuditEvent) -> None:
    metrics.count_audit_event(session, event.action, event.outcome, event.details)  # counted if the caller commits
    webhook_events.from_audit(session, event.action, event.target, event.outcome, event.details)  # same txn


# --- reading -------------------------------------------------------------------------------------

# Plain columns rather than entities: a walk over the whole table should not fill the session's
# identity map, and it must see what the database holds, not an object the session has cached.
_COLUMNS = (
    AuditEvent.id,
    AuditEvent.at,
    AuditEvent.actor,
    AuditEvent.actor_id,
    AuditEvent.action,
    AuditEvent.target,
    AuditEvent.ip,
    AuditEvent.user_agent,
    AuditEvent.outcome,
    AuditEvent.details,
    AuditEvent.prev_hash,
    AuditEvent.hash,
)


def _batches(session: Session, after_id: int, batch: int) -> Iterator[Sequence[Row[Any]]]:
    """Rows in id order, ``batch`` at a time, by keyset (no OFFSET, so each batch costs the same)."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    last_id = after_id
    while True:
        rows = session.execute(
            select(*_COLUMNS).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
        ).all()
        if not rows:
            return
        yield rows
        last_id = rows[-1].id


def verify(session: Session, batch: int = 1000) -> VerifyResult:
    """Walk the chain in id order and report the first event that breaks it.

    Detects an edited event (its fields no longer match its hash), a deleted, inserted or reordered
    event (an event's ``prev_hash`` is not the hash of the event before it) and removed oldest events
    (the first event does not link to the genesis hash). It cannot detect a truncated head or forged
    events appended with correct links; compare :attr:`VerifyResult.head_hash` with a copy kept elsewhere.
    """
    expected_prev = GENESIS_HASH
    prev_id: int | None = None
    checked = 0
    for rows in _batches(session, 0, batch):
        for row in rows:
            checked += 1
            if _hash_of(row) != row.hash:
                return VerifyResult(
                    False,
                    checked,
                    row.id,
                    f"event {row.id} was edited: its contents do not match its hash",
                    expected_prev,
                )
            if row.prev_hash != expected_prev:
                link = f"the hash of event {prev_id}" if prev_id is not None else "the genesis hash"
                return VerifyResult(
                    False,
                    checked,
                    row.id,
                    f"an event before {row.id} was deleted or inserted, or the order changed: "
                    f"its prev_hash does not match {link}",
                    expected_prev,
                )
            expected_prev, prev_id = row.hash, row.id
    return VerifyResult(True, checked, None, "", expected_prev)


def query(
    session: Session,
    *,
    action: str | None = None,
    actor: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    target: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[AuditEvent]:
    """Events matching every given filter, newest first.

    ``since`` is inclusive and ``until`` exclusive (both timezone-aware). For the next page pass the
    last returned event's id as ``before_id``: keyset pagination stays correct while events are added.
    """
    if not 1 <= limit <= MAX_QUERY_LIMIT:
        raise AppError("validation_failed", fields={"limit": f"must be between 1 and {MAX_QUERY_LIMIT}"})
    if outcome is not None and outcome not in OUTCOMES:
        raise AppError("validation_failed", fields={"outcome": f"must be one of {', '.join(sorted(OUTCOMES))}"})
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise AppError("validation_failed", fields={name: "must include a time zone"})

    stmt = select(AuditEvent)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    if actor is not None:
        stmt = stmt.where(AuditEvent.actor == actor)
    if outcome is not None:
        stmt = stmt.where(AuditEvent.outcome == outcome)
    if target is not None:
        stmt = stmt.where(AuditEvent.target == target)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.at < until)
    if before_id is not None:
        stmt = stmt.where(AuditEvent.id < before_id)
    return list(session.scalars(stmt.order_by(AuditEvent.id.desc()).limit(limit)))


def count_after(session: Session, after_id: int = 0) -> int:
    """How many events have an id above ``after_id`` (the length of an export's progress bar)."""
    return session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.id > after_id)) or 0


def event_to_dict(event: AuditEvent | Row[Any]) -> dict[str, Any]:
    """An event as JSON-ready data, including both hashes, so an export can be verified offline."""
    return {
        "id": event.id,
        "at": _iso(event.at),
        "actor": event.actor,
        "actor_id": event.actor_id,
        "action": event.action,
        "target": event.target,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "outcome": event.outcome,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def _export_line(row: Row[Any]) -> str:
    # ASCII-only: no raw U+2028 and friends, which some line readers treat as line breaks. Field order
    # is kept (id first) for people reading the file.
    return json.dumps(event_to_dict(row), separators=(",", ":"), ensure_ascii=True) + "\n"


def export_jsonl(
    session: Session,
    fh: TextIO,
    *,
    after_id: int = 0,
    progress: Callable[[int], None] | None = None,
    batch: int = 1000,
) -> int:
    """Write events with ids above ``after_id`` as JSON lines in id order; return how many.

    ``progress`` is called with the number of events written after each batch. The file is flushed per
    batch, so an interrupted export loses at most the last batch and a partial final line, which the
    CLI's ``--resume`` trims before continuing.
    """
    written = 0
    for rows in _batches(session, after_id, batch):
        fh.write("".join(_export_line(row) for row in rows))
        fh.flush()
        written += len(rows)
        if progress is not None:
            progress(len(rows))
    return written
