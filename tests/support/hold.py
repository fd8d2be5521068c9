"""A test peer's switch to leave its next request unanswered until released, as a peer that hangs does."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from sqlalchemy import Engine
from sqlalchemy.pool import QueuePool

T = TypeVar("T")


class Holds(Protocol):
    """A peer that can leave its next request unanswered: :class:`Hold`, or a vendor stand-in's ``held``."""

    def next(self) -> None: ...

    def wait_held(self, timeout: float = 10.0) -> None: ...

    def release(self) -> None: ...


class Hold:
    """Armed with :meth:`next`; the peer's handler calls :meth:`pause` on each request, which waits (up to 30 s)
    on the first request after arming until :meth:`release`; :meth:`wait_held` waits until that request arrived."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed = False
        self._held = threading.Event()
        self._released = threading.Event()

    def next(self) -> None:
        with self._lock:
            self._armed = True
            self._held.clear()
            self._released.clear()

    def pause(self) -> None:
        with self._lock:
            armed, self._armed = self._armed, False
        if armed:
            self._held.set()
            self._released.wait(30)

    def wait_held(self, timeout: float = 10.0) -> None:
        if not self._held.wait(timeout):
            raise AssertionError("no request arrived to hold")

    def release(self) -> None:
        self._released.set()


def connections_while_held(engine: Engine, hold: Holds, run: Callable[[], T]) -> tuple[int, int, T]:
    """``run`` on a thread of its own, its peer leaving the next request unanswered: how many connections
    ``engine``'s pool had out before, how many while that request hung, and what ``run`` returned (once released).
    A job that waits on a peer with a transaction open ties up a connection the requests share (and, with writes,
    holds back every writer)."""
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    idle = pool.checkedout()
    results: list[T] = []
    hold.next()
    thread = threading.Thread(target=lambda: results.append(run()))
    thread.start()
    try:
        hold.wait_held()
        held = pool.checkedout()
    finally:
        hold.release()
        thread.join(timeout=30)
    return idle, held, results[0]
