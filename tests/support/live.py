"""Serve the real app on 127.0.0.1 in a thread (werkzeug's threaded server) for browser and HTTP tests."""

from __future__ import annotations

import io
import socket
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LiveServer:
    app: Flask
    port: int
    server: BaseWSGIServer

    @property
    def url(self) -> str:
        # Opened as localhost (a secure context: WebAuthn works) while bound to 127.0.0.1.
        return f"http://localhost:{self.port}"


class _ResetReadsAsEnd:
    """A request's input stream on which a connection the client reset reads as ended.

    After each answer werkzeug's server reads what is left of the request; when the client has reset the
    connection meanwhile (Chromium does, with a favicon it no longer needs), that read raises, and the answer is
    then never closed (werkzeug 3.1.9, ``run_wsgi``): the static file it was sending stays open, and its
    ResourceWarning fails whichever test is running (``filterwarnings = error``). Production serves with gunicorn.
    """

    def __init__(self, inner: io.BufferedIOBase) -> None:
        self._inner = inner

    def read(self, size: int = -1) -> bytes:
        try:
            return self._inner.read(size)
        except ConnectionError:
            return b""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# A request still running after this long has every thread's stack printed (to the test's captured stderr): a
# request that hangs is a bug, and the stacks say what it waits on.
SLOW_REQUEST_SECONDS = 4.0


def _print_stacks(request_line: str) -> None:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    lines = [f"live server: still answering {request_line!r} after {SLOW_REQUEST_SECONDS} s; every thread:"]
    for ident, frame in sys._current_frames().items():
        lines.append(f"--- thread {names.get(ident, ident)}")
        lines.extend(line.rstrip() for line in traceback.format_stack(frame))
    print("\n".join(lines), file=sys.stderr, flush=True)


class _Handler(WSGIRequestHandler):
    def setup(self) -> None:
        super().setup()
        self.rfile = cast(io.BufferedIOBase, _ResetReadsAsEnd(self.rfile))

    def run_wsgi(self) -> None:
        watchdog = threading.Timer(SLOW_REQUEST_SECONDS, _print_stacks, args=(self.requestline[:200],))
        watchdog.daemon = True
        watchdog.start()
        try:
            super().run_wsgi()
        finally:
            watchdog.cancel()


@contextmanager
def serve(app: Flask, port: int) -> Iterator[LiveServer]:
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=_Handler)
    thread = threading.Thread(target=server.serve_forever, name=f"live-{port}", daemon=True)
    thread.start()
    try:
        yield LiveServer(app, port, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
