"""app.net against real sockets: small HTTP servers on 127.0.0.x, no mocks of httpx.

Linux routes all of 127.0.0.0/8 to loopback, so a server on 127.0.0.3 is a second, distinct host that
the allow list can leave out.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask

from app.errors import AppError
from app.net import (
    BasicAuth,
    OutboundBlocked,
    OutboundClient,
    OutboundGuard,
    ProviderUnreachable,
    Response,
    blocked_reason,
    close_client,
    get_client,
    retry_after,
)
from app.settings import Settings

# --- real servers -------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Server(ThreadingHTTPServer):
    # Joined on server_close, so no handler thread outlives its test.
    daemon_threads = False

    def __init__(self, host: str, replies: Sequence[Reply]) -> None:
        super().__init__((host, 0), Handler)
        self.replies = list(replies) or [Reply()]
        self.hits: list[Hit] = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def next_reply(self, hit: Hit) -> Reply:
        with self._lock:
            self.hits.append(hit)
            # The last reply repeats, so a server can answer "always 503" or "503, 503, then 200".
            return self.replies[min(len(self.hits), len(self.replies)) - 1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out leaves a broken pipe behind; that is the test's point, not noise.
        pass


class Handler(BaseHTTPRequestHandler):
    server: Server

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        hit = Hit(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        reply = self.server.next_reply(hit)
        if reply.delay:
            self.server.release.wait(reply.delay)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _reply

    def log_message(self, format: str, *args: Any) -> None:
        pass


Serve = Callable[..., Server]
MakeClient = Callable[..., OutboundClient]


@pytest.fixture
def serve() -> Iterator[Serve]:
    running: list[tuple[Server, threading.Thread]] = []

    def start(*replies: Reply, host: str = "127.0.0.1") -> Server:
        server = Server(host, replies)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        server.release.set()
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    clients: list[OutboundClient] = []

    def make(**options: Any) -> OutboundClient:
        options.setdefault("allow", ("127.0.0.1",))
        options.setdefault("timeout", 2.0)
        options.setdefault("retries", 2)
        options.setdefault("backoff_base", 0.01)
        options.setdefault("backoff_cap", 2.0)
        client = OutboundClient(**options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def fixed_resolver(table: dict[str, list[str]], calls: list[str] | None = None) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the address policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "private"),
        ("10.255.255.255", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "shared address space"),
        ("100.127.255.254", "shared address space"),
        ("::1", "loopback"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 of 169.254.169.254
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.1.2.3", "not globally routable"),
        ("192.0.2.10", "not globally routable"),
    ],
)
def test_internal_addresses_are_refused(address: str, reason: str) -> None:
    assert blocked_reason(address) == reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "192.169.0.1", "2606:4700:4700::1111"]
)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(address) is None


def test_allow_list_takes_ips_ranges_and_names() -> None:
    guard = OutboundGuard.from_allow(["10.0.0.0/8", "127.0.0.1", "Internal.Example."])
    guard.check_address("a", "10.1.2.3")
    guard.check_address("a", "::ffff:10.1.2.3")  # the mapped form reaches the same host
    guard.check_address("a", "127.0.0.1")
    with pytest.raises(OutboundBlocked, match=r"a resolves to 127\.0\.0\.2 \(loopback\)"):
        guard.check_address("a", "127.0.0.2")
    with pytest.raises(OutboundBlocked, match=r"\(private\)"):
        guard.check_address("a", "192.168.0.1")
    assert guard.hosts == frozenset({"internal.example"})


def test_a_name_passes_only_if_every_address_passes() -> None:
    # Decision: "localhost" style names with 127.0.0.1 and ::1 need both allowed (or the name itself),
    # because which address gets used is up to the resolver's order and the network's state.
    resolver = fixed_resolver({"dual.test": ["127.0.0.1", "::1"]})
    only_v4 = OutboundGuard.from_allow(["127.0.0.1"], resolver)
    with pytest.raises(OutboundBlocked, match=r"dual\.test resolves to ::1 \(loopback\)"):
        only_v4.vetted_addresses("dual.test", 80)
    both = OutboundGuard.from_allow(["127.0.0.1", "::1"], resolver)
    assert both.vetted_addresses("dual.test", 80) == ("127.0.0.1", "::1")
    by_name = OutboundGuard.from_allow(["Dual.Test."], resolver)
    assert by_name.vetted_addresses("dual.test", 80) == ("127.0.0.1", "::1")


def test_refusal_is_an_invalid_config_app_error() -> None:
    with pytest.raises(OutboundBlocked) as caught:
        OutboundGuard().vetted_addresses("10.0.0.1", 80)
    error = caught.value
    assert isinstance(error, AppError)
    assert error.code == "invalid_config"
    assert error.text == "Outbound address not allowed: 10.0.0.1 (private)"
    assert error.help == "Allow it with AMI_AUTH_OUTBOUND_ALLOW if it is intended"
    assert error.host == "10.0.0.1"


# --- the guard end to end -----------------------------------------------------------------------------


def test_loopback_is_refused_before_connecting(serve: Serve, make_client: MakeClient) -> None:
    server = serve()
    client = make_client(allow=())
    with pytest.raises(OutboundBlocked, match=r"127\.0\.0\.1 \(loopback\)"):
        client.get(server.url)
    assert server.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/",
        "http://LocalHost:{port}/",
        "http://[::1]:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://2130706433:{port}/",  # 127.0.0.1 as one number; the system resolver accepts it
        "http://0x7f.1:{port}/",
        "http://[::]:{port}/",
        "http://0.0.0.0:{port}/",
    ],
)
def test_disguised_loopback_is_refused(url: str, serve: Serve, make_client: MakeClient) -> None:
    server = serve()
    with pytest.raises(OutboundBlocked, match=r"\((loopback|unspecified)\)"):
        make_client(allow=()).get(url.format(port=server.port))
    assert server.hits == []


def test_allowed_address_is_reached(serve: Serve, make_client: MakeClient) -> None:
    server = serve(Reply(body=b"hello"))
    response = make_client().get(server.url + "/path", params={"q": "1"})
    assert response.status_code == 200
    assert response.text == "hello"
    assert server.hits[0].path == "/path?q=1"
    assert server.hits[0].headers["user-agent"].startswith("ami-auth/")


def test_allowed_name_keeps_its_host_header(serve: Serve, make_client: MakeClient) -> None:
    server = serve()
    response = make_client(allow=("localhost",)).get(f"http://localhost:{server.port}/")
    assert response.status_code == 200
    assert server.hits[0].headers["host"] == f"localhost:{server.port}"


def test_name_resolving_to_internal_address_is_refused(make_client: MakeClient) -> None:
    client = make_client(resolver=fixed_resolver({"intranet.test": ["10.0.0.5"]}))
    with pytest.raises(OutboundBlocked, match=r"intranet\.test resolves to 10\.0\.0\.5 \(private\)"):
        client.get("https://intranet.test/")


def test_metadata_name_is_refused_without_asking_dns(make_client: MakeClient) -> None:
    calls: list[str] = []
    client = make_client(resolver=fixed_resolver({}, calls))
    with pytest.raises(OutboundBlocked, match="cloud metadata"):
        client.get("http://metadata.google.internal/computeMetadata/v1/")
    assert calls == []


def test_connection_goes_to_the_address_that_was_checked(serve: Serve, make_client: MakeClient) -> None:
    # A rebinding resolver: harmless answer first, internal one after. Each connection resolves once
    # and connects to what it checked, so the first request works and the next connection is refused.
    server = serve()
    answers = iter([["127.0.0.1"], ["127.0.0.3"]])
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    client = make_client(resolver=rebinding, retries=0)
    url = f"http://rebind.test:{server.port}/"
    assert client.get(url).status_code == 200
    assert calls == ["rebind.test"]
    assert server.hits[0].headers["host"] == f"rebind.test:{server.port}"
    with pytest.raises(OutboundBlocked, match=r"rebind\.test resolves to 127\.0\.0\.3"):
        client.get(url)  # the test server closes each connection, so this one connects afresh
    assert len(server.hits) == 1


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "gopher://127.0.0.1:70/"])
def test_only_http_and_https_are_allowed(url: str, make_client: MakeClient) -> None:
    with pytest.raises(OutboundBlocked, match="scheme not allowed") as caught:
        make_client().get(url)
    assert caught.value.code == "invalid_config"


def test_malformed_url_is_invalid_config(make_client: MakeClient) -> None:
    with pytest.raises(AppError) as caught:
        make_client().get("http://[::1/")
    assert caught.value.code == "invalid_config"


# --- redirects ----------------------------------------------------------------------------------------


def test_redirect_to_a_refused_address_is_refused(serve: Serve, make_client: MakeClient) -> None:
    inside = serve(host="127.0.0.3")
    front = serve(Reply(302, {"Location": inside.url + "/admin"}))
    with pytest.raises(OutboundBlocked, match=r"127\.0\.0\.3 \(loopback\)"):
        make_client(allow=("127.0.0.1",)).get(front.url)
    assert len(front.hits) == 1
    assert inside.hits == []


def test_redirect_across_origins_drops_credentials(serve: Serve, make_client: MakeClient) -> None:
    other = serve(Reply(body=b"landed"), host="127.0.0.3")
    front = serve(Reply(307, {"Location": "/moved"}), Reply(307, {"Location": other.url + "/final"}))
    client = make_client(allow=("127.0.0.1", "127.0.0.3"))
    response = client.post(
        front.url + "/start", headers={"X-Api-Key": "k-123"}, auth=BasicAuth("user", "pw"), json={"a": 1}
    )
    assert response.status_code == 200
    assert response.text == "landed"
    assert [r.status_code for r in response.history] == [307, 307]
    first, same_origin = front.hits
    assert same_origin.path == "/moved"
    assert same_origin.headers["x-api-key"] == "k-123"
    assert "authorization" in same_origin.headers
    assert same_origin.body == b'{"a":1}'  # 307 keeps method and body
    (landed,) = other.hits
    assert landed.path == "/final"
    assert "x-api-key" not in landed.headers
    assert "authorization" not in landed.headers
    assert first.method == landed.method == "POST"


def test_redirect_to_other_scheme_is_refused(serve: Serve, make_client: MakeClient) -> None:
    front = serve(Reply(302, {"Location": "file:///etc/passwd"}))
    with pytest.raises(OutboundBlocked, match="scheme not allowed"):
        make_client().get(front.url)


def test_redirect_loop_stops(serve: Serve, make_client: MakeClient) -> None:
    front = serve(Reply(302, {"Location": "/again"}))
    with pytest.raises(ProviderUnreachable, match="more than 2 redirects"):
        make_client().get(front.url, max_redirects=2)
    assert len(front.hits) == 3


def test_redirects_can_be_left_to_the_caller(serve: Serve, make_client: MakeClient) -> None:
    front = serve(Reply(302, {"Location": "http://127.0.0.3/"}))
    response = make_client().get(front.url, follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "http://127.0.0.3/"


# --- retries ------------------------------------------------------------------------------------------


def test_503_is_retried_until_success(serve: Serve, make_client: MakeClient) -> None:
    server = serve(Reply(503), Reply(503), Reply(200, body=b"fine"))
    response = make_client(retries=2).get(server.url)
    assert response.status_code == 200
    assert response.text == "fine"
    assert len(server.hits) == 3


def test_last_response_is_returned_when_retries_run_out(serve: Serve, make_client: MakeClient) -> None:
    server = serve(Reply(502))
    assert make_client(retries=1).get(server.url).status_code == 502
    assert len(server.hits) == 2


def test_post_is_not_repeated_after_a_server_error(serve: Serve, make_client: MakeClient) -> None:
    server = serve(Reply(503))
    assert make_client().post(server.url, data={"a": "1"}).status_code == 503
    assert len(server.hits) == 1


def test_501_is_not_retried(serve: Serve, make_client: MakeClient) -> None:
    server = serve(Reply(501))
    assert make_client().get(server.url).status_code == 501
    assert len(server.hits) == 1


def test_429_retry_after_is_honoured(serve: Serve, make_client: MakeClient) -> None:
    server = serve(Reply(429, {"Retry-After": "1"}), Reply(200))
    started = time.monotonic()
    response = make_client(backoff_cap=2.0).get(server.url)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert len(server.hits) == 2
    assert elapsed >= 0.9  # waited as asked rather than the 10 ms backoff


def test_retry_after_beyond_the_cap_is_left_to_the_caller(serve: Serve, make_client: MakeClient) -> None:
    server = serve(Reply(429, {"Retry-After": "120"}))
    response = make_client(backoff_cap=1.0).get(server.url)
    assert response.status_code == 429
    assert retry_after(response) == 120.0
    assert len(server.hits) == 1


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    earlier = format_datetime(datetime(2025, 1, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert retry_after(Response(429, headers={"Retry-After": "7"}), now) == 7.0
    assert retry_after(Response(429, headers={"Retry-After": later}), now) == 30.0
    assert retry_after(Response(429, headers={"Retry-After": earlier}), now) == 0.0
    assert retry_after(Response(429, headers={"Retry-After": "soon"}), now) is None
    assert retry_after(Response(429), now) is None


# --- network failures ---------------------------------------------------------------------------------


def test_connection_refused_is_provider_unreachable(make_client: MakeClient) -> None:
    port = closed_port()
    with pytest.raises(ProviderUnreachable) as caught:
        make_client(retries=1).get(f"http://127.0.0.1:{port}/cb?token=s3cret")
    error = caught.value
    assert error.code == "provider_unreachable"
    assert error.http_status == 502
    assert f"127.0.0.1:{port}" in error.text
    assert "refused" in error.text.lower()
    assert "s3cret" not in str(error)
    assert "/cb" not in str(error)


def test_connect_errors_are_retried_even_for_post(make_client: MakeClient) -> None:
    # Nothing was sent, so repeating a POST cannot do anything twice. Each attempt resolves once.
    calls: list[str] = []
    client = make_client(retries=2, resolver=fixed_resolver({"down.test": ["127.0.0.1"]}, calls))
    with pytest.raises(ProviderUnreachable):
        client.post(f"http://down.test:{closed_port()}/")
    assert calls == ["down.test"] * 3


def test_dns_failure_is_provider_unreachable(make_client: MakeClient) -> None:
    client = make_client(retries=0, resolver=fixed_resolver({}))
    with pytest.raises(ProviderUnreachable, match=r"Could not reach nowhere\.test: DNS lookup failed"):
        client.get("https://nowhere.test/")


def test_read_timeout_is_provider_unreachable_after_retries(serve: Serve, make_client: MakeClient) -> None:
    server = serve(Reply(delay=5.0))
    client = make_client(timeout=5.0, retries=1)
    with pytest.raises(ProviderUnreachable, match="timed out waiting for the response"):
        client.get(server.url, timeout=0.2)
    assert len(server.hits) == 2


def test_post_is_not_repeated_after_a_read_timeout(serve: Serve, make_client: MakeClient) -> None:
    server = serve(Reply(delay=5.0))
    with pytest.raises(ProviderUnreachable, match="timed out"):
        make_client(timeout=0.2, retries=2).post(server.url, json={})
    assert len(server.hits) == 1


# --- logging, settings, app wiring --------------------------------------------------------------------


def test_logs_never_carry_secrets(serve: Serve, make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve(Reply(503), Reply(200, {"Set-Cookie": "sid=cookie-secret"}, b"body-secret"))
    make_client().post(
        server.url + "/token?code=query-secret",
        headers={"Authorization": "Bearer header-secret"},
        data={"client_secret": "form-secret"},
    )
    text = caplog.text
    assert f"POST http://127.0.0.1:{server.port}/token -> 503" in text
    for secret in ("query-secret", "header-secret", "form-secret", "cookie-secret", "body-secret"):
        assert secret not in text


def test_cookies_are_not_carried_between_requests(serve: Serve, make_client: MakeClient) -> None:
    server = serve(Reply(headers={"Set-Cookie": "sid=abc; Path=/"}))
    client = make_client()
    client.get(server.url)
    client.get(server.url)
    assert "cookie" not in server.hits[1].headers


def test_from_settings_and_app_client(serve: Serve) -> None:
    settings = Settings(outbound_allow=("127.0.0.1",), outbound_timeout=3.0, outbound_retries=4)
    with OutboundClient.from_settings(settings) as client:
        assert (client.timeout, client.retries) == (3.0, 4)
    app = Flask(__name__)
    app.extensions["ami_settings"] = settings
    try:
        first = get_client(app)
        assert get_client(app) is first
        server = serve()
        assert first.get(server.url).status_code == 200
    finally:
        close_client(app)
    assert "ami_net" not in app.extensions
