"""Group commit for events that describe nothing else in a transaction (the proxy's one event per call): see
:mod:`app.audit`'s docstring. :func:`append` commits an event in a transaction of its own, together with whatever
events other threads of the process are appending at that moment: one chain lock, one read of the last hash, one
multi-row INSERT, one commit per batch. It returns once its event is committed, so a crash loses nothing more than
:func:`app.audit.record` would.

On PostgreSQL a batch is two round trips to the server, not six: the writer keeps one connection of the pool for
as long as its engine lives (no liveness ping per batch; a broken one is replaced and the batch retried), and sends
its statements in pipeline mode (psycopg's, libpq's): the lock and the read of the last hash in one flush, the
INSERT and the COMMIT in the next. A batch with an event that can emit a webhook (none of the proxy's) goes the
ORM way, since the webhook row is written in the same transaction by :func:`app.webhook_events.from_audit`.

:func:`append` with ``wait=False`` hands the event to the process's writer thread instead and returns at once: the
proxy's event, written once the caller has its whole answer, so that neither the caller's next request on the
connection nor the worker's thread waits for the database. Events are committed in order, in batches, within a
round trip or two; the thread waits :data:`GATHER_SECONDS` after the first event of a batch for more to join it
(a write per call would run beside the next call and slow it: the writer's work is Python under the same GIL,
on the same cores); a full queue (:data:`QUEUE_MAX`: the database is slow or down) makes it wait, so the backlog
stays bounded. What is queued is written before the process ends (:func:`drain`: gunicorn's ``worker_exit`` and
``atexit``); only a process killed outright (``SIGKILL``, a crash of the interpreter) loses what it had queued,
at most the calls of the last moments, each of which its caller has already been answered."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

from psycopg.types.json import Json
from sqlalchemy import Connection, Engine, PoolProxiedConnection, event
from sqlalchemy.orm import Session

from app import metrics, webhook_events
from app.audit import (
    GENESIS_HASH,
    INSERT_MANY,
    INSERTED,
    LAST_HASH,
    PG_CHAIN_LOCK_KEY,
    AuditContext,
    Outcome,
    after_insert,
    check_isolation,
    link,
    lock_chain,
    new_event,
)
from app.models.audit import AuditEvent
from app.models.base import UTCDateTime

__all__ = [
    "BATCH_ATTEMPTS",
    "BATCH_MAX",
    "GATHER_SECONDS",
    "IDLE_SECONDS",
    "QUEUE_MAX",
    "AuditWriter",
    "Pending",
    "append",
    "drain",
    "flush",
]

log = logging.getLogger(__name__)


class Pending:
    """An event handed to :func:`append`; :attr:`committed` once it is in the chain."""

    __slots__ = ("committed", "done", "event")

    def __init__(self, event: AuditEvent) -> None:
        self.event = event
        self.committed = False
        self.done = False


BATCH_MAX: Final = 500
# A batch that fails (the database restarting) is tried again this many times, a little later each time.
BATCH_ATTEMPTS: Final = 3
# The writer thread waits this long after the first event it finds queued, for others to join its batch (or
# until BATCH_MAX are queued, or someone flushes). Without it, a lone caller's calls each woke the thread, whose
# write then ran beside the caller's next call: 0.3-0.6 ms more median latency per proxied call
# (bench/proxy.py). Events reach the audit log this much later; flush() does not wait for it.
GATHER_SECONDS: Final = 0.02
# A writer thread with nothing to write for this long ends.
IDLE_SECONDS: Final = 30.0
# Events handed to the writer thread and not yet written, per database and process, before append waits for room.
QUEUE_MAX: Final = 5_000

# PostgreSQL's statements, sent by psycopg itself (pipeline mode); the ORM's versions are in app.audit.
_PG_LOCK: Final = "SELECT pg_advisory_xact_lock(%s), current_setting('transaction_isolation')"
_PG_LAST_HASH: Final = "SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1"
_UTC: Final = UTCDateTime()


class AuditWriter:
    """Group commit for one database's chain in one process: the first caller to arrive writes its event and
    every event that queued up meanwhile, as one transaction; the others wait for it and then (if theirs is
    still queued) one of them writes the next batch. A lone caller writes at once, on its own thread (no
    hand-off to another thread: on a busy machine a thread that must be woken can wait milliseconds for a core)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)  # the registry below is keyed by the engine: no strong reference back
        self._dialect = engine.dialect
        self._queue: deque[Pending] = deque()
        self._cond = threading.Condition()
        self._writing = False
        self._flushing = 0  # threads in flush(): the writer thread does not wait for its batch to fill up
        # SQLite: kept from one batch to the next while events keep coming (a checkout from the pool costs a
        # round trip for its liveness ping), given back when none is waiting. A broken one is dropped and the
        # batch retried.
        self._connection: Connection | None = None
        # PostgreSQL: one connection of the pool, kept until the engine is disposed (or it breaks); in a
        # forked worker, the parent's is left alone and a new one taken.
        self._raw: PoolProxiedConnection | None = None
        self._raw_pid = 0
        self._thread: threading.Thread | None = None
        self._thread_pid = 0
        self._pg_insert = ""
        if self._dialect.name == "postgresql":
            # One row's INSERT in the driver's own parameter style (executemany sends it once per row, pipelined).
            self._pg_insert = str(INSERT_MANY.inline().compile(dialect=self._dialect, column_keys=list(INSERTED)))
            event.listen(engine, "engine_disposed", self._drop_raw)

    def write(self, pending: Pending) -> bool:
        """Append ``pending`` (alone or in a batch); return whether it was committed (a failure is logged)."""
        with self._cond:
            self._queue.append(pending)
            while not pending.done:
                if self._writing:
                    self._cond.wait()
                    continue
                self._write_next_batch()
        return pending.committed

    def submit(self, pending: Pending) -> None:
        """Queue ``pending`` for the writer thread and return (waiting only while :data:`QUEUE_MAX` are queued)."""
        with self._cond:
            if self._thread_pid not in (0, os.getpid()):
                # A forked child: what its parent had queued is the parent's to write, and the parent's thread
                # (and any batch it was writing) did not come along.
                self._queue.clear()
                self._writing = False
                self._flushing = 0
                self._thread = None
            while len(self._queue) >= QUEUE_MAX:
                self._cond.wait()
            self._queue.append(pending)
            if not self._thread_alive():
                self._thread = threading.Thread(target=self._run, name="ami-audit-writer", daemon=True)
                self._thread_pid = os.getpid()
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far is written (or has failed); ``False`` if ``timeout`` ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()  # a writer thread gathering its batch writes it now
            try:
                while self._queue or self._writing:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    if not self._writing and not self._thread_alive():
                        # Nothing else will write them (the thread is gone: a fork, an interpreter ending).
                        self._write_next_batch()
                        continue
                    self._cond.wait(left)
            finally:
                self._flushing -= 1
        return True

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread_pid == os.getpid() and self._thread.is_alive()

    def _run(self) -> None:
        with self._cond:
            while True:
                idle_since = time.monotonic()
                while not self._queue or self._writing:
                    self._cond.wait(IDLE_SECONDS)
                    if not self._queue and time.monotonic() - idle_since >= IDLE_SECONDS:
                        # Nothing to write for a while: end (the next event starts a thread again), so an idle
                        # process holds no thread, and a writer whose engine is gone is not kept alive by one.
                        if self._thread is threading.current_thread():
                            self._thread = None
                        return
                gather_until = time.monotonic() + GATHER_SECONDS
                while not self._flushing and len(self._queue) < BATCH_MAX:
                    left = gather_until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._queue and not self._writing:
                    self._write_next_batch()

    def _write_next_batch(self) -> None:
        """With the condition held and no batch being written: write the next batch (the condition is released
        meanwhile), then wake everyone waiting for theirs."""
        self._writing = True
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), BATCH_MAX))]
        self._cond.release()
        try:
            committed = self._write_with_retries(batch)
        finally:
            self._cond.acquire()
            self._writing = False
            if not self._queue and self._connection is not None:  # SQLite only
                self._connection.close()
                self._connection = None
            for each in batch:
                each.committed, each.done = committed, True
            self._cond.notify_all()

    def _write_with_retries(self, batch: Sequence[Pending]) -> bool:
        for attempt in range(BATCH_ATTEMPTS):
            try:
                self._write(batch)
            except Exception:
                self._drop_broken()
                if attempt + 1 == BATCH_ATTEMPTS:
                    log.exception("audit: %d events could not be written", len(batch))
                    return False
                time.sleep(0.05 * 2**attempt)
            else:
                return True
        return False

    def _drop_broken(self) -> None:
        if self._connection is not None:
            self._connection.invalidate()
            self._connection.close()
            self._connection = None
        if self._raw is not None:
            self._raw.invalidate()
            self._raw = None

    def _drop_raw(self, _engine: Engine) -> None:
        """The engine is disposed: close the kept connection (it is checked out, so dispose leaves it open)."""
        with self._cond:
            raw, self._raw = self._raw, None
        if raw is not None and self._raw_pid == os.getpid():
            raw.invalidate()  # closes it now; a pool being disposed would not take it back

    def _engine_now(self) -> Engine:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the audit writer's engine is gone")
        return engine

    def _write(self, batch: Sequence[Pending]) -> None:
        if self._dialect.name == "postgresql" and not any(
            webhook_events.emits_for(pending.event.action) for pending in batch
        ):
            self._write_pipelined(batch)
            return
        if self._connection is None:
            self._connection = self._engine_now().connect()
        with Session(bind=self._connection) as session:
            connection = lock_chain(session)
            prev_hash = connection.execute(LAST_HASH).scalar() or GENESIS_HASH
            rows = []
            for pending in batch:
                prev_hash = link(pending.event, prev_hash)
                rows.append({name: getattr(pending.event, name) for name in INSERTED})
            connection.execute(INSERT_MANY, rows)
            for pending in batch:
                after_insert(session, pending.event)
            session.commit()

    def _write_pipelined(self, batch: Sequence[Pending]) -> None:
        """PostgreSQL, two round trips: [BEGIN, chain lock, last hash] then [INSERT, COMMIT]. The last hash is
        read by a statement of its own after the lock's, so its snapshot (READ COMMITTED) is taken under the
        lock, as :func:`app.audit.lock_chain` requires."""
        if self._raw is None or self._raw_pid != os.getpid():
            self._raw, self._raw_pid = self._engine_now().raw_connection(), os.getpid()
        pg: Any = self._raw.driver_connection  # psycopg.Connection
        with pg.pipeline() as pipeline:
            locked = pg.execute(_PG_LOCK, (PG_CHAIN_LOCK_KEY,))
            last = pg.execute(_PG_LAST_HASH)
            pipeline.sync()
            check_isolation(locked.fetchone()[1])
            row = last.fetchone()
            prev_hash = row[0] if row is not None else GENESIS_HASH
            rows = []
            for pending in batch:
                prev_hash = link(pending.event, prev_hash)
                values = {name: getattr(pending.event, name) for name in INSERTED}
                values["at"] = _UTC.process_bind_param(values["at"], self._dialect)
                values["details"] = Json(values["details"])
                rows.append(values)
            pg.cursor().executemany(self._pg_insert, rows)
            pg.commit()
        for pending in batch:
            metrics.count_committed_event(pending.event.action, pending.event.outcome, pending.event.details)


# Weak: a disposed engine (tests, a reconfigured app) takes its writer with it.
_writers: weakref.WeakKeyDictionary[Engine, AuditWriter] = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def _writer(engine: Engine) -> AuditWriter:
    found = _writers.get(engine)
    if found is None:
        with _writers_lock:
            found = _writers.setdefault(engine, AuditWriter(engine))
    return found


def append(
    engine: Engine,
    ctx: AuditContext,
    action: str,
    *,
    target: str = "",
    outcome: Outcome = "success",
    details: Mapping[str, object] | None = None,
    wait: bool = True,
) -> bool:
    """Append one event in a transaction of its own, batched with whatever other threads of this process are
    appending to the same database at the moment (group commit); return once it is committed (``True``) or
    has failed (``False``, logged). Checks its arguments first, as :func:`record` does (a ``ValueError``).

    ``wait=False`` hands the event to the process's writer thread and returns ``True`` at once (see the module
    docstring); it is committed in order with the events queued before it."""
    pending = Pending(new_event(ctx, action, target, outcome, details))
    if not wait:
        _writer(engine).submit(pending)
        return True
    return _writer(engine).write(pending)


def flush(engine: Engine, timeout: float | None = None) -> bool:
    """Wait until the events this process handed to ``engine``'s writer thread so far are written."""
    found = _writers.get(engine)
    return found.flush(timeout) if found is not None else True


def drain(timeout: float = 10.0) -> None:
    """Write what every writer of this process has queued (at exit), waiting at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for writer in list(_writers.values()):
        if not writer.flush(max(0.0, deadline - time.monotonic())):
            log.error("audit: events still queued at exit were not written")


atexit.register(drain)
