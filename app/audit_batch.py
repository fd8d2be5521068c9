"""Group commit for events that describe nothing else in a transaction (the proxy's one event per call): see
:mod:`app.audit`'s docstring. :func:`append` commits an event in a transaction of its own, together with whatever
events other threads of the process are appending at that moment: one chain lock, one read of the last hash, one
multi-row INSERT, one commit per batch. It returns once its event is committed, so a crash loses nothing more than
:func:`app.audit.record` would."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Final

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from app.audit import (
    GENESIS_HASH,
    INSERT_MANY,
    INSERTED,
    LAST_HASH,
    AuditContext,
    Outcome,
    after_insert,
    link,
    lock_chain,
    new_event,
)
from app.models.audit import AuditEvent

__all__ = ["BATCH_ATTEMPTS", "BATCH_MAX", "AuditWriter", "Pending", "append"]

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


class AuditWriter:
    """Group commit for one database's chain in one process: the first caller to arrive writes its event and
    every event that queued up meanwhile, as one transaction; the others wait for it and then (if theirs is
    still queued) one of them writes the next batch. A lone caller writes at once, on its own thread (no
    hand-off to another thread: on a busy machine a thread that must be woken can wait milliseconds for a core)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: deque[Pending] = deque()
        self._cond = threading.Condition()
        self._writing = False
        # Kept from one batch to the next while events keep coming (a checkout from the pool costs a round trip
        # for its liveness ping), given back when none is waiting. A broken one is dropped and the batch retried.
        self._connection: Connection | None = None

    def write(self, pending: Pending) -> bool:
        """Append ``pending`` (alone or in a batch); return whether it was committed (a failure is logged)."""
        with self._cond:
            self._queue.append(pending)
            while not pending.done:
                if self._writing:
                    self._cond.wait()
                    continue
                self._writing = True
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), BATCH_MAX))]
                self._cond.release()
                try:
                    committed = self._write_with_retries(batch)
                finally:
                    self._cond.acquire()
                    self._writing = False
                    if not self._queue and self._connection is not None:
                        self._connection.close()
                        self._connection = None
                    for each in batch:
                        each.committed, each.done = committed, True
                    self._cond.notify_all()
        return pending.committed

    def _write_with_retries(self, batch: Sequence[Pending]) -> bool:
        for attempt in range(BATCH_ATTEMPTS):
            try:
                self._write(batch)
            except Exception:
                if self._connection is not None:
                    self._connection.invalidate()
                    self._connection.close()
                    self._connection = None
                if attempt + 1 == BATCH_ATTEMPTS:
                    log.exception("audit: %d events could not be written", len(batch))
                    return False
                time.sleep(0.05 * 2**attempt)
            else:
                return True
        return False

    def _write(self, batch: Sequence[Pending]) -> None:
        if self._connection is None:
            self._connection = self.engine.connect()
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
) -> bool:
    """Append one event in a transaction of its own, batched with whatever other threads of this process are
    appending to the same database at the moment (group commit); return once it is committed (``True``) or
    has failed (``False``, logged). Checks its arguments first, as :func:`record` does (a ``ValueError``)."""
    return _writer(engine).write(Pending(new_event(ctx, action, target, outcome, details)))
