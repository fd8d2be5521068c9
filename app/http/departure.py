"""Noticing that an HTTP caller went away while its request waits on something slow (an upstream call).

A WSGI handler learns that its caller left only when a write to the caller's socket fails. A proxied call
to a slow model writes nothing until the model's first token, so a caller that gives up before then would
leave the upstream call (billed by the vendor) running to its end. So while a proxied request waits, its
caller's socket is watched: when the caller closes it (the socket reads as end-of-file), a callback runs
at once (the proxy cuts the upstream connection).

One thread per process watches every registered socket with the platform's selector (epoll on Linux),
however many requests wait; registering and unregistering are cheap. With epoll, a socket registered while
the thread waits is watched at once (the kernel's interest list is shared), so the thread is not woken to
pick it up: a request does not hand the GIL to it twice per call. Other selectors (poll, select) copy the
list when they start waiting, so there the thread is woken through a pipe. It only peeks (``MSG_PEEK``): the
request's own reads are untouched. A socket with unread bytes (a pipelined next request) is not a departure;
it is dropped from the watch rather than polled in a loop.

Only a server that hands the socket to the app can be watched: gunicorn puts it in
``environ["gunicorn.socket"]``. Under another server :func:`caller_socket` is ``None`` and nothing is watched
(the departure is then noticed at the next write, as before).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["Caller", "caller_gone", "caller_socket", "unwatch", "watch"]

_PEEK: Final = socket.MSG_PEEK | socket.MSG_DONTWAIT
Caller = socket.socket
"""The caller's connection, as the server handed it to the app."""


def caller_socket(environ: Mapping[str, Any]) -> socket.socket | None:
    sock = environ.get("gunicorn.socket")
    return sock if isinstance(sock, socket.socket) else None


def caller_gone(sock: socket.socket) -> bool:
    """True if the caller has closed its end (EOF or a reset); never blocks, never consumes a byte."""
    try:
        return sock.recv(1, _PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False  # nothing to read: still there
    except OSError:
        return True  # reset, or the socket is gone


class _Watcher:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        # epoll_wait reports sockets added while it waits; the others need a wake-up to see them.
        self._wake_on_watch = not isinstance(self._selector, getattr(selectors, "EpollSelector", ()))

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="ami-caller-watch", daemon=True)
            self._thread.start()

    def watch(self, sock: socket.socket, on_departure: Callable[[], None]) -> None:
        with self._lock:
            try:
                self._selector.register(sock, selectors.EVENT_READ, on_departure)
            except (KeyError, ValueError, OSError):
                return  # already watched, or already closed
            self._ensure_thread()
        if self._wake_on_watch:
            os.write(self._wake_w, b"x")

    def unwatch(self, sock: socket.socket) -> None:
        with self._lock, contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(sock)

    def _run(self) -> None:
        while True:
            events = self._selector.select(timeout=1.0)
            for key, _ in events:
                if key.fileobj == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                gone = caller_gone(sock)
                self.unwatch(sock)
                if gone:
                    callback: Callable[[], None] = key.data
                    callback()


_watcher: _Watcher | None = None
_create_lock = threading.Lock()


def _get() -> _Watcher:
    global _watcher
    with _create_lock:
        # A forked worker (gunicorn preloads the app) must not share its parent's selector or thread.
        if _watcher is None or _watcher._pid != os.getpid():
            _watcher = _Watcher()
        return _watcher


def watch(sock: socket.socket, on_departure: Callable[[], None]) -> None:
    """Call ``on_departure`` (in the watcher's thread) when the caller closes ``sock``; until :func:`unwatch`."""
    _get().watch(sock, on_departure)


def unwatch(sock: socket.socket) -> None:
    _get().unwatch(sock)
