"""A local streaming upstream for the proxy tests: an OpenAI-shaped API (``Authorization: Bearer``, or Anthropic's
``x-api-key``) on 127.0.0.1 that streams as the real one does (server-sent events over chunked transfer
encoding) and notices when its caller goes away, so a test can tell whether the proxy cut an upstream call.

Routes (all need a key from :meth:`StreamUpstream.add_key`, else 401 as OpenAI answers it):

* ``GET /v1/models`` — JSON.
* ``POST /v1/chat/completions`` — ``{"stream": true, "n_events": N, "delay": S}``: N SSE chunks S seconds apart,
  then ``data: [DONE]``; without ``stream`` one JSON answer.
* ``GET /v1/slow?wait=S&id=X`` — waits S seconds before the first byte, watching its socket: if the caller
  closes the connection meanwhile, X is added to :attr:`cancelled` and nothing is sent.
* ``POST /v1/echo`` — streams the request body back (chunked), however it came (Content-Length or chunked).
* ``GET /v1/redirect?to=URL`` — 302 to URL. ``POST /v1/flaky`` — 503 with ``Retry-After: 1``.
* ``GET /v1/limited`` — 429 with ``Retry-After: 7`` and ``x-ratelimit-*``. ``GET /v1/cookie`` — 200 with Set-Cookie.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamUpstream:
    server: ThreadingHTTPServer
    keys: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)
    broken_streams: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_key(self, key: str) -> str:
        self.keys.add(key)
        return key

    def hits(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path]


def _handler(upstream: StreamUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # As real servers do: headers and body go out in separate writes, and Nagle would hold the second
        # until the caller's delayed ACK (40 ms on Linux).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> Iterator[bytes]:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return
                    yield self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            while length > 0:
                chunk = self.rfile.read(min(length, 65536))
                if not chunk:
                    return
                length -= len(chunk)
                yield chunk

        def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, data: Any, headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
            self._reply(status, json.dumps(data).encode(), [("Content-Type", "application/json"), *headers])

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _start_chunked(self, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()

        def _handle(self) -> None:
            split = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(split.query))
            body_chunks = [] if split.path == "/v1/echo" else list(self._body())
            body = b"".join(body_chunks)
            with upstream.lock:
                upstream.seen.append(
                    Seen(self.command, split.path, {k.lower(): v for k, v in self.headers.items()}, len(body), query)
                )
            auth = self.headers.get("Authorization", "")
            key = auth[7:] if auth.startswith("Bearer ") else self.headers.get("x-api-key", "")  # Anthropic's way
            if key not in upstream.keys:
                self._json(401, {"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}})
                return
            # HEAD is GET without the body (RFC 9110 §9.3.2): _reply leaves the body out.
            route = ("GET" if self.command == "HEAD" else self.command, split.path)
            if route == ("GET", "/v1/models"):
                self._json(200, {"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})
            elif route == ("POST", "/v1/chat/completions"):
                try:
                    request = json.loads(body or b"{}")
                except ValueError:
                    request = None
                if not isinstance(request, dict):
                    self._json(400, {"error": {"message": "We could not parse the JSON body of your request."}})
                    return
                self._chat(request)
            elif route == ("GET", "/v1/slow"):
                try:
                    wait = min(float(query.get("wait", "5")), 30.0)
                except ValueError:
                    wait = 0.0
                self._slow(wait, query.get("id", ""))
            elif route == ("POST", "/v1/echo"):
                self._start_chunked(self.headers.get("Content-Type", "application/octet-stream"))
                for chunk in self._body():
                    self._chunk(chunk)
                self._chunk(b"")
            elif route == ("GET", "/v1/redirect") and "to" in query:
                self._reply(302, b"", [("Location", query["to"])])
            elif route == ("POST", "/v1/flaky"):
                self._json(503, {"error": {"message": "overloaded"}}, [("Retry-After", "1")])
            elif route == ("GET", "/v1/limited"):
                headers = [
                    ("Retry-After", "7"),
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-limit-requests", "60"),
                ]
                self._json(429, {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}, headers)
            elif route == ("GET", "/v1/cookie"):
                self._json(
                    200, {"ok": True}, [("Set-Cookie", "vendor=1; Path=/"), ("x-ratelimit-remaining-requests", "59")]
                )
            else:
                self._json(404, {"error": {"message": f"Unknown route {self.command} {split.path}"}})

        def _chat(self, request: dict[str, Any]) -> None:
            if not request.get("stream"):
                self._json(200, {"object": "chat.completion", "choices": [{"message": {"content": "Hello"}}]})
                return
            self._start_chunked("text/event-stream")
            try:
                count, delay = request.get("n_events", 5), request.get("delay", 0.05)
                count = min(int(count), 500) if isinstance(count, int | float) else 5
                delay = min(float(delay), 2.0) if isinstance(delay, int | float) and delay >= 0 else 0.05
                for i in range(count):
                    event = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": f"tok{i} "}}]}
                    self._chunk(f"data: {json.dumps(event)}\n\n".encode())
                    time.sleep(delay)
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")
            except OSError:
                with upstream.lock:
                    upstream.broken_streams += 1
                self.close_connection = True

        def _slow(self, wait: float, ident: str) -> None:
            deadline = time.monotonic() + wait
            sock = self.connection
            while time.monotonic() < deadline:
                readable, _, _ = select.select([sock], [], [], 0.02)
                if readable and sock.recv(1, socket.MSG_PEEK) == b"":
                    with upstream.lock:
                        upstream.cancelled.add(ident)
                    self.close_connection = True
                    return
            self._json(200, {"waited": wait})

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        do_PUT = do_PATCH = do_DELETE = do_HEAD = do_POST

    return Handler


@contextmanager
def running_upstream() -> Iterator[StreamUpstream]:
    """Start the upstream on a free port of 127.0.0.1; stop it (and its threads) at the end."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler, bind_and_activate=False)
    server.request_queue_size = 1024
    server.daemon_threads = True
    server.server_bind()
    server.server_activate()
    upstream = StreamUpstream(server)
    server.RequestHandlerClass = _handler(upstream)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
