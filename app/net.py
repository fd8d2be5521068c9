"""THE outbound HTTP client: every HTTP request the app makes to the outside goes through here.

Three jobs, in this order of importance:

1. **SSRF guard.** Provider URLs are typed in by admins (and some come back from providers, e.g. OIDC
   discovery), so they must not reach the app's own network. The rules are :mod:`app.outbound`'s (the
   one guard, shared with SMTP): loopback in any spelling, RFC 1918, link-local (cloud metadata at
   169.254.169.254), CGNAT, unique-local IPv6 and friends are refused unless listed in
   ``AMI_AUTH_OUTBOUND_ALLOW``. The check runs in a custom httpcore network backend, at the moment a
   socket is opened: the host is resolved once, *every* address is vetted, and the socket connects to
   a vetted address literal. Nothing resolves the name a second time, so DNS rebinding has no window,
   and redirects, retries and pooled reconnects are all checked by the same code. The Host header and
   TLS SNI/certificate checks still use the original host name, because httpcore only hands the host
   to ``connect_tcp`` and keeps the URL for everything else.
2. **Timeouts and bounded retries** with exponential backoff and ``Retry-After``.
3. **Errors in the taxonomy**: a refused address is :class:`OutboundBlocked` (``invalid_config``); a
   provider that cannot be reached is :class:`ProviderUnreachable` (``provider_unreachable``). HTTP
   error statuses are returned as responses; the caller knows what a 401 or 429 means for it.

Other modules must not import httpx (ruff bans it); they use :class:`Response`, :class:`Auth` and
:class:`BasicAuth` re-exported from here.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypedDict, Unpack

import httpx

from app.errors import AppError
from app.net_transport import GuardedTransport, StreamHandle, track_streams
from app.outbound import OutboundBlocked, OutboundGuard, Resolver, blocked_reason
from app.settings import Settings

if TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "Auth",
    "BasicAuth",
    "OutboundBlocked",
    "OutboundClient",
    "OutboundGuard",
    "ProviderUnreachable",
    "RequestOptions",
    "Resolver",
    "Response",
    "StreamHandle",
    "Upstream",
    "blocked_reason",
    "close_client",
    "get_client",
    "retry_after",
]

Response = httpx.Response
Auth = httpx.Auth
BasicAuth = httpx.BasicAuth

log = logging.getLogger(__name__)

# httpx logs every full URL at INFO (query strings carry API keys) and httpcore logs response headers
# at DEBUG (Set-Cookie, tokens). Our own debug line below is the sanctioned record of outbound traffic.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)
logging.getLogger("httpcore2").setLevel(logging.WARNING)  # app.net_transport's pool

SCHEMES: Final = frozenset({"http", "https"})
# RFC 9110 §9.2.2: a client may repeat these automatically; the server's state ends up the same.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# 501 and 505 say the server will never handle this request, so repeating it only wastes time.
NOT_TRANSIENT_5XX: Final = frozenset({501, 505})
USER_AGENT: Final = "ami-auth/0.1"

# --- errors -------------------------------------------------------------------------------------------


class ProviderUnreachable(AppError):
    """No HTTP response: DNS failure, refused connection, timeout, broken connection, redirect loop."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__("provider_unreachable", message=f"Could not reach {host}: {reason}")
        self.host = host
        self.reason = reason


# --- retries ------------------------------------------------------------------------------------------


def retry_after(response: httpx.Response, now: datetime | None = None) -> float | None:
    """Seconds the server asked us to wait (RFC 9110 §10.2.3: delay-seconds or an HTTP-date), if any."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means the zone was "-0000"
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _retryable_status(status: int) -> bool:
    return status == 429 or (500 <= status <= 599 and status not in NOT_TRANSIENT_5XX)


def _unsent(exc: httpx.TransportError) -> bool:
    """True if the request cannot have reached the server, so repeating it is safe for any method."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _failure_reason(exc: httpx.HTTPError) -> str:
    # Only fixed phrases or socket/TLS errors: parser errors may quote bytes the server sent.
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, httpx.ReadTimeout):
        return "timed out waiting for the response"
    if isinstance(exc, httpx.WriteTimeout):
        return "timed out sending the request"
    if isinstance(exc, httpx.PoolTimeout):
        return "no free connection in the pool"
    if isinstance(exc, httpx.ConnectError):
        return str(exc) or "connection failed"
    if isinstance(exc, httpx.ProtocolError):
        return "the server sent an invalid HTTP response"
    if isinstance(exc, httpx.DecodingError):
        return "the response body could not be decoded"
    return "the connection failed"


def _where(url: httpx.URL) -> str:
    """``host[:port]`` for messages: never userinfo, path or query, which may carry secrets."""
    return f"{url.host}:{url.port}" if url.port is not None else url.host


def _log_target(request: httpx.Request) -> str:
    return f"{request.method} {request.url.scheme}://{_where(request.url)}{request.url.path}"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


# --- the client ---------------------------------------------------------------------------------------


class RequestOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`OutboundClient.request`, for the ``get``/``post``/``delete`` forms."""

    headers: Mapping[str, str] | None
    params: Mapping[str, Any] | None
    data: Mapping[str, Any] | None
    json: Any
    content: bytes | None
    auth: httpx.Auth | tuple[str, str] | None
    timeout: float | None
    follow_redirects: bool
    max_redirects: int


class OutboundClient:
    """The app's HTTP client; thread-safe, one per app (see :func:`get_client`).

    ``allow`` lists IPs, CIDR ranges or host names that may be reached even though they are internal.
    ``timeout`` applies to connect, read, write and pool waits separately. ``retries`` is how many times
    a request is repeated after the first attempt (so ``retries + 1`` attempts at most). Backoff between
    attempts is ``backoff_base * 2**n`` with jitter; both it and any ``Retry-After`` are limited to
    ``backoff_cap`` seconds. ``resolver`` replaces the system resolver (tests, custom DNS).

    Environment proxies (``HTTPS_PROXY``…) and ``.netrc`` are ignored: a proxy would make the
    connection, and the guard would only ever see the proxy's address. Cookies are never stored,
    because one client serves every user and provider.
    """

    def __init__(
        self,
        allow: tuple[str, ...] = (),
        timeout: float = 10.0,
        retries: int = 2,
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        resolver: Resolver | None = None,
        pool_size: int = 100,
    ) -> None:
        if timeout <= 0 or not math.isfinite(timeout):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries!r}")
        self.guard = OutboundGuard.from_allow(allow, resolver)
        self.timeout = timeout
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.pool_size = pool_size
        self._transport = GuardedTransport(self.guard, max_connections=pool_size)
        self._client = httpx.Client(
            transport=self._transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            headers={"User-Agent": USER_AGENT},
        )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> OutboundClient:
        """A client configured by ``AMI_AUTH_OUTBOUND_*``; ``options`` go to the constructor."""
        return cls(
            allow=settings.outbound_allow,
            timeout=settings.outbound_timeout,
            retries=settings.outbound_retries,
            pool_size=settings.outbound_pool_size,
            **options,
        )

    @property
    def transport(self) -> httpx.BaseTransport:
        """The guarded transport, for libraries that need their own ``httpx.Client`` (e.g. Authlib).

        Such a client gets the SSRF guard but not the retries; create it with ``trust_env=False``.
        It must not outlive this client, which owns and closes the transport.
        """
        return self._transport

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        timeout: float | None = None,
        follow_redirects: bool = True,
        max_redirects: int = 5,
    ) -> httpx.Response:
        """Send a request and return the final response, whatever its status.

        ``timeout=None`` means the client's timeout, not "wait forever". ``data`` is a form; raw bytes
        go in ``content``. On a redirect to another origin, ``auth`` and every header passed in
        ``headers`` are dropped: they are often API keys meant for the first host only.

        Raises :class:`OutboundBlocked` for a refused address or scheme (including on a redirect) and
        :class:`ProviderUnreachable` when no response arrives after the retries.
        """
        try:
            request = self._client.build_request(
                method.upper(),
                url,
                headers=headers,
                params=params,
                data=data,
                json=json,
                content=content,
                timeout=httpx.Timeout(timeout) if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.InvalidURL:
            raise AppError(
                "invalid_config",
                message="Outbound URL is not a valid http(s) URL",
                hint="Check the URL, e.g. https://api.example.com/v1",
            ) from None
        caller_headers = {name.lower() for name in headers or {}}
        first_origin = _origin(request.url)
        request_auth: httpx.Auth | tuple[str, str] | None = auth
        history: list[httpx.Response] = []
        while True:
            self._check_scheme(request.url)
            response = self._send_with_retries(request, request_auth)
            if not follow_redirects or response.next_request is None:
                response.history = history
                return response
            if len(history) >= max_redirects:
                response.close()
                raise ProviderUnreachable(_where(request.url), f"more than {max_redirects} redirects")
            history.append(response)
            request = response.next_request
            if _origin(request.url) != first_origin:
                request_auth = None
                for name in caller_headers:
                    request.headers.pop(name, None)

    def open_stream(
        self,
        method: str,
        url: str,
        *,
        headers: Iterable[tuple[str, str]],
        params: Mapping[str, str],
        content: Iterable[bytes] | bytes | None,
        read_timeout: float,
        pool_timeout: float,
        handle: StreamHandle | None = None,
    ) -> Upstream:
        """Send one request and return as soon as the response headers are in, the body still unread.

        For the credential-injecting proxy: exactly one attempt (a streamed body cannot be replayed, and a
        repeated POST is a second billed call), redirects never followed (they would carry the credential to
        wherever the ``Location`` points), ``read_timeout`` between any two reads (the first byte included),
        ``pool_timeout`` for a free connection (``service_unavailable`` with ``Retry-After`` when the pool
        stays full). ``handle`` lets another thread cut the connection (the caller went away).
        """
        try:
            request = self._client.build_request(
                method,
                url,
                headers=list(headers),
                params=params or None,
                content=content,
                timeout=httpx.Timeout(self.timeout, read=read_timeout, write=read_timeout, pool=pool_timeout),
            )
        except httpx.InvalidURL:
            raise AppError("invalid_config", "The upstream URL is not a valid http(s) URL.") from None
        self._check_scheme(request.url)
        try:
            with track_streams(handle):
                # The transport itself, not Client.send: one attempt, no redirects, no auth flow and no cookies
                # (the client keeps none) leave nothing for its layers to do but cost a proxied call.
                response = self._transport.handle_request(request)
                response.request = request
        except httpx.PoolTimeout:
            raise AppError(
                "service_unavailable",
                "Every outbound connection is in use.",
                "Try again in a few seconds.",
                retry_after=5,
            ) from None
        except httpx.UnsupportedProtocol:
            raise OutboundBlocked(
                f"Outbound URL scheme not allowed: {request.url.scheme}", host=request.url.host
            ) from None
        except httpx.TransportError as exc:
            log.debug("%s -> %s", _log_target(request), type(exc).__name__)
            raise ProviderUnreachable(_where(request.url), _failure_reason(exc)) from exc
        log.debug("%s -> %s (streamed)", _log_target(request), response.status_code)
        return Upstream(response)

    def get(self, url: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return self.request("POST", url, **options)

    def delete(self, url: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return self.request("DELETE", url, **options)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_scheme(self, url: httpx.URL) -> None:
        if url.scheme not in SCHEMES:
            raise OutboundBlocked(
                f"Outbound URL scheme not allowed: {url.scheme or '(none)'} (only http and https)",
                host=url.host,
                hint="Use an http:// or https:// URL",
            )
        if not url.host:
            raise OutboundBlocked(
                "Outbound URL has no host", host="", hint="Use a full URL, e.g. https://api.example.com/v1"
            )

    def _backoff(self, attempt: int) -> float:
        # Jitter spreads out workers that failed together, so they do not retry in lockstep.
        return min(self.backoff_cap, self.backoff_base * 2.0**attempt) * random.uniform(0.5, 1.0)

    def _send_with_retries(self, request: httpx.Request, auth: httpx.Auth | tuple[str, str] | None) -> httpx.Response:
        idempotent = request.method in IDEMPOTENT_METHODS
        attempt = 0
        while True:
            try:
                response = self._client.send(request, auth=auth, follow_redirects=False)
            except httpx.UnsupportedProtocol:
                raise OutboundBlocked(
                    f"Outbound URL scheme not allowed: {request.url.scheme}",
                    host=request.url.host,
                    hint="Use an http:// or https:// URL",
                ) from None
            except httpx.TransportError as exc:
                if attempt >= self.retries or not (idempotent or _unsent(exc)):
                    log.debug("%s -> %s", _log_target(request), type(exc).__name__)
                    raise ProviderUnreachable(_where(request.url), _failure_reason(exc)) from exc
                delay = self._backoff(attempt)
                log.debug("%s -> %s, retry in %.2fs", _log_target(request), type(exc).__name__, delay)
            except httpx.DecodingError as exc:
                raise ProviderUnreachable(_where(request.url), _failure_reason(exc)) from exc
            else:
                status = response.status_code
                if attempt >= self.retries or not idempotent or not _retryable_status(status):
                    log.debug("%s -> %s", _log_target(request), status)
                    return response
                asked = retry_after(response)
                if asked is not None and asked > self.backoff_cap:
                    # Waiting less than asked would be refused again; let the caller report the wait.
                    log.debug("%s -> %s, Retry-After %.0fs over cap", _log_target(request), status, asked)
                    return response
                delay = asked if asked is not None else self._backoff(attempt)
                response.close()
                log.debug("%s -> %s, retry in %.2fs", _log_target(request), status, delay)
            time.sleep(delay)
            attempt += 1


@dataclass
class Upstream:
    """A streamed upstream response: status, headers as received, and the body as it arrives."""

    response: httpx.Response

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.response.headers.raw]

    def chunks(self) -> Iterator[bytes]:
        """The body as the server sends it (no decompression: the caller gets the upstream's encoding)."""
        stream = self.response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        try:
            # The transport's stream itself (Response.iter_raw adds only bookkeeping a relay has no use for).
            for chunk in stream:
                if chunk:
                    yield chunk
        except httpx.TransportError as exc:
            raise ProviderUnreachable(_where(self.response.request.url), _failure_reason(exc)) from exc

    def close(self) -> None:
        self.response.close()


# --- the app's instance -------------------------------------------------------------------------------

_EXTENSION_KEY: Final = "ami_net"
_create_lock = threading.Lock()


def get_client(app: Flask) -> OutboundClient:
    """The app's one client, created on first use from ``app.extensions["ami_settings"]``."""
    client = app.extensions.get(_EXTENSION_KEY)
    if client is None:
        with _create_lock:
            client = app.extensions.get(_EXTENSION_KEY)
            if client is None:
                client = OutboundClient.from_settings(app.extensions["ami_settings"])
                app.extensions[_EXTENSION_KEY] = client
    assert isinstance(client, OutboundClient)
    return client


def close_client(app: Flask) -> None:
    """Close and forget the app's client (app shutdown, tests), so no pooled socket is left open."""
    client = app.extensions.pop(_EXTENSION_KEY, None)
    if isinstance(client, OutboundClient):
        client.close()
