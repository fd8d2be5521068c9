"""The socket-level half of :mod:`app.net`: an httpx transport whose every TCP connection goes to an address
:class:`app.outbound.OutboundGuard` vetted (resolved once, every address checked, then connected to as an
address literal, so DNS rebinding has no window), with httpcore's errors mapped onto httpx's so the client's
retry and error rules see one family of exceptions. Only :mod:`app.net` uses it.

The pool is ``httpcore2``'s (Pydantic's maintained continuation of httpcore, the same public API), not httpcore
1.0's: httpcore 1.0 re-scans every pooled connection against every other on each request and each release
(O(n²): ``len([... for connection in self._connections])`` per idle connection, encode/httpcore#1035, open since
2025). With the connections a busy worker keeps open to one vendor that was most of a proxied call's cost: a
lone ``GET`` over a pool holding 40 idle connections took 1.1 ms instead of 0.6, over 200 took 12 ms.
httpcore2's pass is linear (pydantic/httpx2#974, #1075, #1076): 0.67 and 1.06 ms.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Final

import httpcore2
import httpx

from app.outbound import OutboundGuard, UnresolvedHost

__all__ = ["GuardedBackend", "GuardedTransport", "StreamHandle", "track_streams"]


class StreamHandle:
    """The connection the current thread's request is using, so another thread can cut it (:meth:`abort`).

    A pooled connection makes no ``connect`` event when it is reused, so the handle is filled by every read
    and write instead: whichever connection the request touches last is the one to cut.
    """

    def __init__(self) -> None:
        self._stream: httpcore2.NetworkStream | None = None
        self._lock = threading.Lock()
        self.aborted = False

    def note(self, stream: httpcore2.NetworkStream) -> None:
        if self._stream is not stream:
            with self._lock:
                self._stream = stream
                if self.aborted:
                    _cut(stream)

    def detach(self) -> None:
        """Forget the connection (it goes back to the pool, where it may serve another request)."""
        with self._lock:
            self._stream = None
            self.aborted = True

    def abort(self) -> None:
        """Shut the connection down both ways: a blocked read or write in the request's thread fails at once
        (and the pool drops the connection), and the server sees the connection close."""
        with self._lock:
            self.aborted = True
            if self._stream is not None:
                _cut(self._stream)


def _cut(stream: httpcore2.NetworkStream) -> None:
    sock = stream.get_extra_info("socket")
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


class _Current(threading.local):
    handle: StreamHandle | None = None


_current = _Current()


@contextmanager
def track_streams(handle: StreamHandle | None = None) -> Iterator[StreamHandle]:
    """Within this block, the connections this thread's requests use are noted on ``handle`` (a new one if
    none is given), which it yields."""
    handle = handle or StreamHandle()
    previous, _current.handle = _current.handle, handle
    try:
        yield handle
    finally:
        _current.handle = previous


class _TrackedStream(httpcore2.NetworkStream):
    """A network stream that tells the current thread's :class:`StreamHandle` (if any) that it is in use."""

    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self._inner = inner

    def _note(self) -> None:
        handle = _current.handle
        if handle is not None:
            handle.note(self)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._note()
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._note()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.NetworkStream:
        return _TrackedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore2.NetworkBackend):
    """httpcore's sync backend, but every TCP connection goes to an address the guard vetted."""

    def __init__(self, guard: OutboundGuard) -> None:
        self._guard = guard
        self._backend = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.NetworkStream:
        try:
            addresses = self._guard.vetted_addresses(host, port)
        except UnresolvedHost as exc:
            # A DNS failure counts as a connection failure (retried, then ProviderUnreachable).
            raise httpcore2.ConnectError(str(exc)) from exc
        last_error: httpcore2.ConnectError | httpcore2.ConnectTimeout | None = None
        for address in addresses:
            try:
                # An address literal: the system resolver is not asked again, so this is what we vetted.
                return _TrackedStream(self._backend.connect_tcp(address, port, timeout, local_address, socket_options))
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None  # vetted_addresses never returns an empty tuple
        raise last_error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.NetworkStream:
        raise httpcore2.UnsupportedProtocol("Unix sockets are not an outbound destination")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# Most specific first: the first match wins.
_HTTPCORE_ERRORS: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore2.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx.ReadTimeout),
    (httpcore2.WriteTimeout, httpx.WriteTimeout),
    (httpcore2.PoolTimeout, httpx.PoolTimeout),
    (httpcore2.TimeoutException, httpx.TimeoutException),
    (httpcore2.ConnectError, httpx.ConnectError),
    (httpcore2.ReadError, httpx.ReadError),
    (httpcore2.WriteError, httpx.WriteError),
    (httpcore2.NetworkError, httpx.NetworkError),
    (httpcore2.ProxyError, httpx.ProxyError),
    (httpcore2.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore2.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore2.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore2.ProtocolError, httpx.ProtocolError),
)


def _as_httpx_error(exc: Exception) -> Exception:
    for core_type, httpx_type in _HTTPCORE_ERRORS:
        if isinstance(exc, core_type):
            return httpx_type(str(exc))
    return exc


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception as exc:
            mapped = _as_httpx_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore2 pool whose network backend is guarded.

    Written against httpcore2's public API because ``httpx.HTTPTransport`` has no way to pass a network backend
    (encode/httpx#3749 adds one), and its pool is httpcore 1.0's (see the module docstring).
    """

    def __init__(self, guard: OutboundGuard, max_connections: int = 100) -> None:
        # One connection per concurrent request: a proxied stream holds its connection for as long as it runs,
        # so this is the ceiling on concurrent upstream streams per process (AMI_AUTH_OUTBOUND_POOL_SIZE).
        # Every connection may stay open between calls (closed after keepalive_expiry idle): with httpx's
        # default of 20 kept, 40 concurrent proxied streams opened (and vetted) a new connection for half
        # their calls.
        self._pool = httpcore2.ConnectionPool(
            # trust_env here only means SSL_CERT_FILE/SSL_CERT_DIR, which private CAs need; no proxies.
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(guard),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            core_response = self._pool.handle_request(core_request)
        except Exception as exc:
            mapped = _as_httpx_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        assert isinstance(core_response.stream, Iterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream),
            extensions=core_response.extensions,
        )

    def close(self) -> None:
        self._pool.close()
