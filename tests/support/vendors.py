"""Local stand-ins for the SaaS the tests cannot reach: OpenAI, Anthropic, HuggingFace, a generic API-key
service, Google, GitHub and the Microsoft identity platform / Graph.

Each stand-in is a real HTTP/1.1 server (``http.server.ThreadingHTTPServer`` on 127.0.0.1, port 0) that
serves the vendor's own paths, checks requests the way the vendor documents, and answers with the vendor's
status codes, headers and error bodies. The app reaches a stand-in through the same base-URL settings a
user could set (an OpenAI ``base_url``, a GitHub Enterprise URL, an Azure authority, a discovery URL), so a
test exercises the app's real request code through ``app/net.py``. Where a vendor is known to be odd, the
stand-in is odd in the same way, because that oddity is what the app must cope with:

- OpenAI answers a wrong ``OpenAI-Organization``/``OpenAI-Project`` header with **401**
  ``mismatched_organization`` / ``mismatched_project`` (not 403); its 403 is reserved for blocked regions.
- GitHub's ``/login/oauth/access_token`` reports errors with **HTTP 200** and an ``error`` field, and answers
  urlencoded unless the request says ``Accept: application/json``; ``/user/emails`` is a **404** without the
  ``user``/``user:email`` scope; the REST API refuses requests without ``User-Agent`` (403).
- Google returns refresh tokens only with ``access_type=offline`` on the first consent or with
  ``prompt=consent``; its token response spells ``email``/``profile`` as full ``userinfo.*`` scope URLs;
  its ``hd`` request parameter is only a hint — the ``hd`` *claim* comes from the account.
- Microsoft's discovery for ``common``/``organizations`` has the literal issuer ``…/{tenantid}/v2.0``; ID
  tokens carry the real tenant in ``tid`` and ``iss``; refresh tokens rotate and the old one stays valid.

Every stand-in shares the controls of :class:`Vendor`:

- **Failure injection** — ``fail_next(status, times=1, path=None, retry_after=None)`` answers the next
  matching requests with that status and the vendor's documented error body (429 always carries
  ``Retry-After``; default 120 s, above ``app.net``'s 30 s backoff cap, so the app reports the wait instead of
  sleeping); ``rate_limit_next(...)`` is the 429 shorthand; ``hang_next(times=1, seconds=None)`` holds the
  response until ``release()`` (or ``seconds``, or ``stop()``) to provoke client timeouts. ``times=None``
  means "every matching request until ``clear_faults()``" — remember that ``app.net`` retries idempotent
  requests on 429/5xx, so a single injected 503 on a GET is normally invisible to the user.
- **Recording** — ``requests`` (a snapshot list of :class:`RecordedRequest`: method, path, query, headers with
  lower-case names, raw body, parsed ``form``/``json``), ``requests_to(path, method=None)``,
  ``last_request(path=None)``, ``wait_for(count, path=None)`` and ``clear_requests()``. Injected failures
  are recorded too.
- **Health** — an exception inside a stand-in is answered with a 500, kept in ``errors`` and raised by
  ``assert_healthy()`` (the fixtures call it at teardown), so a broken stand-in never looks like an app bug.

The OAuth stand-ins (:class:`Google`, :class:`GitHub`, :class:`Microsoft`) also share
:class:`OAuthVendor`: ``add_client``, ``add_account``, ``login_as`` (who "signs in" at the auto-approving
authorize endpoint; ``login_hint`` also selects a known account), ``deny_next``, ``approve(url)`` (follow the
authorize redirect like a browser and return the :class:`Callback`), ``mint_tokens`` (a grant without the
browser dance, for seeding many connected accounts), ``expire_access_tokens``, ``revoke_all``, ``grants``
(with per-grant refresh counts), ``rotate_signing_key`` and ``tamper_next_id_token`` (negative tests).

Fixtures live in :mod:`tests.support.vendor_fixtures`; see its docstring for how tests load them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import itertools
import json
import re
import secrets
import socket
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

__all__ = [
    "MSA_TENANT_ID",
    "Anthropic",
    "Callback",
    "GenericApi",
    "GitHub",
    "GitHubEmail",
    "Google",
    "Grant",
    "HuggingFace",
    "Microsoft",
    "OAuthClient",
    "OAuthVendor",
    "OpenAI",
    "RecordedRequest",
    "Reply",
    "StartVendor",
    "Vendor",
    "pkce_pair",
]

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


# --- requests and replies -----------------------------------------------------------------------------


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


# --- the HTTP server ----------------------------------------------------------------------------------


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


# --- the base class -----------------------------------------------------------------------------------


class Vendor:
    """A stand-in HTTP server with failure injection and request recording (see the module docstring)."""

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
        reply = Reply.json(status, {"error": {"status": status, "message": _reason(status)}})
        return _with_retry_after(reply, retry_after)

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
                    reply = _with_retry_after(reply, fault.retry_after)
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


class StartVendor(Protocol):
    """The ``start_vendor`` fixture's type: ``start_vendor(GitHub(enterprise=True))`` returns that GitHub."""

    def __call__(self, vendor: _V, /) -> _V: ...


def _reason(status: int) -> str:
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


def _with_retry_after(reply: Reply, retry_after: int | str | None) -> Reply:
    if retry_after is not None and reply.header("Retry-After") is None:
        reply.headers.append(("Retry-After", str(retry_after)))
    return reply


def _token(prefix: str, length: int, alphabet: str = "") -> str:
    chars = alphabet or "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "".join(secrets.choice(chars) for _ in range(length))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- OpenAI -------------------------------------------------------------------------------------------


@dataclass
class OpenAIKey:
    key: str
    organization: str
    projects: tuple[str, ...]
    region_blocked: bool = False


OPENAI_MODELS: tuple[dict[str, Any], ...] = (
    {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
    {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
    {"id": "text-embedding-3-small", "object": "model", "created": 1705948997, "owned_by": "system"},
    {"id": "whisper-1", "object": "model", "created": 1677532384, "owned_by": "openai-internal"},
)


class OpenAI(Vendor):
    """``GET /v1/models`` (and ``/v1/models/{id}``) with ``Authorization: Bearer``.

    The app's ``base_url`` is :attr:`url` (the stand-in serves ``/v1/...`` under it). Keys belong to one
    organization and a set of projects; the optional ``OpenAI-Organization``/``OpenAI-Project`` headers must
    match them, as at OpenAI.
    """

    name = "openai"
    server_header = "cloudflare"
    NO_KEY = (
        "You didn't provide an API key. You need to provide your API key in an Authorization header using "
        "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if "
        "you're accessing the API from your browser and are prompted for a username and password. You can "
        "obtain an API key from https://platform.openai.com/account/api-keys."
    )

    def __init__(self, *, models: Sequence[Mapping[str, Any]] = OPENAI_MODELS, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.models = [dict(m) for m in models]
        self.keys: dict[str, OpenAIKey] = {}
        self.route("GET", r"/v1/models", self._list)
        self.route("GET", r"/v1/models/(?P<model>[^/]+)", self._get)

    def add_key(
        self,
        key: str | None = None,
        *,
        organization: str | None = None,
        projects: Sequence[str] | None = None,
        region_blocked: bool = False,
    ) -> str:
        """Register a key (a new ``sk-proj-…`` one by default) and return it."""
        key = key or _token("sk-proj-", 48)
        with self._lock:
            self.keys[key] = OpenAIKey(
                key,
                organization or _token("org-", 24),
                tuple(projects) if projects is not None else (_token("proj_", 24),),
                region_blocked,
            )
        return key

    def revoke_key(self, key: str) -> None:
        with self._lock:
            self.keys.pop(key, None)

    @staticmethod
    def mask(key: str) -> str:
        """The key as OpenAI quotes it back: known prefix, stars, last four characters."""
        prefix = next((p for p in ("sk-proj-", "sk-svcacct-", "sk-admin-", "sk-") if key.startswith(p)), "")
        if len(key) <= len(prefix) + 4:
            return key[:2] + "*" * max(0, len(key) - 2)
        return prefix + "*" * (len(key) - len(prefix) - 4) + key[-4:]

    def _error(self, status: int, message: str, type_: str, code: str | None, param: str | None = None) -> Reply:
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        return Reply.json(status, body, self._common_headers())

    def _common_headers(self) -> list[tuple[str, str]]:
        return [("openai-version", "2020-10-01"), ("x-request-id", "req_" + secrets.token_hex(16))]

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        if status == 401:
            key = req.bearer()
            reply = (
                self._error(401, self._incorrect_key(key), "invalid_request_error", "invalid_api_key")
                if key
                else self._error(401, self.NO_KEY, "invalid_request_error", None)
            )
        elif status == 403:
            reply = self._error(
                403,
                "Country, region, or territory not supported",
                "request_forbidden",
                "unsupported_country_region_territory",
            )
        elif status in (404, 405):
            reply = self._error(404, f"Invalid URL ({req.method} {req.path})", "invalid_request_error", None)
        elif status == 429:
            reply = self._error(
                429,
                "Rate limit reached for requests per min (RPM): Limit 500, Used 500, Requested 1. "
                "Please try again in 120ms.",
                "requests",
                "rate_limit_exceeded",
            )
            reply.headers += [("x-ratelimit-limit-requests", "500"), ("x-ratelimit-remaining-requests", "0")]
        elif status == 503:
            reply = self._error(503, "The engine is currently overloaded, please try again later", "server_error", None)
        elif status >= 500:
            reply = self._error(
                status, "The server had an error while processing your request. Sorry about that!", "server_error", None
            )
        else:
            reply = self._error(status, _reason(status), "invalid_request_error", None)
        return _with_retry_after(reply, retry_after)

    def _incorrect_key(self, key: str | None) -> str:
        return (
            f"Incorrect API key provided: {self.mask(key or '')}. "
            "You can find your API key at https://platform.openai.com/account/api-keys."
        )

    def _authorize(self, req: RecordedRequest) -> Reply | None:
        key = req.bearer()
        if key is None:
            return self._error(401, self.NO_KEY, "invalid_request_error", None)
        with self._lock:
            registered = self.keys.get(key)
        if registered is None:
            return self._error(401, self._incorrect_key(key), "invalid_request_error", "invalid_api_key")
        org = req.header("OpenAI-Organization")
        if org is not None and org != registered.organization:
            return self._error(
                401,
                "OpenAI-Organization header should match organization for API key",
                "invalid_request_error",
                "mismatched_organization",
            )
        project = req.header("OpenAI-Project")
        if project is not None and project not in registered.projects:
            return self._error(
                401,
                "OpenAI-Project header should match project for API key",
                "invalid_request_error",
                "mismatched_project",
            )
        if registered.region_blocked:
            return self.error_reply(403, req)
        return None

    def _list(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        refused = self._authorize(req)
        if refused is not None:
            return refused
        return Reply.json(200, {"object": "list", "data": self.models}, self._common_headers())

    def _get(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        refused = self._authorize(req)
        if refused is not None:
            return refused
        for model in self.models:
            if model["id"] == match["model"]:
                return Reply.json(200, model, self._common_headers())
        return self._error(
            404, f"The model '{match['model']}' does not exist", "invalid_request_error", "model_not_found", "model"
        )


# --- Anthropic ----------------------------------------------------------------------------------------


@dataclass
class AnthropicKey:
    key: str
    workspace_id: str | None
    organization_id: str
    permission_denied: bool = False


ANTHROPIC_MODELS: tuple[dict[str, Any], ...] = (
    {
        "type": "model",
        "id": "claude-sonnet-4-20250514",
        "display_name": "Claude Sonnet 4",
        "created_at": "2025-05-22T00:00:00Z",
    },
    {
        "type": "model",
        "id": "claude-3-7-sonnet-20250219",
        "display_name": "Claude Sonnet 3.7",
        "created_at": "2025-02-24T00:00:00Z",
    },
    {
        "type": "model",
        "id": "claude-3-5-haiku-20241022",
        "display_name": "Claude Haiku 3.5",
        "created_at": "2024-10-22T00:00:00Z",
    },
)


class Anthropic(Vendor):
    """``GET /v1/models`` with ``x-api-key`` and ``anthropic-version`` (paginated: ``limit``, ``after_id``,
    ``before_id``). The app's base URL is :attr:`url`."""

    name = "anthropic"
    server_header = "cloudflare"
    VERSIONS: ClassVar[tuple[str, ...]] = ("2023-01-01", "2023-06-01")
    ERROR_TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        405: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    }

    def __init__(self, *, models: Sequence[Mapping[str, Any]] = ANTHROPIC_MODELS, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.models = [dict(m) for m in models]
        self.keys: dict[str, AnthropicKey] = {}
        self.route("GET", r"/v1/models", self._list)
        self.route("GET", r"/v1/models/(?P<model>[^/]+)", self._get)

    def add_key(
        self,
        key: str | None = None,
        *,
        workspace_id: str | None = None,
        organization_id: str | None = None,
        permission_denied: bool = False,
    ) -> str:
        """Register a key (a new ``sk-ant-api03-…`` one by default). ``permission_denied`` keys get a 403."""
        key = key or _token("sk-ant-api03-", 86) + "AA"
        with self._lock:
            self.keys[key] = AnthropicKey(key, workspace_id, organization_id or str(uuid.uuid4()), permission_denied)
        return key

    def revoke_key(self, key: str) -> None:
        with self._lock:
            self.keys.pop(key, None)

    def _error(self, status: int, message: str, type_: str | None = None) -> Reply:
        request_id = "req_" + _token("", 24)
        body = {
            "type": "error",
            "error": {"type": type_ or self.ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": request_id,
        }
        return Reply.json(status, body, [("request-id", request_id)])

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        messages = {
            401: "invalid x-api-key",
            403: "Your API key does not have permission to use the specified resource.",
            404: "Not found",
            405: "Not found",
            429: "Number of requests has exceeded your rate limit. Please try again later.",
            500: "Internal server error",
            503: "Overloaded",
            529: "Overloaded",
        }
        reply = self._error(404 if status == 405 else status, messages.get(status, _reason(status)))
        if status == 429:
            reply.headers += [
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "0"),
            ]
        return _with_retry_after(reply, retry_after)

    def _authorize(self, req: RecordedRequest) -> Reply | AnthropicKey:
        key = req.header("x-api-key")
        if not key:
            return self._error(401, "x-api-key header is required")
        version = req.header("anthropic-version")
        if version is None:
            return self._error(400, "anthropic-version: header is required")
        if version not in self.VERSIONS:
            return self._error(400, f'anthropic-version: "{version}" is not a valid version')
        with self._lock:
            registered = self.keys.get(key)
        if registered is None:
            return self._error(401, "invalid x-api-key")
        if registered.permission_denied:
            return self.error_reply(403, req)
        return registered

    def _list(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        auth = self._authorize(req)
        if isinstance(auth, Reply):
            return auth
        try:
            limit = int(req.query.get("limit", "20"))
        except ValueError:
            return self._error(400, "limit: Input should be a valid integer")
        if not 1 <= limit <= 1000:
            return self._error(400, "limit: Input should be between 1 and 1000")
        ids = [m["id"] for m in self.models]
        after, before = req.query.get("after_id"), req.query.get("before_id")
        if after is not None and before is not None:
            return self._error(400, "Only one of before_id and after_id may be given")
        if after is not None:
            if after not in ids:
                return self._error(404, f"model: {after}")
            start = ids.index(after) + 1
            page = self.models[start : start + limit]
            has_more = start + limit < len(ids)
        elif before is not None:
            if before not in ids:
                return self._error(404, f"model: {before}")
            end = ids.index(before)
            page = self.models[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            page = self.models[:limit]
            has_more = limit < len(ids)
        body = {
            "data": page,
            "has_more": has_more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
        return Reply.json(200, body, self._ok_headers(auth))

    def _ok_headers(self, key: AnthropicKey) -> list[tuple[str, str]]:
        return [("request-id", "req_" + _token("", 24)), ("anthropic-organization-id", key.organization_id)]

    def _get(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        auth = self._authorize(req)
        if isinstance(auth, Reply):
            return auth
        for model in self.models:
            if model["id"] == match["model"]:
                return Reply.json(200, model, self._ok_headers(auth))
        return self._error(404, f"model: {match['model']}")


# --- HuggingFace --------------------------------------------------------------------------------------


@dataclass
class HFUser:
    name: str
    fullname: str
    email: str | None
    orgs: list[tuple[str, str]]
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    is_pro: bool = False


@dataclass
class HFToken:
    token: str
    user: str
    display_name: str
    role: str
    fine_grained: dict[str, Any] | None
    created_at: str


class HuggingFace(Vendor):
    """``GET /api/whoami-v2`` with ``Authorization: Bearer hf_…``. The app's base URL is :attr:`url`.

    ``set_rate_limit(remaining, reset)`` adds the Hub's documented ``RateLimit``/``RateLimit-Policy`` headers
    (IETF draft v9: ``"api";r=<remaining>;t=<seconds to reset>``) to every response, and ``extra_headers``
    adds any others (e.g. ``X-RateLimit-*``).
    """

    name = "huggingface"
    server_header = "huggingface"

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.users: dict[str, HFUser] = {}
        self.tokens: dict[str, HFToken] = {}
        self.rate_limit: tuple[int, int, int, int] | None = None
        self.extra_headers: dict[str, str] = {}
        self.route("GET", r"/api/whoami-v2", self._whoami)

    def add_user(
        self,
        name: str,
        *,
        fullname: str | None = None,
        email: str | None = None,
        orgs: Sequence[tuple[str, str]] = (),
        is_pro: bool = False,
    ) -> HFUser:
        """A Hub user; ``orgs`` is ``[(org_name, roleInOrg)]`` with roles like ``admin``, ``write``, ``read``."""
        user = HFUser(name, fullname or name.title(), email or f"{name}@example.com", list(orgs), is_pro=is_pro)
        with self._lock:
            self.users[name] = user
        return user

    def add_token(
        self,
        user: str = "alice",
        *,
        role: str = "read",
        display_name: str = "ami-auth",
        token: str | None = None,
        fine_grained: Mapping[str, Any] | None = None,
    ) -> str:
        """A token of ``user`` (created if unknown) with ``role`` ``read``, ``write`` or ``fineGrained``."""
        if role not in ("read", "write", "fineGrained"):
            raise ValueError(f"unknown HuggingFace token role {role!r}")
        with self._lock:
            if user not in self.users:
                self.add_user(user)
            token = token or _token("hf_", 34)
            grained = dict(fine_grained) if fine_grained is not None else None
            if role == "fineGrained" and grained is None:
                grained = {"canReadGatedRepos": False, "global": ["inference.serverless.write"], "scoped": []}
            self.tokens[token] = HFToken(token, user, display_name, role, grained, _iso(self.now()))
        return token

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self.tokens.pop(token, None)

    def set_rate_limit(self, remaining: int, reset: int, *, quota: int = 1000, window: int = 300) -> None:
        self.rate_limit = (remaining, reset, quota, window)

    def _headers(self) -> list[tuple[str, str]]:
        headers = [("x-request-id", "Root=1-" + secrets.token_hex(12))]
        if self.rate_limit is not None:
            remaining, reset, quota, window = self.rate_limit
            headers += [
                ("RateLimit", f'"api";r={remaining};t={reset}'),
                ("RateLimit-Policy", f'"fixed window";"api";q={quota};w={window}'),
            ]
        headers += list(self.extra_headers.items())
        return headers

    def _error(self, status: int, message: str) -> Reply:
        return Reply.json(status, {"error": message}, [*self._headers(), ("X-Error-Message", message)])

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        messages = {
            401: "Invalid credentials in Authorization header",
            403: "You don't have the rights to perform this action",
            404: "Sorry, we can't find the page you are looking for.",
            429: "You have exceeded our rate limit for api requests. Please retry later.",
            500: "Internal Error - We're working hard to fix this as soon as possible!",
        }
        reply = self._error(status, messages.get(status, _reason(status)))
        if status == 429 and self.rate_limit is None:
            reset = int(retry_after) if isinstance(retry_after, int) else 300
            reply.headers += [
                ("RateLimit", f'"api";r=0;t={reset}'),
                ("RateLimit-Policy", '"fixed window";"api";q=1000;w=300'),
            ]
        return _with_retry_after(reply, retry_after)

    def _whoami(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        if req.header("authorization") is None:
            return self._error(401, "Invalid username or password.")
        token = req.bearer()
        with self._lock:
            found = self.tokens.get(token or "")
            user = self.users.get(found.user) if found else None
        if found is None or user is None:
            return self._error(401, "Invalid credentials in Authorization header")
        access: dict[str, Any] = {"displayName": found.display_name, "role": found.role, "createdAt": found.created_at}
        if found.fine_grained is not None:
            access["fineGrained"] = found.fine_grained
        body = {
            "type": "user",
            "id": user.id,
            "name": user.name,
            "fullname": user.fullname,
            "email": user.email,
            "emailVerified": True,
            "canPay": False,
            "periodEnd": None,
            "isPro": user.is_pro,
            "avatarUrl": f"/avatars/{hashlib.md5(user.name.encode()).hexdigest()}.svg",
            "orgs": [
                {
                    "type": "org",
                    "id": hashlib.sha1(org.encode()).hexdigest()[:24],
                    "name": org,
                    "fullname": org.title(),
                    "email": None,
                    "canPay": False,
                    "periodEnd": None,
                    "avatarUrl": f"https://cdn-avatars.huggingface.co/{org}.png",
                    "roleInOrg": role,
                    "isEnterprise": False,
                }
                for org, role in user.orgs
            ],
            "auth": {"type": "access_token", "accessToken": access},
        }
        return Reply.json(200, body, self._headers())


# --- Generic API key service --------------------------------------------------------------------------


class GenericApi(Vendor):
    """An API that checks one credential the way it is configured and echoes the request.

    ``auth_type``: ``bearer`` (``Authorization: Bearer <key>``), ``header`` (``<header_name>: <key>``),
    ``basic`` (``Authorization: Basic`` with key:secret) or ``query`` (``?<query_param>=<key>``). Every
    path (or only ``paths``, if given) answers 200 ``{"ok": true, "method", "path", "query", "key_label"}``
    — never echoing the credential — or 401 ``{"error": "unauthorized", "message": …}``.
    """

    name = "generic"
    AUTH_TYPES: ClassVar[tuple[str, ...]] = ("bearer", "header", "basic", "query")

    def __init__(
        self,
        *,
        auth_type: str = "bearer",
        header_name: str = "X-API-Key",
        query_param: str = "api_key",
        paths: Sequence[str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        if auth_type not in self.AUTH_TYPES:
            raise ValueError(f"auth_type must be one of {self.AUTH_TYPES}")
        super().__init__(host=host)
        self.auth_type = auth_type
        self.header_name = header_name
        self.query_param = query_param
        self.paths = tuple(paths) if paths is not None else None
        self.keys: dict[tuple[str, str | None], str] = {}
        for method in ("GET", "POST", "HEAD", "PUT", "DELETE"):
            self.route(method, r"/.*", self._echo)

    def add_key(self, key: str | None = None, *, secret: str | None = None, label: str = "default") -> str:
        """Accept ``key`` (with ``secret`` as the Basic password when ``auth_type='basic'``)."""
        key = key or _token("gk_", 32)
        with self._lock:
            self.keys[(key, secret)] = label
        return key

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        codes = {401: "unauthorized", 403: "forbidden", 404: "not_found", 429: "rate_limited"}
        reply = Reply.json(status, {"error": codes.get(status, "error"), "message": _reason(status)})
        if status == 401:
            reply.headers.append(self._challenge())
        return _with_retry_after(reply, retry_after)

    def _challenge(self) -> tuple[str, str]:
        scheme = "Basic" if self.auth_type == "basic" else "Bearer"
        return ("WWW-Authenticate", f'{scheme} realm="generic"')

    def _credential(self, req: RecordedRequest) -> tuple[str, str | None] | None:
        if self.auth_type == "bearer":
            key = req.bearer()
            return (key, None) if key else None
        if self.auth_type == "header":
            value = req.header(self.header_name)
            return (value, None) if value else None
        if self.auth_type == "basic":
            pair = req.basic()
            return (pair[0], pair[1] or None) if pair else None
        value = req.query.get(self.query_param)
        return (value, None) if value else None

    def _echo(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        if self.paths is not None and req.path not in self.paths:
            return Reply.json(404, {"error": "not_found", "message": "Not Found"})
        credential = self._credential(req)
        with self._lock:
            label = self.keys.get(credential) if credential else None
        if label is None:
            message = "Missing credentials" if credential is None else "Invalid credentials"
            return Reply.json(401, {"error": "unauthorized", "message": message}, [self._challenge()])
        query = {k: v for k, v in req.query.items() if not (self.auth_type == "query" and k == self.query_param)}
        return Reply.json(200, {"ok": True, "method": req.method, "path": req.path, "query": query, "key_label": label})


# --- OAuth plumbing -----------------------------------------------------------------------------------


def pkce_pair(verifier: str | None = None) -> tuple[str, str]:
    """``(code_verifier, S256 code_challenge)`` per RFC 7636 §4.1-4.2."""
    verifier = verifier or _b64url(secrets.token_bytes(48))
    return verifier, _b64url(hashlib.sha256(verifier.encode()).digest())


_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def _pkce_ok(challenge: str, method: str, verifier: str) -> bool:
    if not _VERIFIER.fullmatch(verifier):  # RFC 7636 §4.1
        return False
    if method == "plain":
        return secrets.compare_digest(verifier, challenge)
    return secrets.compare_digest(pkce_pair(verifier)[1], challenge)


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    expiring_tokens: bool = False
    """GitHub only: a GitHub App whose user tokens expire and come with a refresh token."""


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    account: str
    redirect_uri: str | None
    scopes: tuple[str, ...]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    issued_at: float
    offline: bool
    extra: dict[str, Any] = field(default_factory=dict)
    used: bool = False


@dataclass
class Grant:
    """What one authorization produced: the refresh token (if any), its access tokens, and how often it
    was refreshed — so a test can assert "refreshed exactly once" at the provider."""

    client_id: str
    account: str
    scopes: tuple[str, ...]
    refresh_token: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    access_tokens: list[str] = field(default_factory=list)
    old_refresh_tokens: list[str] = field(default_factory=list)
    refreshes: int = 0
    revoked: bool = False
    refresh_expires_at: float | None = None


@dataclass
class AccessToken:
    token: str
    grant: Grant
    expires_at: float | None


@dataclass(frozen=True)
class Callback:
    """Where the authorize endpoint sent the browser: ``url`` (the full redirect for query mode, the form
    action for ``form_post``), the response parameters, and the HTTP method the browser would use."""

    url: str
    params: dict[str, str]
    method: str = "GET"

    @property
    def code(self) -> str:
        return self.params["code"]


_KEY_POOL: list[rsa.RSAPrivateKey] = []
_KEY_POOL_SIZE = 6
_key_counter = itertools.count()
_key_lock = threading.Lock()


def _signing_key() -> RSAKey:
    """A fresh-kid RSA key; the key material is reused from a small pool because generating RSA keys is
    the slowest thing a stand-in does. Distinct kids keep each stand-in's JWKS its own."""
    with _key_lock:
        n = next(_key_counter)
        if len(_KEY_POOL) < _KEY_POOL_SIZE:
            _KEY_POOL.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        native = _KEY_POOL[n % _KEY_POOL_SIZE]
    # Wrapping the native key: importing a private JWK again would re-validate it (~90 ms).
    return RSAKey(native, native, parameters={"kid": secrets.token_hex(20), "use": "sig", "alg": "RS256"})


class OAuthVendor(Vendor):
    """Shared OAuth 2.0 / OIDC machinery: clients, accounts, codes with PKCE, grants, RS256 ID tokens."""

    code_ttl: float = 600.0
    access_token_ttl: int = 3599
    token_endpoint_paths: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.clients: dict[str, OAuthClient] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self._grants: list[Grant] = []
        self._access: dict[str, AccessToken] = {}
        self._refresh_tokens: dict[str, Grant] = {}
        self._current_login: str | None = None
        self._deny: tuple[str, str | None] | None = None
        self._keys: list[RSAKey] = [_signing_key()]
        self._tamper: tuple[dict[str, Any], tuple[str, ...], bool] | None = None

    # accounts and clients (subclasses define add_account and _accounts)

    def _account_keys(self) -> list[str]:
        raise NotImplementedError

    def login_as(self, account: str) -> None:
        """The account that "signs in" at the next authorizations (default: the first one added)."""
        if account not in self._account_keys():
            raise KeyError(f"unknown {self.name} account {account!r}")
        self._current_login = account

    def deny_next(self, error: str = "access_denied", description: str | None = None) -> None:
        """The next authorization is declined by the user: the browser is sent back with ``error``."""
        self._deny = (error, description)

    def _signed_in(self, hint: str | None) -> str | None:
        keys = self._account_keys()
        if hint and hint in keys:
            return hint
        if self._current_login is not None:
            return self._current_login
        return keys[0] if keys else None

    def _take_deny(self) -> tuple[str, str | None] | None:
        with self._lock:
            deny, self._deny = self._deny, None
        return deny

    def _register_client(self, client: OAuthClient) -> OAuthClient:
        with self._lock:
            self.clients[client.client_id] = client
        return client

    # codes and tokens

    def _issue_code(self, code: str, **fields: Any) -> str:
        with self._lock:
            self.codes[code] = AuthorizationCode(code=code, issued_at=self.now(), **fields)
        return code

    def _redeem(self, code_value: str, client_id: str) -> tuple[AuthorizationCode | None, str]:
        """The code if usable by ``client_id``, else ``(None, reason)`` with reason missing/used/expired."""
        with self._lock:
            code = self.codes.get(code_value)
            if code is None or code.client_id != client_id:
                return None, "missing"
            if code.used:
                # RFC 6749 §4.1.2: a reused code SHOULD revoke what it issued.
                for grant in self._grants:
                    if grant.extra.get("code") == code_value:
                        self._revoke_grant(grant)
                return None, "used"
            if self.now() > code.issued_at + self.code_ttl:
                return None, "expired"
            code.used = True
            return code, ""

    def _new_grant(
        self, client_id: str, account: str, scopes: Sequence[str], refresh: str | None, **extra: Any
    ) -> Grant:
        grant = Grant(client_id, account, tuple(scopes), refresh, extra=dict(extra))
        with self._lock:
            self._grants.append(grant)
            if refresh is not None:
                self._refresh_tokens[refresh] = grant
        return grant

    def _new_access_token(self, grant: Grant, token: str, ttl: int | None) -> str:
        with self._lock:
            self._access[token] = AccessToken(token, grant, self.now() + ttl if ttl is not None else None)
            grant.access_tokens.append(token)
        return token

    def _rotate_refresh(self, grant: Grant, new: str, *, keep_old: bool) -> None:
        with self._lock:
            if grant.refresh_token is not None:
                grant.old_refresh_tokens.append(grant.refresh_token)
                if not keep_old:
                    self._refresh_tokens.pop(grant.refresh_token, None)
            grant.refresh_token = new
            self._refresh_tokens[new] = grant

    def _revoke_grant(self, grant: Grant) -> None:
        # The tokens stay indexed (and are refused as revoked) so a vendor can say "revoked" rather than
        # "unknown" where it does (Microsoft's AADSTS50173).
        with self._lock:
            grant.revoked = True

    def access_token_info(self, token: str | None) -> AccessToken | None:
        """The live access token, or None if unknown, revoked or expired."""
        with self._lock:
            found = self._access.get(token or "")
        if found is None or found.grant.revoked:
            return None
        if found.expires_at is not None and self.now() >= found.expires_at:
            return None
        return found

    def refresh_grant(self, token: str | None) -> Grant | None:
        with self._lock:
            grant = self._refresh_tokens.get(token or "")
        if grant is None or grant.revoked:
            return None
        if grant.refresh_expires_at is not None and self.now() >= grant.refresh_expires_at:
            return None
        return grant

    @property
    def grants(self) -> list[Grant]:
        with self._lock:
            return list(self._grants)

    def expire_access_tokens(self, account: str | None = None) -> None:
        """Every access token (of ``account``) is expired from now on; refresh tokens stay valid."""
        with self._lock:
            for info in self._access.values():
                if account is None or info.grant.account == account:
                    info.expires_at = self.now() - 1

    def revoke_all(self, account: str | None = None) -> None:
        """The user (or an admin) removed the app's access at the provider: every token of ``account`` dies."""
        with self._lock:
            for grant in self._grants:
                if account is None or grant.account == account:
                    self._revoke_grant(grant)

    def mint_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], *, offline: bool = True
    ) -> dict[str, Any]:
        """A grant as if the user had just authorized ``client_id``; returns the token response body."""
        raise NotImplementedError

    # client authentication

    def _client_credentials(self, req: RecordedRequest, params: Mapping[str, str]) -> tuple[str | None, str | None]:
        """``(client_id, client_secret)`` from Basic (RFC 6749 §2.3.1) or the body."""
        basic = req.basic()
        if basic is not None:
            return basic
        return params.get("client_id"), params.get("client_secret")

    # ID tokens

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            keys = list(self._keys)
        return {"keys": [self._public_jwk(k) for k in keys]}

    def _public_jwk(self, key: RSAKey) -> dict[str, Any]:
        data = dict(key.as_dict(private=False))
        data.setdefault("use", "sig")
        data.setdefault("alg", "RS256")
        return data

    def rotate_signing_key(self, *, keep_old: bool = True) -> str:
        """Sign with a new key from now on; return its kid. ``keep_old`` leaves the old key in the JWKS."""
        key = _signing_key()
        with self._lock:
            self._keys = [key, *self._keys] if keep_old else [key]
        return str(key.kid)

    def tamper_next_id_token(
        self, claims: Mapping[str, Any] | None = None, *, drop: Sequence[str] = (), unsigned: bool = False
    ) -> None:
        """The next ID token gets ``claims`` overridden, ``drop`` removed, or ``alg: none`` if ``unsigned``."""
        self._tamper = (dict(claims or {}), tuple(drop), unsigned)

    def sign_id_token(self, claims: dict[str, Any]) -> str:
        with self._lock:
            tamper, self._tamper = self._tamper, None
            key = self._keys[0]
        if tamper is not None:
            overrides, drop, unsigned = tamper
            claims = {k: v for k, v in {**claims, **overrides}.items() if k not in drop}
            if unsigned:
                header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
                return f"{header}.{_b64url(json.dumps(claims).encode())}."
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)

    @staticmethod
    def at_hash(access_token: str) -> str:
        """OIDC Core §3.1.3.6: left half of SHA-256 of the access token, base64url."""
        return _b64url(hashlib.sha256(access_token.encode()).digest()[:16])

    # the browser side

    def approve(self, authorize_url: str) -> Callback:
        """Open ``authorize_url`` as the browser would and return where the stand-in sent it back.

        Raises AssertionError when the stand-in shows an error page instead (wrong client or redirect URI).
        """
        # verify=False: the stand-ins speak plain http, and loading a CA bundle costs ~30 ms per client.
        with httpx.Client(follow_redirects=False, trust_env=False, verify=False) as client:
            response = client.get(authorize_url)
        if response.status_code in (301, 302, 303, 307):
            location = response.headers["location"]
            split = urllib.parse.urlsplit(location)
            params = dict(urllib.parse.parse_qsl(split.query or split.fragment, keep_blank_values=True))
            return Callback(location, params)
        if response.status_code == 200 and "<form" in response.text:
            action = re.search(r'action="([^"]+)"', response.text)
            fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', response.text)
            assert action is not None
            return Callback(html.unescape(action.group(1)), {k: html.unescape(v) for k, v in fields}, method="POST")
        raise AssertionError(f"{self.name} authorize answered {response.status_code}: {response.text[:300]}")

    @staticmethod
    def _with_params(url: str, params: Mapping[str, str | None], *, fragment: bool = False) -> str:
        clean = {k: v for k, v in params.items() if v is not None}
        split = urllib.parse.urlsplit(url)
        if fragment:
            return urllib.parse.urlunsplit(split._replace(fragment=urllib.parse.urlencode(clean)))
        query = urllib.parse.parse_qsl(split.query, keep_blank_values=True) + list(clean.items())
        return urllib.parse.urlunsplit(split._replace(query=urllib.parse.urlencode(query)))

    @staticmethod
    def _form_post(action: str, params: Mapping[str, str | None]) -> Reply:
        """``response_mode=form_post`` (OAuth 2.0 Form Post Response Mode): an auto-submitting form."""
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if v is not None
        )
        return Reply.html(
            200,
            f'<html><body onload="document.forms[0].submit()"><form method="POST" action="{html.escape(action)}">'
            f"{inputs}</form></body></html>",
        )

    def _token_headers(self) -> list[tuple[str, str]]:
        # RFC 6749 §5.1: token responses must not be cached.
        return [("Cache-Control", "no-store"), ("Pragma", "no-cache")]


# --- Google -------------------------------------------------------------------------------------------


@dataclass
class GoogleAccount:
    email: str
    name: str
    given_name: str
    family_name: str
    sub: str
    email_verified: bool
    hd: str | None
    picture: str
    locale: str = "en"


GOOGLE_SCOPE_URLS = {
    "email": "https://www.googleapis.com/auth/userinfo.email",
    "profile": "https://www.googleapis.com/auth/userinfo.profile",
}


class Google(OAuthVendor):
    """Google's OpenID Provider: discovery at ``/.well-known/openid-configuration`` (issuer = :attr:`url`),
    JWKS at ``/oauth2/v3/certs``, authorize at ``/o/oauth2/v2/auth``, ``POST /token``, userinfo at
    ``/v1/userinfo`` (and ``/oauth2/v3/userinfo``), ``POST /revoke``.

    The app is configured with :attr:`url` as the discovery base (or the individual endpoint URLs).
    """

    name = "google"
    server_header = "ESF"

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.accounts: dict[str, GoogleAccount] = {}
        self._consented: set[tuple[str, str]] = set()
        self.route("GET", r"/\.well-known/openid-configuration", self._discovery)
        self.route("GET", r"/oauth2/v3/certs", lambda req, m: Reply.json(200, self.jwks()))
        self.route("GET", r"/o/oauth2/v2/auth", self._authorize)
        self.route("POST", r"/token", self._token)
        self.route("GET", r"/v1/userinfo", self._userinfo)
        self.route("GET", r"/oauth2/v3/userinfo", self._userinfo)
        self.route("POST", r"/revoke", self._revoke)

    def _account_keys(self) -> list[str]:
        return list(self.accounts)

    def add_client(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uris: Sequence[str] = (),
    ) -> OAuthClient:
        return self._register_client(
            OAuthClient(
                client_id or f"{secrets.randbelow(10**12):012d}-{_token('', 32).lower()}.apps.googleusercontent.com",
                client_secret or _token("GOCSPX-", 28),
                list(redirect_uris),
            )
        )

    def add_account(
        self,
        email: str,
        *,
        name: str | None = None,
        hd: str | None = None,
        email_verified: bool = True,
        sub: str | None = None,
    ) -> GoogleAccount:
        """A Google account; ``hd`` is its Workspace domain (None for consumer accounts)."""
        name = name or email.split("@")[0].replace(".", " ").title()
        given, _, family = name.partition(" ")
        account = GoogleAccount(
            email=email,
            name=name,
            given_name=given,
            family_name=family,
            sub=sub or str(10**20 + secrets.randbelow(9 * 10**20)),
            email_verified=email_verified,
            hd=hd,
            picture=f"https://lh3.googleusercontent.com/a/{_token('', 20)}=s96-c",
        )
        with self._lock:
            self.accounts[email] = account
        return account

    def discovery(self) -> dict[str, Any]:
        url = self.url
        return {
            "issuer": url,
            "authorization_endpoint": f"{url}/o/oauth2/v2/auth",
            "token_endpoint": f"{url}/token",
            "userinfo_endpoint": f"{url}/v1/userinfo",
            "revocation_endpoint": f"{url}/revoke",
            "jwks_uri": f"{url}/oauth2/v3/certs",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": [
                "aud",
                "email",
                "email_verified",
                "exp",
                "family_name",
                "given_name",
                "iat",
                "iss",
                "name",
                "picture",
                "sub",
            ],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        }

    def _discovery(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        return Reply.json(200, self.discovery())

    # errors

    def _oauth_error(self, status: int, error: str, description: str) -> Reply:
        return Reply.json(status, {"error": error, "error_description": description}, self._token_headers())

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        if req.path in ("/token", "/revoke"):
            errors = {
                400: ("invalid_request", "Bad Request"),
                401: ("invalid_client", "Unauthorized"),
                403: ("access_denied", "Forbidden"),
                429: ("rate_limit_exceeded", "Rate Limit Exceeded"),
                503: ("temporarily_unavailable", "Service Unavailable"),
            }
            error, description = errors.get(status, ("internal_failure", "Backend Error"))
            reply = self._oauth_error(status, error, description)
        else:
            statuses = {
                400: "INVALID_ARGUMENT",
                401: "UNAUTHENTICATED",
                403: "PERMISSION_DENIED",
                404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED",
                503: "UNAVAILABLE",
            }
            reply = Reply.json(
                status,
                {"error": {"code": status, "message": _reason(status), "status": statuses.get(status, "INTERNAL")}},
            )
            if status == 401:
                reply.headers.append(("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"'))
        return _with_retry_after(reply, retry_after)

    def _error_page(self, status: int, error: str, detail: str) -> Reply:
        # Google shows these on its own page: it must not redirect to an unverified redirect_uri (RFC 6749
        # §4.1.2.1).
        return Reply.html(
            status,
            f"<html><title>Error {status} ({html.escape(error)})</title><body><h1>Access blocked: "
            f"authorization error</h1><p>Error {status}: {html.escape(error)}</p><p>{html.escape(detail)}</p>"
            "</body></html>",
        )

    # endpoints

    def _authorize(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        q = req.query
        client = self.clients.get(q.get("client_id", ""))
        if client is None:
            return self._error_page(401, "invalid_client", "The OAuth client was not found.")
        redirect_uri = q.get("redirect_uri")
        if not redirect_uri or redirect_uri not in client.redirect_uris:
            return self._error_page(400, "redirect_uri_mismatch", f"redirect_uri={redirect_uri}")
        state = q.get("state")
        if q.get("response_type") != "code":
            return Reply.redirect(
                self._with_params(redirect_uri, {"error": "unsupported_response_type", "state": state})
            )
        scope = q.get("scope", "").split()
        if not scope:
            return self._error_page(400, "invalid_request", "Missing required parameter: scope")
        unknown = [s for s in scope if s not in ("openid", "email", "profile") and not s.startswith("https://")]
        if unknown:
            return self._error_page(400, "invalid_scope", f"Some requested scopes were invalid: {unknown}")
        challenge, method = q.get("code_challenge"), q.get("code_challenge_method")
        if method is not None and (challenge is None or method not in ("S256", "plain")):
            return self._error_page(400, "invalid_request", "Invalid code_challenge_method or missing code_challenge")
        access_type = q.get("access_type", "online")
        if access_type not in ("online", "offline"):
            return self._error_page(400, "invalid_request", f"Invalid access_type: {access_type}")
        deny = self._take_deny()
        if deny is not None:
            return Reply.redirect(self._with_params(redirect_uri, {"error": deny[0], "state": state}))
        account_key = self._signed_in(q.get("login_hint"))
        prompts = set(q.get("prompt", "").split())
        if account_key is None:
            return Reply.redirect(self._with_params(redirect_uri, {"error": "login_required", "state": state}))
        consented = (client.client_id, account_key) in self._consented
        if "none" in prompts and not consented:
            return Reply.redirect(self._with_params(redirect_uri, {"error": "consent_required", "state": state}))
        # Google hands out a refresh token only when the consent screen was shown for an offline request.
        offline = access_type == "offline" and (not consented or "consent" in prompts)
        with self._lock:
            self._consented.add((client.client_id, account_key))
        account = self.accounts[account_key]
        code = self._issue_code(
            _token("4/0A", 60),
            client_id=client.client_id,
            account=account_key,
            redirect_uri=redirect_uri,
            scopes=tuple(scope),
            nonce=q.get("nonce"),
            code_challenge=challenge,
            code_challenge_method=(method or "plain") if challenge else None,
            offline=offline,
        )
        params = {
            "state": state,
            "code": code,
            "scope": self._granted_scope(scope),
            "authuser": "0",
            "hd": account.hd,
            "prompt": "consent" if not consented or "consent" in prompts else "none",
        }
        return Reply.redirect(self._with_params(redirect_uri, params))

    @staticmethod
    def _granted_scope(scopes: Sequence[str]) -> str:
        return " ".join(GOOGLE_SCOPE_URLS.get(s, s) for s in scopes)

    def _authenticate(self, req: RecordedRequest) -> OAuthClient | Reply:
        client_id, secret = self._client_credentials(req, req.form)
        client = self.clients.get(client_id or "")
        if client is None:
            return self._oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if not secret:
            return self._oauth_error(400, "invalid_request", "client_secret is missing.")
        if not secrets.compare_digest(secret, client.client_secret):
            return self._oauth_error(401, "invalid_client", "Unauthorized")
        return client

    def _token(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        form = req.form
        grant_type = form.get("grant_type", "")
        if grant_type not in ("authorization_code", "refresh_token"):
            return self._oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        client = self._authenticate(req)
        if isinstance(client, Reply):
            return client
        if grant_type == "refresh_token":
            return self._refresh_grant(client, form)
        if not form.get("code"):
            return self._oauth_error(400, "invalid_request", "Missing required parameter: code")
        if not form.get("redirect_uri"):
            return self._oauth_error(400, "invalid_request", "Missing parameter: redirect_uri")
        code, _ = self._redeem(form["code"], client.client_id)
        if code is None:
            return self._oauth_error(400, "invalid_grant", "Bad Request")
        if form["redirect_uri"] != code.redirect_uri:
            return self._oauth_error(400, "redirect_uri_mismatch", "Bad Request")
        if code.code_challenge is not None:
            verifier = form.get("code_verifier")
            if not verifier:
                return self._oauth_error(400, "invalid_grant", "Missing code verifier.")
            if not _pkce_ok(code.code_challenge, code.code_challenge_method or "plain", verifier):
                return self._oauth_error(400, "invalid_grant", "Invalid code verifier.")
        body = self._grant_tokens(client.client_id, code.account, code.scopes, code.offline, code.nonce, code.code)
        return Reply.json(200, body, self._token_headers())

    def _grant_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], offline: bool, nonce: str | None, code: str | None
    ) -> dict[str, Any]:
        refresh = _token("1//0", 100) if offline else None
        grant = self._new_grant(client_id, account, scopes, refresh, code=code)
        access = self._new_access_token(grant, _token("ya29.", 150), self.access_token_ttl)
        body: dict[str, Any] = {
            "access_token": access,
            "expires_in": self.access_token_ttl,
            "scope": self._granted_scope(scopes),
            "token_type": "Bearer",
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        if "openid" in scopes:
            body["id_token"] = self._id_token(client_id, account, scopes, access, nonce)
        return body

    def mint_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], *, offline: bool = True
    ) -> dict[str, Any]:
        if client_id not in self.clients or account not in self.accounts:
            raise KeyError("unknown client or account")
        with self._lock:
            self._consented.add((client_id, account))
        return self._grant_tokens(client_id, account, scopes, offline, None, None)

    def _id_token(self, client_id: str, account_key: str, scopes: Sequence[str], access: str, nonce: str | None) -> str:
        account = self.accounts[account_key]
        now = int(self.now())
        claims: dict[str, Any] = {
            "iss": self.url,
            "azp": client_id,
            "aud": client_id,
            "sub": account.sub,
            "at_hash": self.at_hash(access),
            "iat": now,
            "exp": now + 3600,
        }
        if account.hd:
            claims["hd"] = account.hd
        if "email" in scopes:
            claims.update(email=account.email, email_verified=account.email_verified)
        if "profile" in scopes:
            claims.update(
                name=account.name,
                picture=account.picture,
                given_name=account.given_name,
                family_name=account.family_name,
            )
        if nonce is not None:
            claims["nonce"] = nonce
        return self.sign_id_token(claims)

    def _refresh_grant(self, client: OAuthClient, form: Mapping[str, str]) -> Reply:
        token = form.get("refresh_token")
        if not token:
            return self._oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
        grant = self.refresh_grant(token)
        if grant is None or grant.client_id != client.client_id:
            return self._oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        with self._lock:
            grant.refreshes += 1
        access = self._new_access_token(grant, _token("ya29.", 150), self.access_token_ttl)
        # Google keeps the refresh token: the response has none.
        body: dict[str, Any] = {
            "access_token": access,
            "expires_in": self.access_token_ttl,
            "scope": self._granted_scope(grant.scopes),
            "token_type": "Bearer",
        }
        if "openid" in grant.scopes:
            body["id_token"] = self._id_token(client.client_id, grant.account, grant.scopes, access, None)
        return Reply.json(200, body, self._token_headers())

    def _userinfo(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        info = self.access_token_info(req.bearer())
        if info is None:
            return Reply.json(
                401,
                {"error": "invalid_request", "error_description": "Invalid Credentials"},
                [("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/", error="invalid_token"')],
            )
        account = self.accounts[info.grant.account]
        body: dict[str, Any] = {"sub": account.sub}
        if "profile" in info.grant.scopes:
            body.update(
                name=account.name,
                given_name=account.given_name,
                family_name=account.family_name,
                picture=account.picture,
            )
        if "email" in info.grant.scopes:
            body.update(email=account.email, email_verified=account.email_verified)
        if account.hd:
            body["hd"] = account.hd
        return Reply.json(200, body)

    def _revoke(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        token = req.form.get("token") or req.query.get("token")
        if not token:
            return self._oauth_error(400, "invalid_request", "Missing required parameter: token")
        with self._lock:
            access = self._access.get(token)
            grant = access.grant if access is not None else self._refresh_tokens.get(token)
        if grant is None or grant.revoked:
            return self._oauth_error(400, "invalid_token", "Token expired or revoked")
        # Google revokes the whole grant, whichever of its tokens was sent.
        self._revoke_grant(grant)
        return Reply.json(200, {})


# --- GitHub -------------------------------------------------------------------------------------------


@dataclass
class GitHubEmail:
    email: str
    primary: bool = False
    verified: bool = True
    visibility: str | None = None


@dataclass
class GitHubAccount:
    login: str
    id: int
    name: str | None
    emails: list[GitHubEmail]
    public_email: str | None
    company: str | None = None
    created_at: str = "2015-03-14T09:26:53Z"


class GitHub(OAuthVendor):
    """GitHub's OAuth web flow and the REST endpoints the app uses.

    ``/login/oauth/authorize``, ``POST /login/oauth/access_token``, and the API (``GET /user``,
    ``GET /user/emails``, ``DELETE /applications/{client_id}/token``, ``DELETE /applications/{client_id}/grant``)
    at the root like ``api.github.com``, or under ``/api/v3`` when ``enterprise=True`` like GitHub Enterprise
    Server. The app's "GitHub URL" is :attr:`url`; its API base URL is :attr:`api_url`. Clients added with
    ``expiring_tokens=True`` behave like GitHub Apps: user tokens expire (``expires_in`` 8 h) and come with
    a rotating refresh token.
    """

    name = "github"
    server_header = "github.com"
    access_token_ttl = 28800
    refresh_token_ttl = 15811200
    DOCS = "https://docs.github.com/rest"
    TOKEN_ERRORS: ClassVar[dict[str, str]] = {
        "incorrect_client_credentials": "The client_id and/or client_secret passed are incorrect.",
        "redirect_uri_mismatch": "The redirect_uri MUST match the registered callback URL for this application.",
        "bad_verification_code": "The code passed is incorrect or expired.",
        "bad_refresh_token": "The refresh token passed is incorrect or expired.",
        "unsupported_grant_type": "The grant type is not supported.",
    }

    def __init__(self, *, enterprise: bool = False, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.enterprise = enterprise
        self.accounts: dict[str, GitHubAccount] = {}
        self._ids = itertools.count(583231)
        api = "/api/v3" if enterprise else ""
        self.route("GET", r"/login/oauth/authorize", self._authorize)
        self.route("POST", r"/login/oauth/access_token", self._token)
        self.route("GET", rf"{api}/user", self._user)
        self.route("GET", rf"{api}/user/emails", self._emails)
        self.route("DELETE", rf"{api}/applications/(?P<client_id>[^/]+)/token", self._revoke_token)
        self.route("DELETE", rf"{api}/applications/(?P<client_id>[^/]+)/grant", self._revoke_grant_endpoint)

    @property
    def api_url(self) -> str:
        return self.url + ("/api/v3" if self.enterprise else "")

    def _account_keys(self) -> list[str]:
        return list(self.accounts)

    def add_client(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uris: Sequence[str] = (),
        *,
        expiring_tokens: bool = False,
    ) -> OAuthClient:
        """An OAuth app (or a GitHub App with ``expiring_tokens``). ``redirect_uris`` are its callback URLs."""
        prefix = "Iv23li" if expiring_tokens else "Ov23li"
        return self._register_client(
            OAuthClient(
                client_id or _token(prefix, 14),
                client_secret or secrets.token_hex(20),
                list(redirect_uris),
                expiring_tokens,
            )
        )

    def add_account(
        self,
        login: str,
        *,
        name: str | None = None,
        emails: Sequence[GitHubEmail | str] | None = None,
        public_email: str | None = None,
        company: str | None = None,
    ) -> GitHubAccount:
        """A GitHub user. Plain-string ``emails``: the first is primary, all verified, visibility private."""
        parsed: list[GitHubEmail] = []
        for i, item in enumerate(emails if emails is not None else [f"{login}@users.example.com"]):
            if isinstance(item, str):
                parsed.append(
                    GitHubEmail(item, primary=i == 0, verified=True, visibility="private" if i == 0 else None)
                )
            else:
                parsed.append(item)
        account = GitHubAccount(login, next(self._ids), name, parsed, public_email, company)
        with self._lock:
            self.accounts[login] = account
        return account

    # errors

    def _api_error(self, status: int, message: str, docs: str | None = None) -> Reply:
        body = {"message": message, "documentation_url": docs or self.DOCS, "status": str(status)}
        return Reply.json(status, body, self._api_headers())

    def _api_headers(self, scopes: Sequence[str] | None = None) -> list[tuple[str, str]]:
        headers = [
            ("X-GitHub-Media-Type", "github.v3; format=json"),
            ("X-GitHub-Request-Id", f"{secrets.token_hex(2).upper()}:{secrets.token_hex(3).upper()}"),
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4999"),
            ("x-ratelimit-reset", str(int(self.now()) + 3600)),
            ("x-ratelimit-used", "1"),
            ("x-ratelimit-resource", "core"),
        ]
        if scopes is not None:
            headers.append(("X-OAuth-Scopes", ", ".join(scopes)))
        return headers

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        messages = {
            401: "Bad credentials",
            403: "Forbidden",
            404: "Not Found",
            405: "Not Found",
            422: "Validation Failed",
            429: "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            500: "Server Error",
            503: "Service Unavailable",
        }
        reply = self._api_error(status, messages.get(status, _reason(status)))
        if status == 429:
            reply.headers = [(k, "0" if k == "x-ratelimit-remaining" else v) for k, v in reply.headers]
        return _with_retry_after(reply, retry_after)

    def _token_error(self, req: RecordedRequest, error: str) -> Reply:
        anchor = error.replace("_", "-")
        body = {
            "error": error,
            "error_description": self.TOKEN_ERRORS[error],
            "error_uri": "https://docs.github.com/apps/managing-oauth-apps/"
            f"troubleshooting-oauth-app-access-token-request-errors/#{anchor}",
        }
        # GitHub reports token errors with HTTP 200.
        return self._token_reply(req, body)

    def _token_reply(self, req: RecordedRequest, body: Mapping[str, Any]) -> Reply:
        accept = (req.header("accept") or "").lower()
        if "application/json" in accept:
            return Reply.json(200, body, self._token_headers())
        if "application/xml" in accept:
            inner = "".join(f"<{k}>{html.escape(str(v))}</{k}>" for k, v in body.items())
            return Reply(200, f"<OAuth>{inner}</OAuth>".encode(), [("Content-Type", "application/xml; charset=utf-8")])
        encoded = urllib.parse.urlencode({k: str(v) for k, v in body.items()})
        return Reply(200, encoded.encode(), [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")])

    # OAuth endpoints

    @staticmethod
    def _redirect_allowed(client: OAuthClient, redirect_uri: str) -> bool:
        """GitHub: same scheme, host and port as a callback URL, and a path at or below its path."""
        target = urllib.parse.urlsplit(redirect_uri)
        for callback in client.redirect_uris:
            base = urllib.parse.urlsplit(callback)
            if (target.scheme, target.netloc) != (base.scheme, base.netloc):
                continue
            prefix = base.path.rstrip("/")
            if target.path == base.path or target.path.startswith(prefix + "/"):
                return True
        return False

    def _authorize(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        q = req.query
        client = self.clients.get(q.get("client_id", ""))
        if client is None or not client.redirect_uris:
            return Reply.html(404, "<html><body><h1>404 - page not found</h1></body></html>")
        state = q.get("state")
        redirect_uri = q.get("redirect_uri") or client.redirect_uris[0]
        docs = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/"
        if not self._redirect_allowed(client, redirect_uri):
            return Reply.redirect(
                self._with_params(
                    client.redirect_uris[0],
                    {
                        "error": "redirect_uri_mismatch",
                        "error_description": self.TOKEN_ERRORS["redirect_uri_mismatch"],
                        "error_uri": docs + "#redirect-uri-mismatch",
                        "state": state,
                    },
                )
            )
        challenge, method = q.get("code_challenge"), q.get("code_challenge_method")
        if challenge is not None and (method or "S256") != "S256":
            return Reply.html(400, "<html><body><h1>Only S256 code challenges are supported</h1></body></html>")
        deny = self._take_deny()
        if deny is not None:
            return Reply.redirect(
                self._with_params(
                    redirect_uri,
                    {
                        "error": deny[0],
                        "error_description": deny[1] or "The user has denied your application access.",
                        "error_uri": docs + "#access-denied",
                        "state": state,
                    },
                )
            )
        account = self._signed_in(q.get("login"))
        if account is None:
            return Reply.html(200, "<html><body>Sign in to GitHub</body></html>")
        raw_scope = q.get("scope", "")
        scopes = tuple(s for s in re.split(r"[\s,]+", raw_scope) if s) if not client.expiring_tokens else ()
        code = self._issue_code(
            secrets.token_hex(10),
            client_id=client.client_id,
            account=account,
            redirect_uri=q.get("redirect_uri"),
            scopes=scopes,
            nonce=None,
            code_challenge=challenge,
            code_challenge_method="S256" if challenge else None,
            offline=client.expiring_tokens,
        )
        return Reply.redirect(self._with_params(redirect_uri, {"code": code, "state": state}))

    def _token(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        params = {**req.query, **req.params()} if req.method == "POST" else req.query
        client_id, secret = self._client_credentials(req, params)
        client = self.clients.get(client_id or "")
        if client is None or not secret or not secrets.compare_digest(secret, client.client_secret):
            return self._token_error(req, "incorrect_client_credentials")
        grant_type = params.get("grant_type", "authorization_code")
        if grant_type == "refresh_token":
            return self._refresh(req, client, params)
        if grant_type != "authorization_code":
            return self._token_error(req, "unsupported_grant_type")
        code, _why = self._redeem(params.get("code", ""), client.client_id)
        if code is None:
            return self._token_error(req, "bad_verification_code")
        sent_redirect = params.get("redirect_uri")
        if sent_redirect is not None and code.redirect_uri is not None and sent_redirect != code.redirect_uri:
            return self._token_error(req, "redirect_uri_mismatch")
        if code.code_challenge is not None and not _pkce_ok(
            code.code_challenge, "S256", params.get("code_verifier", "")
        ):
            return self._token_error(req, "bad_verification_code")
        return self._token_reply(req, self._grant_tokens(client, code.account, code.scopes, code.code))

    def _grant_tokens(
        self, client: OAuthClient, account: str, scopes: Sequence[str], code: str | None
    ) -> dict[str, Any]:
        if client.expiring_tokens:
            refresh = _token("ghr_", 76)
            grant = self._new_grant(client.client_id, account, (), refresh, code=code)
            grant.refresh_expires_at = self.now() + self.refresh_token_ttl
            access = self._new_access_token(grant, _token("ghu_", 36), self.access_token_ttl)
            return {
                "access_token": access,
                "expires_in": self.access_token_ttl,
                "refresh_token": refresh,
                "refresh_token_expires_in": self.refresh_token_ttl,
                "scope": "",
                "token_type": "bearer",
            }
        grant = self._new_grant(client.client_id, account, scopes, None, code=code)
        access = self._new_access_token(grant, _token("gho_", 36), None)
        return {"access_token": access, "scope": ",".join(scopes), "token_type": "bearer"}

    def mint_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], *, offline: bool = True
    ) -> dict[str, Any]:
        client = self.clients[client_id]
        if account not in self.accounts:
            raise KeyError(f"unknown GitHub account {account!r}")
        return self._grant_tokens(client, account, scopes, None)

    def _refresh(self, req: RecordedRequest, client: OAuthClient, params: Mapping[str, str]) -> Reply:
        grant = self.refresh_grant(params.get("refresh_token"))
        if not client.expiring_tokens or grant is None or grant.client_id != client.client_id:
            return self._token_error(req, "bad_refresh_token")
        refresh = _token("ghr_", 76)
        with self._lock:
            grant.refreshes += 1
            # Each refresh token works once at GitHub.
            self._rotate_refresh(grant, refresh, keep_old=False)
            grant.refresh_expires_at = self.now() + self.refresh_token_ttl
        access = self._new_access_token(grant, _token("ghu_", 36), self.access_token_ttl)
        body = {
            "access_token": access,
            "expires_in": self.access_token_ttl,
            "refresh_token": refresh,
            "refresh_token_expires_in": self.refresh_token_ttl,
            "scope": "",
            "token_type": "bearer",
        }
        return self._token_reply(req, body)

    # REST API

    def _api_auth(self, req: RecordedRequest, docs: str) -> AccessToken | Reply:
        if not req.header("user-agent"):
            return Reply.html(
                403,
                "Request forbidden by administrative rules. Please make sure your request has a User-Agent header "
                "(https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). "
                "Check https://developer.github.com for other possible causes.",
            )
        if req.header("authorization") is None:
            return self._api_error(401, "Requires authentication", docs)
        info = self.access_token_info(req.bearer("Bearer", "token"))
        if info is None:
            return self._api_error(401, "Bad credentials")
        return info

    def _user_json(self, account: GitHubAccount) -> dict[str, Any]:
        html_base = self.url
        api = self.api_url
        return {
            "login": account.login,
            "id": account.id,
            "node_id": "MDQ6VXNlcj" + _b64url(str(account.id).encode()),
            "avatar_url": f"https://avatars.githubusercontent.com/u/{account.id}?v=4",
            "gravatar_id": "",
            "url": f"{api}/users/{account.login}",
            "html_url": f"{html_base}/{account.login}",
            "type": "User",
            "user_view_type": "public",
            "site_admin": False,
            "name": account.name,
            "company": account.company,
            "blog": "",
            "location": None,
            "email": account.public_email,
            "hireable": None,
            "bio": None,
            "twitter_username": None,
            "public_repos": 3,
            "public_gists": 0,
            "followers": 1,
            "following": 0,
            "created_at": account.created_at,
            "updated_at": account.created_at,
        }

    def _user(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        info = self._api_auth(req, "https://docs.github.com/rest/users/users#get-the-authenticated-user")
        if isinstance(info, Reply):
            return info
        account = self.accounts[info.grant.account]
        return Reply.json(200, self._user_json(account), self._api_headers(info.grant.scopes))

    def _emails(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        docs = "https://docs.github.com/rest/users/emails#list-email-addresses-for-the-authenticated-user"
        info = self._api_auth(req, docs)
        if isinstance(info, Reply):
            return info
        client = self.clients.get(info.grant.client_id)
        expiring = client is not None and client.expiring_tokens
        if not expiring and not {"user", "user:email"} & set(info.grant.scopes):
            # GitHub hides endpoints a token has no scope for behind a 404.
            reply = self._api_error(404, "Not Found", docs)
            reply.headers += [("X-OAuth-Scopes", ", ".join(info.grant.scopes)), ("X-Accepted-OAuth-Scopes", "user")]
            return reply
        account = self.accounts[info.grant.account]
        body = [
            {"email": e.email, "primary": e.primary, "verified": e.verified, "visibility": e.visibility}
            for e in account.emails
        ]
        reply = Reply.json(200, body, self._api_headers(info.grant.scopes))
        reply.headers.append(("X-Accepted-OAuth-Scopes", "user"))
        return reply

    def _app_auth(self, req: RecordedRequest, client_id: str) -> OAuthClient | Reply:
        basic = req.basic()
        docs = "https://docs.github.com/rest/apps/oauth-applications#delete-an-app-token"
        if basic is None:
            return self._api_error(401, "Requires authentication", docs)
        client = self.clients.get(client_id)
        if client is None or basic[0] != client_id or not secrets.compare_digest(basic[1], client.client_secret):
            return self._api_error(404, "Not Found", docs)
        return client

    def _token_from_body(self, req: RecordedRequest) -> str | Reply:
        if req.json_invalid:
            return self._api_error(400, "Problems parsing JSON")
        token = req.json.get("access_token") if isinstance(req.json, dict) else None
        if not isinstance(token, str) or not token:
            return self._api_error(422, 'Invalid request.\n\n"access_token" wasn\'t supplied.')
        return token

    def _revoke_token(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        client = self._app_auth(req, match["client_id"])
        if isinstance(client, Reply):
            return client
        token = self._token_from_body(req)
        if isinstance(token, Reply):
            return token
        info = self.access_token_info(token)
        if info is None or info.grant.client_id != client.client_id:
            return self._api_error(404, "Not Found")
        with self._lock:
            self._access.pop(token, None)
        return Reply.empty(204, self._api_headers())

    def _revoke_grant_endpoint(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        client = self._app_auth(req, match["client_id"])
        if isinstance(client, Reply):
            return client
        token = self._token_from_body(req)
        if isinstance(token, Reply):
            return token
        info = self.access_token_info(token)
        if info is None or info.grant.client_id != client.client_id:
            return self._api_error(404, "Not Found")
        with self._lock:
            for grant in self._grants:
                if grant.client_id == client.client_id and grant.account == info.grant.account:
                    self._revoke_grant(grant)
        return Reply.empty(204, self._api_headers())


# --- Microsoft identity platform / Graph ---------------------------------------------------------------


MSA_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
"""The tenant of personal Microsoft accounts (``consumers``)."""

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


@dataclass
class MicrosoftAccount:
    upn: str
    name: str
    tenant_id: str
    oid: str
    mail: str | None
    roles: list[str]
    given_name: str
    surname: str

    @property
    def personal(self) -> bool:
        return self.tenant_id == MSA_TENANT_ID


class Microsoft(OAuthVendor):
    """The Microsoft identity platform (v2.0 endpoints) and Microsoft Graph ``/v1.0/me`` on one server.

    ``/{tenant}/v2.0/.well-known/openid-configuration``, ``/{tenant}/oauth2/v2.0/authorize``,
    ``/{tenant}/oauth2/v2.0/token``, ``/{tenant}/discovery/v2.0/keys`` (and ``/discovery/v2.0/keys``),
    Graph ``GET /v1.0/me`` and ``GET /oidc/userinfo``. ``{tenant}`` is ``common``, ``organizations``,
    ``consumers``, a tenant GUID or a verified domain. The app's authority is :attr:`url` (the
    ``login.microsoftonline.com`` part) and its Graph base URL is :attr:`url` too. ``/me`` needs a token
    with ``User.Read`` (the documented least privilege for it); otherwise Graph answers 403.
    """

    name = "microsoft"
    server_header = "Microsoft-IIS/10.0"
    GRAPH_SCOPES: ClassVar[tuple[str, ...]] = ("user.read", "https://graph.microsoft.com/user.read", ".default")

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.tenants: dict[str, str] = {}  # tenant id -> primary domain
        self.accounts: dict[str, MicrosoftAccount] = {}
        self.keep_old_refresh_tokens = True
        """Microsoft rotates refresh tokens on use but the previous one stays valid."""
        t = r"(?P<tenant>[^/]+)"
        self.route("GET", rf"/{t}/v2\.0/\.well-known/openid-configuration", self._discovery)
        self.route("GET", rf"/{t}/oauth2/v2\.0/authorize", self._authorize)
        self.route("POST", rf"/{t}/oauth2/v2\.0/token", self._token)
        self.route("GET", rf"/{t}/discovery/v2\.0/keys", self._keys_endpoint)
        self.route("GET", r"/discovery/v2\.0/keys", self._keys_endpoint)
        self.route("GET", r"/v1\.0/me", self._me)
        self.route("GET", r"/oidc/userinfo", self._userinfo)

    def _account_keys(self) -> list[str]:
        return list(self.accounts)

    def add_tenant(self, tenant_id: str | None = None, *, domain: str | None = None) -> str:
        tenant_id = tenant_id or str(uuid.uuid4())
        with self._lock:
            self.tenants[tenant_id] = domain or f"tenant{len(self.tenants) + 1}.onmicrosoft.com"
        return tenant_id

    def add_client(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uris: Sequence[str] = (),
    ) -> OAuthClient:
        return self._register_client(
            OAuthClient(
                client_id or str(uuid.uuid4()),
                client_secret or _token("", 3) + "8Q~" + _token("", 34),
                list(redirect_uris),
            )
        )

    def add_account(
        self,
        upn: str,
        *,
        tenant: str | None = None,
        name: str | None = None,
        mail: str | None = None,
        roles: Sequence[str] = (),
        personal: bool = False,
    ) -> MicrosoftAccount:
        """A work account in ``tenant`` (default: the first tenant, created if none), or a personal
        Microsoft account (``personal=True``, tenant ``MSA_TENANT_ID``). ``roles`` are app roles."""
        if personal:
            tenant_id = MSA_TENANT_ID
        else:
            tenant_id = tenant or (next(iter(self.tenants)) if self.tenants else self.add_tenant())
            if tenant_id not in self.tenants:
                raise KeyError(f"unknown tenant {tenant_id!r}: add_tenant() first")
        name = name or upn.split("@")[0].replace(".", " ").title()
        given, _, surname = name.partition(" ")
        account = MicrosoftAccount(
            upn, name, tenant_id, str(uuid.uuid4()), mail if mail is not None else upn, list(roles), given, surname
        )
        with self._lock:
            self.accounts[upn] = account
        return account

    # tenants

    def _resolve_tenant(self, segment: str) -> str | None:
        """``common``/``organizations``/``consumers`` as given; a GUID or domain as the tenant id."""
        if segment in ("common", "organizations"):
            return segment
        if segment == "consumers" or segment == MSA_TENANT_ID:
            return MSA_TENANT_ID
        if _GUID.fullmatch(segment) and segment.lower() in self.tenants:
            return segment.lower()
        for tenant_id, domain in self.tenants.items():
            if domain.lower() == segment.lower():
                return tenant_id
        return None

    def issuer_for(self, tenant_id: str) -> str:
        return f"{self.url}/{tenant_id}/v2.0"

    def discovery(self, segment: str) -> dict[str, Any]:
        resolved = self._resolve_tenant(segment)
        issuer_tenant = "{tenantid}" if resolved in ("common", "organizations") else resolved
        base = f"{self.url}/{segment}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self.url}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.url}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "cloud_instance_name",
                "cloud_instance_host_name",
                "cloud_graph_host_name",
                "msgraph_host",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": None if resolved in ("common", "organizations", MSA_TENANT_ID) else "WW",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": urllib.parse.urlsplit(self.url).netloc,
            "rbac_url": "https://pas.windows.net",
        }

    # errors

    def _aad_error(self, status: int, error: str, code: int, message: str) -> Reply:
        now = datetime.now(UTC)
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": error,
            "error_description": f"AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {correlation} "
            f"Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"{self.url}/error?code={code}",
        }
        return Reply.json(status, body, self._token_headers())

    def _graph_error(self, status: int, code: str, message: str) -> Reply:
        request_id = str(uuid.uuid4())
        body = {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": request_id,
                    "client-request-id": request_id,
                },
            }
        }
        return Reply.json(status, body, [("request-id", request_id), ("client-request-id", request_id)])

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        if req.path.startswith(("/v1.0/", "/oidc/")):
            codes = {
                400: ("BadRequest", "Bad request."),
                401: ("InvalidAuthenticationToken", "Access token validation failure."),
                403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
                404: ("Request_ResourceNotFound", "Resource not found."),
                429: ("TooManyRequests", "Too many requests."),
                503: ("serviceNotAvailable", "Service unavailable."),
            }
            code, message = codes.get(status, ("generalException", "General exception while processing."))
            reply = self._graph_error(status, code, message)
        else:
            aad = {
                400: (
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'grant_type'.",
                ),
                401: ("invalid_client", 7000215, "Invalid client secret provided."),
                403: ("access_denied", 50105, "The signed in user is not assigned to a role for the application."),
                404: ("invalid_request", 90002, "Tenant not found."),
                429: (
                    "temporarily_unavailable",
                    50196,
                    "The server terminated an operation because it encountered a client request loop.",
                ),
            }
            error, code_n, message = aad.get(
                status, ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again.")
            )
            reply = self._aad_error(status, error, code_n, message)
        return _with_retry_after(reply, retry_after)

    def _error_page(self, status: int, code: int, message: str) -> Reply:
        return Reply.html(
            status,
            f"<html><title>Sign in to your account</title><body><h1>Sorry, but we're having trouble signing you in."
            f"</h1><p>AADSTS{code}: {html.escape(message)}</p></body></html>",
        )

    # endpoints

    def _discovery(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        segment = match["tenant"]
        if self._resolve_tenant(segment) is None:
            return self._aad_error(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{segment}' not found. Check to make sure you have the correct tenant ID and are signing "
                "into the correct cloud.",
            )
        return Reply.json(200, self.discovery(segment))

    def _keys_endpoint(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        keys = self.jwks()
        for key in keys["keys"]:
            key["x5t"] = key["kid"]
            key["issuer"] = f"{self.url}/{{tenantid}}/v2.0"
        return Reply.json(200, keys)

    def _tenant_allows(self, segment_tenant: str, account: MicrosoftAccount) -> bool:
        if segment_tenant == "common":
            return True
        if segment_tenant == "organizations":
            return not account.personal
        return account.tenant_id == segment_tenant

    def _authorize(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        q = req.query
        segment_tenant = self._resolve_tenant(match["tenant"])
        if segment_tenant is None:
            return self._error_page(400, 90002, f"Tenant '{match['tenant']}' not found.")
        client_id = q.get("client_id", "")
        client = self.clients.get(client_id)
        if client is None:
            return self._error_page(
                400, 700016, f"Application with identifier '{client_id}' was not found in the directory."
            )
        redirect_uri = q.get("redirect_uri") or (client.redirect_uris[0] if len(client.redirect_uris) == 1 else "")
        if redirect_uri not in client.redirect_uris:
            return self._error_page(
                400,
                50011,
                f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs "
                f"configured for the application '{client_id}'.",
            )
        state = q.get("state")
        mode = q.get("response_mode", "query")
        if mode not in ("query", "fragment", "form_post"):
            return self._error_page(400, 900144, f"Invalid response_mode '{mode}'.")

        def answer(params: dict[str, str | None]) -> Reply:
            if mode == "form_post":
                return self._form_post(redirect_uri, params)
            return Reply.redirect(self._with_params(redirect_uri, params, fragment=mode == "fragment"))

        if q.get("response_type") != "code":
            return answer(
                {
                    "error": "unsupported_response_type",
                    "error_description": "AADSTS700054: response_type "
                    f"'{q.get('response_type')}' is not enabled for the application.",
                    "state": state,
                }
            )
        scopes = q.get("scope", "").split()
        if not scopes:
            return answer(
                {
                    "error": "invalid_request",
                    "error_description": "AADSTS900144: The request body must contain the "
                    "following parameter: 'scope'.",
                    "state": state,
                }
            )
        challenge, method = q.get("code_challenge"), q.get("code_challenge_method")
        if challenge is not None and (method or "plain") not in ("S256", "plain"):
            return answer(
                {
                    "error": "invalid_request",
                    "error_description": "AADSTS501491: Invalid code_challenge_method.",
                    "state": state,
                }
            )
        deny = self._take_deny()
        if deny is not None:
            description = deny[1] or "AADSTS65004: User declined to consent to access the app."
            return answer({"error": deny[0], "error_description": description, "state": state})
        account_key = self._signed_in(q.get("login_hint"))
        if account_key is None:
            return answer({"error": "login_required", "state": state})
        account = self.accounts[account_key]
        if not self._tenant_allows(segment_tenant, account):
            return self._error_page(
                400,
                50020,
                f"User account '{account.upn}' from identity provider does not exist in tenant '{match['tenant']}' "
                "and cannot access the application in that tenant.",
            )
        code = self._issue_code(
            "1.A" + _token("", 120),
            client_id=client.client_id,
            account=account_key,
            redirect_uri=redirect_uri,
            scopes=tuple(scopes),
            nonce=q.get("nonce"),
            code_challenge=challenge,
            code_challenge_method=(method or "plain") if challenge else None,
            offline="offline_access" in scopes,
        )
        return answer({"code": code, "state": state, "session_state": str(uuid.uuid4())})

    def _authenticate(self, req: RecordedRequest, tenant: str) -> OAuthClient | Reply:
        client_id, secret = self._client_credentials(req, req.form)
        if not client_id:
            return self._aad_error(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."
            )
        client = self.clients.get(client_id)
        if client is None:
            return self._aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
            )
        if not secret:
            return self._aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        if not secrets.compare_digest(secret, client.client_secret):
            return self._aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                f"value, not the client secret ID, for a secret added to app '{client_id}'.",
            )
        return client

    def _token(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        if self._resolve_tenant(match["tenant"]) is None:
            return self._aad_error(400, "invalid_request", 90002, f"Tenant '{match['tenant']}' not found.")
        form = req.form
        grant_type = form.get("grant_type")
        if not grant_type:
            return self._aad_error(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."
            )
        if grant_type not in ("authorization_code", "refresh_token"):
            return self._aad_error(
                400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant_type}'."
            )
        client = self._authenticate(req, match["tenant"])
        if isinstance(client, Reply):
            return client
        if grant_type == "refresh_token":
            return self._refresh(client, form)
        if not form.get("code"):
            return self._aad_error(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'code'."
            )
        code, why = self._redeem(form["code"], client.client_id)
        if code is None:
            if why == "used":
                return self._aad_error(
                    400,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an "
                    "existing refresh token.",
                )
            if why == "expired":
                return self._aad_error(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity.",
                )
            return self._aad_error(
                400, "invalid_grant", 70000, "The provided value for the 'code' parameter is not valid."
            )
        if form.get("redirect_uri") != code.redirect_uri:
            return self._aad_error(
                400,
                "invalid_grant",
                50011,
                f"The redirect URI '{form.get('redirect_uri')}' specified in the request does not match the "
                "redirect URI used to obtain the authorization code.",
            )
        if code.code_challenge is not None:
            verifier = form.get("code_verifier")
            if not verifier:
                return self._aad_error(
                    400,
                    "invalid_request",
                    50148,
                    "The code_verifier does not match the code_challenge supplied in the authorization request for "
                    "PKCE.",
                )
            if not _pkce_ok(code.code_challenge, code.code_challenge_method or "plain", verifier):
                return self._aad_error(
                    400,
                    "invalid_grant",
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                )
        body = self._grant_tokens(client.client_id, code.account, code.scopes, code.nonce, code.code)
        return Reply.json(200, body, self._token_headers())

    @staticmethod
    def _resource_scopes(scopes: Sequence[str]) -> list[str]:
        oidc = [s for s in scopes if s in ("openid", "profile", "email")]
        graph = [
            s if s.startswith("https://") else f"https://graph.microsoft.com/{s}"
            for s in scopes
            if s not in ("openid", "profile", "email", "offline_access")
        ]
        return oidc + graph

    def _grant_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], nonce: str | None, code: str | None
    ) -> dict[str, Any]:
        refresh = "1.A" + _token("", 180) if "offline_access" in scopes else None
        grant = self._new_grant(client_id, account, scopes, refresh, code=code)
        return self._token_body(grant, nonce, refresh)

    def _token_body(self, grant: Grant, nonce: str | None, refresh: str | None) -> dict[str, Any]:
        access = self._new_access_token(grant, "EwB" + _token("", 200), self.access_token_ttl)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(self._resource_scopes(grant.scopes)),
            "expires_in": self.access_token_ttl,
            "ext_expires_in": self.access_token_ttl,
            "access_token": access,
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        if "openid" in grant.scopes:
            body["id_token"] = self._id_token(grant, nonce)
        return body

    def mint_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], *, offline: bool = True
    ) -> dict[str, Any]:
        if client_id not in self.clients or account not in self.accounts:
            raise KeyError("unknown client or account")
        wanted = list(scopes) + (["offline_access"] if offline and "offline_access" not in scopes else [])
        return self._grant_tokens(client_id, account, wanted, None, None)

    def _id_token(self, grant: Grant, nonce: str | None) -> str:
        account = self.accounts[grant.account]
        now = int(self.now())
        # Pairwise subject: stable per (user, application), different across applications.
        sub = _b64url(hashlib.sha256(f"{account.oid}:{grant.client_id}".encode()).digest())[:43]
        claims: dict[str, Any] = {
            "ver": "2.0",
            "iss": self.issuer_for(account.tenant_id),
            "sub": sub,
            "aud": grant.client_id,
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "tid": account.tenant_id,
            "oid": account.oid,
            "uti": _token("", 22),
            "aio": _token("", 40),
        }
        if "profile" in grant.scopes:
            claims.update(name=account.name, preferred_username=account.upn)
        if "email" in grant.scopes and account.mail:
            claims["email"] = account.mail
        if account.roles:
            claims["roles"] = list(account.roles)
        if nonce is not None:
            claims["nonce"] = nonce
        return self.sign_id_token(claims)

    def _refresh(self, client: OAuthClient, form: Mapping[str, str]) -> Reply:
        token = form.get("refresh_token")
        if not token:
            return self._aad_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'refresh_token'.",
            )
        with self._lock:
            known = self._refresh_tokens.get(token)
        if known is not None and known.revoked:
            return self._aad_error(
                400,
                "invalid_grant",
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
            )
        grant = self.refresh_grant(token)
        if grant is None or grant.client_id != client.client_id:
            return self._aad_error(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        refresh = "1.A" + _token("", 180)
        with self._lock:
            grant.refreshes += 1
            self._rotate_refresh(grant, refresh, keep_old=self.keep_old_refresh_tokens)
        return Reply.json(200, self._token_body(grant, None, refresh), self._token_headers())

    def _graph_auth(self, req: RecordedRequest) -> AccessToken | Reply:
        raw = req.bearer()
        if raw is None:
            reply = self._graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
        else:
            info = self.access_token_info(raw)
            if info is not None:
                return info
            with self._lock:
                known = raw in self._access
            message = (
                "Lifetime validation failed, the token is expired." if known else "IDX14100: JWT is not well formed."
            )
            reply = self._graph_error(401, "InvalidAuthenticationToken", message)
        reply.headers.append(
            (
                "WWW-Authenticate",
                f'Bearer realm="", authorization_uri="{self.url}/common/oauth2/authorize", '
                'client_id="00000003-0000-0000-c000-000000000000"',
            )
        )
        return reply

    def _me(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        info = self._graph_auth(req)
        if isinstance(info, Reply):
            return info
        if not {s.lower() for s in info.grant.scopes} & set(self.GRAPH_SCOPES):
            return self._graph_error(
                403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )
        account = self.accounts[info.grant.account]
        body: dict[str, Any] = {
            "@odata.context": f"{self.url}/v1.0/$metadata#users/$entity",
            "businessPhones": [],
            "displayName": account.name,
            "givenName": account.given_name,
            "jobTitle": None,
            "mail": account.mail,
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": None,
            "surname": account.surname,
            "userPrincipalName": account.upn,
            "id": account.oid,
        }
        return Reply.json(200, body)

    def _userinfo(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        info = self._graph_auth(req)
        if isinstance(info, Reply):
            return info
        account = self.accounts[info.grant.account]
        sub = _b64url(hashlib.sha256(f"{account.oid}:{info.grant.client_id}".encode()).digest())[:43]
        body: dict[str, Any] = {"sub": sub}
        if "profile" in info.grant.scopes:
            body.update(name=account.name, family_name=account.surname, given_name=account.given_name)
        if "email" in info.grant.scopes and account.mail:
            body["email"] = account.mail
        return Reply.json(200, body)
