"""Rows a process keeps for a second or so (a service token's, a proxied account's), read by one thread at a time.

A hot path (the credential-injecting proxy) reads the same few rows on every call. :class:`Kept` keeps each for
``seconds``; when a copy is due, the first thread to see it reads the row again while the others go on with the
copy they have (for at most ``seconds`` more), instead of every thread serving a call at that moment sending the
same query at once (on a busy worker, dozens of them, once a second). A key with no copy at all is read by
whichever thread needs it.

:meth:`Kept.clear` forgets everything (or what it picks); a read that started before it does not put its (possibly
older) row back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session

__all__ = ["Kept", "session_engine"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def session_engine(db: Session) -> Engine:
    """The engine ``db`` is bound to: kept rows are keyed by it, so two databases in one process never share one."""
    bind = db.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


class Kept(Generic[K, V]):
    """Values per key, each kept ``seconds`` from when its read began; at most ``max_size`` of them."""

    def __init__(self, seconds: float, max_size: int) -> None:
        self.seconds = seconds
        self.max_size = max_size
        self._values: dict[K, tuple[float, V]] = {}
        self._reading: set[K] = set()
        self._generation = 0
        self._lock = threading.Lock()

    def get(self, key: K, read: Callable[[], tuple[V, bool]]) -> V:
        """The kept value of ``key`` while it is fresh; else ``read()``'s value, kept if its flag says so.

        While another thread re-reads a due value, this one gets the copy (if it is younger than twice
        ``seconds``). Whatever ``read`` raises goes to the caller, and nothing is kept.
        """
        now = time.monotonic()
        kept = self._values.get(key)
        if kept is not None and now - kept[0] < self.seconds:
            return kept[1]
        with self._lock:
            kept = self._values.get(key)
            if kept is not None and now - kept[0] < self.seconds:
                return kept[1]
            if key in self._reading:
                if kept is not None and now - kept[0] < 2 * self.seconds:
                    return kept[1]  # another thread is reading it again: use the copy meanwhile
                mine = False
            else:
                self._reading.add(key)
                mine = True
            generation = self._generation
        try:
            value, keep = read()
        finally:
            if mine:
                with self._lock:
                    self._reading.discard(key)
        if keep:
            with self._lock:
                if generation == self._generation:
                    if key not in self._values and len(self._values) >= self.max_size:
                        self._values.clear()
                    self._values[key] = (now, value)
        return value

    def clear(self, where: Callable[[V], bool] | None = None) -> None:
        """Forget every value (or those ``where`` picks); reads under way do not keep theirs."""
        with self._lock:
            if where is None:
                self._values.clear()
            else:
                for key in [key for key, (_, value) in self._values.items() if where(value)]:
                    del self._values[key]
            self._generation += 1

    def replace(self, change: Callable[[V], V]) -> None:
        """Replace each kept value with ``change(value)``, keeping when it was read."""
        with self._lock:
            for key, (read_at, value) in list(self._values.items()):
                self._values[key] = (read_at, change(value))
