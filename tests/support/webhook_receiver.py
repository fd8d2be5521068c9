"""A real webhook receiver on 127.0.0.1 that verifies every request with the `standardwebhooks` library.

It keeps what verified (in arrival order) and what did not. It can be down (its port closed, so the
connection is refused), answer 500, or answer 200; the port stays the same across restarts, so the endpoint
registered in AMI Auth keeps pointing at it. It can also leave the next request unanswered until released
(``hold``), as a receiver that hangs does.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.hold import Hold


@dataclass(frozen=True)
class Received:
    webhook_id: str
    body: dict[str, Any]
    raw: bytes
    signature: str


@dataclass
class WebhookReceiver:
    secrets: list[str] = field(default_factory=list)
    answer: int = 200
    port: int = 0
    verified: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    hold: Hold = field(default_factory=Hold)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/ami-auth"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.hold.pause()
                headers = {k.lower(): v for k, v in self.headers.items()}
                ok = False
                for secret in receiver.secrets:
                    try:
                        Webhook(secret).verify(raw, headers)
                        ok = True
                        break
                    except WebhookVerificationError:
                        continue
                with receiver._lock:
                    if not ok:
                        receiver.rejected.append(headers.get("webhook-id", ""))
                        status = 400
                    else:
                        status = receiver.answer
                        if status < 300:
                            receiver.verified.append(
                                Received(headers["webhook-id"], json.loads(raw), raw, headers["webhook-signature"])
                            )
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                body = b"ok" if status < 300 else b"not now"
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def start(self) -> Self:
        if self.port == 0:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.hold.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def ids(self) -> list[str]:
        with self._lock:
            return [r.webhook_id for r in self.verified]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
