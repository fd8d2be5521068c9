"""What every stand-in shares: the recorded request, the reply, the threaded HTTP server on 127.0.0.1 and
the :class:`Vendor` base class with its failure injection, recording and health checks (README.md)."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in received it. ``headers`` has lower-case names (repeats joined by ", ")."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    query_lists: dict[str, list[str]]
    headers: dict[str, str]
    header_items: tuple[tuple[str, str], ...]
    body: bytes
    form: dict[str, str]
    json: Any
    json_invalid: bool
    received_at: float

    @classmethod
    def parse(cls, method: str, target: str, header_items: Iterable[tuple[str, str]], body: bytes) -> RecordedRequest:
        items = tuple(header_items)
        headers: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        split = urllib.parse.urlsplit(target)
        query_lists = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        form: dict[str, str] = {}
        parsed_json: Any = None
        json_invalid = False
        if content_type == FORM:
            form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("latin-1"), keep_blank_values=True).items()}
        elif content_type == JSON or content_type.endswith("+json"):
            try:
                parsed_json = json.loads(body) if body else None
            except ValueError:
                json_invalid = True
        return cls(
            method=method,
            target=target,
            path=split.path,
            query={k: v[0] for k, v in query_lists.items()},
            query_lists=query_lists,
            headers=headers,
            header_items=items,
            body=body,
            form=form,
            json=parsed_json,
            json_invalid=json_invalid,
            received_at=time.time(),
        )

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def bearer(self, *schemes: str) -> str | None:
        """The credential of ``Authorization: Bearer <x>`` (or another of ``schemes``), scheme case-insensitive."""
        value = self.headers.get("authorization", "")
        scheme, _, credential = value.partition(" ")
        if scheme.lower() in {s.lower() for s in (schemes or ("Bearer",))} and credential.strip():
            return credential.strip()
        return None

    def basic(self) -> tuple[str, str] | None:
        """``(user, password)`` from ``Authorization: Basic``, form-decoded as RFC 6749 §2.3.1 requires."""
        raw = self.bearer("Basic")
        if raw is None:
            return None
        try:
            decoded = base64.b64decode(raw, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)

    def params(self) -> dict[str, str]:
        """Form body, else JSON object body, else query — for endpoints that accept any of them."""
        if self.form:
            return self.form
        if isinstance(self.json, dict):
            return {str(k): str(v) for k, v in self.json.items() if v is not None}
        return dict(self.query)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, data: Any, headers: Iterable[tuple[str, str]] = ()) -> Reply:
        return cls(status, json.dumps(data).encode(), [("Content-Type", "application/json; charset=utf-8"), *headers])

    @classmethod
    def html(cls, status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> Reply:
        return cls(status, text.encode(), [("Content-Type", "text/html; charset=utf-8"), *headers])

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status, b"", [("Location", location)])

    @classmethod
    def empty(cls, status: int = 204, headers: Iterable[tuple[str, str]] = ()) -> Reply:
        return cls(status, b"", list(headers))

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class _Fault:
    status: int | None  # None: hang
    remaining: int | None  # None: until cleared
    path: str | None
    method: str | None
    retry_after: int | str | None
    body: bytes | None
    headers: tuple[tuple[str, str], ...]
    hang_seconds: float | None

    def matches(self, req: RecordedRequest) -> bool:
        if self.method is not None and req.method != self.method.upper():
            return False
        return self.path is None or req.path == self.path or req.path.startswith(self.path.rstrip("/") + "/")


Handler = Callable[[RecordedRequest, "re.Match[str]"], Reply]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


class _Server(ThreadingHTTPServer):
    # Handler threads are joined on server_close, so none outlives the fixture.
    daemon_threads = False

    def __init__(self, host: str, vendor: Vendor) -> None:
        self.vendor = vendor
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__((host, 0), _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections so server_close can join them."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        # A client that gave up (timeout tests) leaves a broken pipe behind: that is the test's point.
        if isinstance(exc, ConnectionError | TimeoutError) or exc is None:
            return
        self.vendor._record_error("".join(traceback.format_exception(exc)))


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment (flushed by handle_one_request), and TCP_NODELAY: otherwise
    # Nagle plus delayed ACK stalls every keep-alive request by ~40 ms.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: _Server

    def version_string(self) -> str:
        return self.server.vendor.server_header

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        req = RecordedRequest.parse(self.command, self.path, self.headers.items(), body)
        reply = self.server.vendor._serve(req)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.status not in (204, 304):
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD" and reply.status not in (204, 304):
            self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Vendor:
    """A stand-in HTTP server with failure injection and request recording (README.md beside this module)."""

    name: ClassVar[str] = "vendor"
    server_header: ClassVar[str] = "stand-in"
    max_hang: ClassVar[float] = 30.0
    """A hang never lasts longer than this, so a forgotten ``release()`` cannot wedge the suite."""

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.clock_offset = 0.0
        """Seconds added to the stand-in's clock (tokens, codes, ``iat``/``exp``): shift time without sleeping."""
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._errors: list[str] = []
        self._hang_generation = 0
        self._stopping = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[Route] = []

    # lifecycle

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError(f"{self.name} stand-in already started")
        self._stopping = False
        self._server = _Server(self.host, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name=f"{self.name}-standin"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        server.shutdown()
        server.drop_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self.name} stand-in is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` — the base URL the app is configured with (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def now(self) -> float:
        return time.time() + self.clock_offset

    # routing

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append(Route(method.upper(), re.compile(pattern), handler))

    def not_found(self, req: RecordedRequest) -> Reply:
        return self.error_reply(404, req)

    def method_not_allowed(self, req: RecordedRequest) -> Reply:
        return self.error_reply(405, req)

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        """The vendor's documented error response for ``status`` (subclasses override the body shape)."""
        reply = Reply.json(status, {"error": {"status": status, "message": reason_phrase(status)}})
        return with_retry_after(reply, retry_after)

    def _dispatch(self, req: RecordedRequest) -> Reply:
        path_matched = False
        for route in self._routes:
            match = route.pattern.fullmatch(req.path)
            if match is None:
                continue
            path_matched = True
            if route.method == req.method or (route.method == "GET" and req.method == "HEAD"):
                return route.handler(req, match)
        return self.method_not_allowed(req) if path_matched else self.not_found(req)

    def _serve(self, req: RecordedRequest) -> Reply:
        with self._changed:
            self._requests.append(req)
            fault = self._take_fault(req)
            self._changed.notify_all()
        try:
            if fault is not None and fault.status is None:
                self._hang(fault.hang_seconds)
            elif fault is not None and fault.status is not None:
                reply = (
                    Reply(fault.status, fault.body, [("Content-Type", "application/json; charset=utf-8")])
                    if fault.body is not None
                    else self.error_reply(fault.status, req, retry_after=fault.retry_after)
                )
                if fault.body is not None:
                    reply = with_retry_after(reply, fault.retry_after)
                reply.headers.extend(fault.headers)
                return reply
            return self._dispatch(req)
        except Exception as exc:
            self._record_error(f"{req.method} {req.target}\n" + "".join(traceback.format_exception(exc)))
            return Reply(500, b"stand-in error (see vendor.errors)", [("Content-Type", "text/plain")])

    # failure injection

    def fail_next(
        self,
        status: int,
        times: int | None = 1,
        *,
        path: str | None = None,
        method: str | None = None,
        retry_after: int | str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (``None``: until ``clear_faults``).

        ``path`` matches the path or anything below it. The body is the vendor's documented error body for
        that status unless ``body`` (bytes, or anything JSON-serialisable) is given. A 429 gets
        ``Retry-After: 120`` unless ``retry_after`` says otherwise.
        """
        if status == 429 and retry_after is None:
            retry_after = 120
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        self._add_fault(_Fault(status, times, path, method, retry_after, raw, tuple((headers or {}).items()), None))

    def rate_limit_next(self, times: int | None = 1, *, retry_after: int | str = 120, path: str | None = None) -> None:
        self.fail_next(429, times, path=path, retry_after=retry_after)

    def hang_next(
        self, times: int | None = 1, *, path: str | None = None, method: str | None = None, seconds: float | None = None
    ) -> None:
        """Hold the next matching responses until ``release()``, ``seconds`` or ``stop()``; then answer normally."""
        self._add_fault(_Fault(None, times, path, method, None, None, (), seconds))

    def held(self, path: str, method: str | None = None) -> HeldRequest:
        """The next request to ``path`` left unanswered until released, with :class:`tests.support.hold.Hold`'s
        ``next``/``wait_held``/``release`` (for ``connections_while_held``)."""
        return HeldRequest(self, path, method)

    def release(self) -> None:
        """Let every hanging request go on."""
        with self._changed:
            self._hang_generation += 1
            self._changed.notify_all()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining is not None and fault.remaining < 1:
            raise ValueError("times must be at least 1 (or None for 'until cleared')")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, req: RecordedRequest) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(req):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _hang(self, seconds: float | None) -> None:
        limit = min(seconds if seconds is not None else self.max_hang, self.max_hang)
        deadline = time.monotonic() + limit
        with self._changed:
            generation = self._hang_generation
            while not self._stopping and self._hang_generation == generation:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)

    # recording

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method.upper())]

    def last_request(self, path: str | None = None) -> RecordedRequest:
        found = self.requests if path is None else self.requests_to(path)
        if not found:
            raise AssertionError(f"{self.name} stand-in received no request" + (f" to {path}" if path else ""))
        return found[-1]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for(self, count: int, path: str | None = None, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until ``count`` requests (to ``path``) have arrived, for work the app does in the background."""

        def matching() -> list[RecordedRequest]:
            return [r for r in self._requests if path is None or r.path == path]

        with self._changed:
            if not self._changed.wait_for(lambda: len(matching()) >= count, timeout):
                raise AssertionError(f"{self.name}: {len(matching())} of {count} requests to {path or '*'} arrived")
            return matching()

    # health

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def _record_error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    def assert_healthy(self) -> None:
        errors = self.errors
        if errors:
            raise AssertionError(f"the {self.name} stand-in failed internally:\n" + "\n".join(errors))


_V = TypeVar("_V", bound=Vendor)


class HeldRequest:
    """See :meth:`Vendor.held`."""

    def __init__(self, vendor: Vendor, path: str, method: str | None) -> None:
        self.vendor, self.path, self.method = vendor, path, method
        self._before = 0

    def next(self) -> None:
        self._before = len(self.vendor.requests_to(self.path, self.method))
        self.vendor.hang_next(path=self.path, method=self.method)

    def wait_held(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.vendor.requests_to(self.path, self.method)) <= self._before:
            if time.monotonic() > deadline:
                raise AssertionError(f"no request to {self.path} arrived to hold")
            time.sleep(0.01)

    def release(self) -> None:
        self.vendor.release()


class StartVendor(Protocol):
    """The ``start_vendor`` fixture's type: ``start_vendor(GitHub(enterprise=True))`` returns that GitHub."""

    def __call__(self, vendor: _V, /) -> _V: ...


def reason_phrase(status: int) -> str:
    return {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        422: "Unprocessable Entity",
        429: "Too Many Requests",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
        529: "Overloaded",
    }.get(status, "Error")


def with_retry_after(reply: Reply, retry_after: int | str | None) -> Reply:
    if retry_after is not None and reply.header("Retry-After") is None:
        reply.headers.append(("Retry-After", str(retry_after)))
    return reply


def random_token(prefix: str, length: int, alphabet: str = "") -> str:
    chars = alphabet or "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "".join(secrets.choice(chars) for _ in range(length))


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
