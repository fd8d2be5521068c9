"""Serve the real app on 127.0.0.1 in a thread (werkzeug's threaded server) for browser and HTTP tests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server


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


@contextmanager
def serve(app: Flask, port: int) -> Iterator[LiveServer]:
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name=f"live-{port}", daemon=True)
    thread.start()
    try:
        yield LiveServer(app, port, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
