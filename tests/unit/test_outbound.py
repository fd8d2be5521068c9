"""The one outbound guard (app/outbound.py) with real sockets on loopback.

With the production guard config (no ``AMI_AUTH_OUTBOUND_ALLOW``) loopback in every spelling is refused for
SMTP and for HTTP, and a listener on 127.0.0.1 and ::1 (the same port) sees no connection at all. With an
allow list, loopback works — the socket goes to the address that was vetted, resolved once, while TLS checks
the certificate against the host name the admin configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest

from app.errors import AppError
from app.mailer import Security, SmtpTarget, build_message, smtp_send, smtp_verify
from app.net import OutboundClient
from app.outbound import OutboundBlocked, OutboundGuard, UnresolvedHost, numeric_address
from app.settings import Settings
from tests.support.listeners import Listener, listening, loopback_listeners
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, SmtpServer

# What production runs with when AMI_AUTH_OUTBOUND_ALLOW is not set.
PRODUCTION = OutboundGuard.from_settings(Settings(env="production"))

LOOPBACK_SPELLINGS = [
    "localhost",
    "LocalHost",
    "localhost.",
    "mail.localhost",  # RFC 6761: every name under localhost
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f000001",
    "0x7f.1",
    "0177.0.0.1",
    "017700000001",
    "127.000.000.001",
    "127.0.0.1.",
    "127.255.255.254",
    "0",
    "0.0.0.0",
    "[::1]",
    "::1",
    "[::]",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "[::ffff:127.0.0.1]",
    "::127.0.0.1",  # IPv4-compatible (deprecated, ::/96)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
]


@pytest.fixture(scope="module")
def loopback() -> Iterator[tuple[Listener, Listener]]:
    """A listener on the same port of 127.0.0.1 and ::1 that must never see a connection."""
    with loopback_listeners() as pair:
        yield pair


def _url_host(spelling: str) -> str:
    return f"[{spelling}]" if ":" in spelling and not spelling.startswith("[") else spelling


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.000.000.001", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("fe80::1%lo", "fe80::1%lo"),  # the zone stays: a connection needs its interface
        ("93.184.215.14", "93.184.215.14"),
        ("smtp.example.com", None),
        ("127.0.0.1 smtp.example.com", None),  # inet_aton would stop at the space; getaddrinfo does not
        ("1.2.3.4.5", None),
        ("4294967296", None),  # one more than 255.255.255.255
        ("", None),
    ],
)
def test_numeric_spellings_are_read_as_the_socket_layer_reads_them(host: str, expected: str | None) -> None:
    assert numeric_address(host) == expected


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_the_guard_refuses_every_spelling_of_loopback(spelling: str) -> None:
    with pytest.raises(OutboundBlocked) as caught:
        PRODUCTION.vetted_addresses(spelling, 25)
    assert caught.value.code == "invalid_config"
    assert caught.value.text.endswith(("(loopback)", "(unspecified)", "(reserved)")), caught.value.text


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_smtp_to_loopback_in_any_spelling_reaches_nothing(
    spelling: str, loopback: tuple[Listener, Listener], caplog: pytest.LogCaptureFixture
) -> None:
    v4, v6 = loopback
    before = (v4.accepted, v6.accepted)
    caplog.set_level(logging.WARNING, "ami_auth.mailer")
    with pytest.raises(AppError) as caught:
        smtp_verify(SmtpTarget(spelling, v4.port, timeout=0.2, guard=PRODUCTION))
    assert caught.value.code == "provider_unreachable"
    assert caught.value.text == f"No SMTP server answered at {spelling}:{v4.port}."
    # The operator's log says it was the guard (not a closed port: the listener is there).
    assert "Outbound address not allowed" in caplog.text
    assert (v4.accepted, v6.accepted) == before


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_http_to_loopback_in_any_spelling_reaches_nothing(spelling: str, loopback: tuple[Listener, Listener]) -> None:
    v4, v6 = loopback
    before = (v4.accepted, v6.accepted)
    with OutboundClient(allow=(), timeout=0.5, retries=0) as client, pytest.raises(AppError) as caught:
        client.get(f"http://{_url_host(spelling)}:{v4.port}/.well-known/openid-configuration")
    # Refused by the guard — or, for 0177.0.0.1, already by httpx's URL parser (no leading zeros in IPv4).
    assert caught.value.code == "invalid_config"
    assert isinstance(caught.value, OutboundBlocked) or "not a valid http(s) URL" in caught.value.text
    assert (v4.accepted, v6.accepted) == before


def test_a_name_that_does_not_resolve_is_an_os_error_not_a_refusal() -> None:
    with pytest.raises(UnresolvedHost, match="DNS lookup failed"):
        PRODUCTION.vetted_addresses("smtp.nowhere.invalid", 25)


def _wait_for(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 2
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return check()


def test_connect_resolves_once_and_uses_the_address_it_vetted() -> None:
    # A rebinding resolver: an allowed answer first, an internal one after. Each connection resolves once
    # and connects to what it checked, so the second connection is refused before a packet is sent.
    answers = iter([["127.0.0.1"], ["127.0.0.3"]])
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    guard = OutboundGuard.from_allow(["127.0.0.1"], rebinding)
    with listening("127.0.0.1") as allowed, listening("127.0.0.3", allowed.port) as internal:
        with guard.connect("mail.rebind.test", allowed.port, timeout=1) as sock:
            assert sock.getpeername()[:2] == ("127.0.0.1", allowed.port)
        assert calls == ["mail.rebind.test"]
        with pytest.raises(OutboundBlocked, match=r"mail\.rebind\.test resolves to 127\.0\.0\.3 \(loopback\)"):
            guard.connect("mail.rebind.test", allowed.port, timeout=1)
        assert _wait_for(lambda: allowed.accepted == 1)
        assert internal.accepted == 0


def test_smtp_over_a_rebinding_name_reaches_only_the_vetted_address(
    plain_smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    answers = iter([["127.0.0.1"], ["127.0.0.3"]])
    guard = OutboundGuard.from_allow(["127.0.0.1"], lambda _host, _port: next(answers))
    target = SmtpTarget("relay.rebind.test", plain_smtp_server.port, security="none", timeout=0.5, guard=guard)
    smtp_verify(target)
    with pytest.raises(AppError) as caught:
        smtp_verify(target)
    assert caught.value.text == f"No SMTP server answered at relay.rebind.test:{plain_smtp_server.port}."
    assert "relay.rebind.test resolves to 127.0.0.3 (loopback)" in caplog.text


# --- allow-listed loopback works, with TLS checked against the configured name ---------------------------


def _with_login(server: SmtpServer, host: str, guard: OutboundGuard, security: Security = "starttls") -> SmtpTarget:
    assert server.ca_file is not None
    return SmtpTarget(
        host,
        server.port,
        security=security,
        username=SMTP_USER,
        password=SMTP_PASSWORD,
        from_address="AMI Auth <no-reply@example.test>",
        timeout=5,
        ca_file=str(server.ca_file),
        guard=guard,
    )


@pytest.mark.parametrize(
    ("allow", "host"), [("127.0.0.1", "127.0.0.1"), ("127.0.0.1", "localhost"), ("localhost", "localhost")]
)
def test_an_allow_listed_loopback_sends_over_starttls_with_auth(smtp_server: SmtpServer, allow: str, host: str) -> None:
    target = _with_login(smtp_server, host, OutboundGuard.from_allow([allow]))
    smtp_send(target, build_message(target.from_address, "ops@example.com", "Allowed relay", "Body\n"))
    assert smtp_server.wait_for("ops@example.com")["Subject"] == "Allowed relay"
    # AUTH is offered only after STARTTLS, so the login proves TLS (verified against `host`) was up.
    assert smtp_server.logins == [f"PLAIN:{SMTP_USER}"]


def test_implicit_tls_over_the_guard_checks_the_configured_name(smtps_server: SmtpServer) -> None:
    target = _with_login(smtps_server, "localhost", OutboundGuard.from_allow(["127.0.0.1"]), security="tls")
    smtp_send(target, build_message(target.from_address, "tls@example.com", "Over 465", "x\n"))
    assert smtps_server.wait_for("tls@example.com")["Subject"] == "Over 465"


def test_tls_checks_the_name_that_was_configured_not_the_address_connected_to(smtp_server: SmtpServer) -> None:
    # 127.1 is 127.0.0.1 (allowed, and in the certificate), but the certificate is not for the name "127.1".
    with pytest.raises(AppError) as caught:
        smtp_verify(_with_login(smtp_server, "127.1", OutboundGuard.from_allow(["127.0.0.1"])))
    assert caught.value.code == "provider_unreachable"
    assert "certificate we cannot trust" in caught.value.text and "127.1" in caught.value.text
    assert smtp_server.logins == []
