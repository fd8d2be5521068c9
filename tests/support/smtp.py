"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 with STARTTLS and AUTH required.

Fixtures (loaded for the whole suite through ``pytest_plugins`` in tests/conftest.py):

* ``smtp_server`` — STARTTLS required, AUTH required (``SMTP_USER``/``SMTP_PASSWORD``), a certificate
  for 127.0.0.1 issued by a throw-away CA (``server.ca_file`` is what a client should trust).
* ``smtps_server`` — implicit TLS (port-465 style) and AUTH required.
* ``plain_smtp_server`` — no TLS at all, no AUTH: a server that cannot give us STARTTLS.
* ``smtp_tls_files`` — the CA and server certificate, generated once per test session.
* ``run_smtp_server(files, **options)`` — the same server as a context manager, for variants
  (e.g. ``auth_exclude_mechanism=["PLAIN"]`` to force AUTH LOGIN, or ``xoauth2=check`` to offer AUTH
  XOAUTH2 the way Gmail and Exchange Online do: ``check(user, bearer_token)`` decides, e.g. by asking a
  real OpenID provider's userinfo endpoint whose mailbox the token opens).

Received messages are parsed with :mod:`email` and kept in ``server.messages``; ``server.wait_for(to)``
returns the newest message for an address (delivery happens on the server's thread).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
import threading
from base64 import b64decode
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.hold import Hold
from tests.support.live import free_port

SMTP_USER = "mailer@example.test"
SMTP_PASSWORD = "smtp p@ss:word/with%odd chars"


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it (strict X.509 checks pass)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("AMI Auth test CA"))
        .issuer_name(_name("AMI Auth test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


class RecordingHandler:
    """Keeps every accepted message, parsed, with its envelope recipients; can leave one unanswered for a while."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Condition()
        self.hold = Hold()  # hold.next(): the next message waits for its answer until released

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.to_thread(self.hold.pause)
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.messages.append(parsed)
            self.lock.notify_all()
        return "250 Message accepted for delivery"


# (user, bearer token) → may this token send as this user?
TokenCheck = Callable[[str, str], bool]


class XOAuth2Handler(RecordingHandler):
    """A RecordingHandler that also offers AUTH XOAUTH2 (aiosmtpd finds ``auth_*`` methods on the handler).

    The exchange follows https://developers.google.com/gmail/imap/xoauth2-protocol: the client's initial
    response is base64("user=" user ^A "auth=Bearer " token ^A ^A); on a bad token the server sends a 334
    challenge with a JSON error, reads the client's empty line, then answers 535.
    """

    def __init__(self, check: TokenCheck) -> None:
        super().__init__()
        self.check = check
        self.server: SmtpServer | None = None

    async def auth_XOAUTH2(self, smtp: Any, args: list[str]) -> AuthResult:
        raw = args[1] if len(args) > 1 else ""
        try:
            fields = dict(
                part.split("=", 1) for part in b64decode(raw, validate=True).decode().split("\x01") if "=" in part
            )
        except (ValueError, UnicodeDecodeError):
            await smtp.push("501 5.5.2 Can't decode the XOAUTH2 response")
            return AuthResult(success=False, handled=True)
        user, auth = fields.get("user", ""), fields.get("auth", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        accepted: bool = bool(token) and await asyncio.to_thread(self.check, user, token)
        if accepted:
            assert self.server is not None
            self.server.logins.append(f"XOAUTH2:{user}")
            return AuthResult(success=True)
        error = json.dumps({"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"})
        await smtp.challenge_auth(error)
        return AuthResult(success=False, handled=False, message="535 5.7.8 Username and Password not accepted")


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler
    ca_file: Path | None = None
    username: str = SMTP_USER
    password: str = SMTP_PASSWORD
    logins: list[str] = field(default_factory=list)

    @property
    def messages(self) -> list[EmailMessage]:
        with self.handler.lock:
            return list(self.handler.messages)

    def url(self, password: str | None = None, scheme: str = "smtp+starttls") -> str:
        secret = self.password if password is None else password
        return f"{scheme}://{quote(self.username, safe='')}:{quote(secret, safe='')}@{self.host}:{self.port}"

    def wait_for(self, to: str, timeout: float = 10.0, count: int = 1) -> EmailMessage:
        """The newest message to ``to`` once at least ``count`` have arrived; fails the test after ``timeout``."""

        def matching() -> list[EmailMessage]:
            return [m for m in self.handler.messages if to.lower() in _recipients(m)]

        with self.handler.lock:
            if not self.handler.lock.wait_for(lambda: len(matching()) >= count, timeout=timeout):
                seen = [str(m["To"]) for m in self.handler.messages]
                pytest.fail(f"no mail to {to} within {timeout}s (received for: {seen})")
            return matching()[-1]


def _recipients(message: EmailMessage) -> set[str]:
    return {addr.lower() for _n, addr in getaddresses([str(v) for v in message.get_all("To", [])])}


def body_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, "the mail has no text/plain part"
    content = part.get_content()
    assert isinstance(content, str)
    return content


def html_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None, "the mail has no text/html part"
    content = part.get_content()
    assert isinstance(content, str)
    return content


@pytest.fixture(scope="session")
def smtp_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("smtp-tls"))


def _authenticator(server: SmtpServer) -> Any:
    def authenticator(_server: Any, _session: Any, _envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode()
            if login == server.username and auth_data.password.decode() == server.password:
                server.logins.append(f"{mechanism}:{login}")
                return AuthResult(success=True)
        # aiosmtpd answers "535 5.7.8 Authentication credentials invalid".
        return AuthResult(success=False, handled=False)

    return authenticator


class _ImplicitTlsController(Controller):
    """aiosmtpd only counts STARTTLS as TLS when deciding to offer AUTH; on an implicit-TLS port the whole
    connection is TLS, so AUTH may be offered from the start. (Passing auth_require_tls=False instead makes
    aiosmtpd warn on every connection, which pytest turns into an error.)"""

    def factory(self) -> Any:
        smtp = super().factory()  # type: ignore[no-untyped-call]
        smtp._auth_require_tls = False
        return smtp


def _server_tls(files: TlsFiles) -> ssl.SSLContext:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(files.cert_file, files.key_file)
    return tls


@contextmanager
def run_smtp_server(
    files: TlsFiles,
    *,
    implicit_tls: bool = False,
    xoauth2: TokenCheck | None = None,
    host: str = "127.0.0.1",
    **options: Any,
) -> Iterator[SmtpServer]:
    """Run aiosmtpd on a free port of ``host`` (127.0.0.1; the certificate is for it) until the block ends;
    AUTH is always required.

    STARTTLS is required unless ``implicit_tls`` (then the whole connection is TLS, port-465 style).
    ``xoauth2`` also offers AUTH XOAUTH2, deciding with that check (see :class:`XOAuth2Handler`).
    ``options`` go to aiosmtpd's SMTP class, e.g. ``auth_exclude_mechanism=["PLAIN"]``.
    """
    handler = RecordingHandler() if xoauth2 is None else XOAuth2Handler(xoauth2)
    server = SmtpServer(host, free_port(), handler, ca_file=files.ca_file)
    if isinstance(handler, XOAuth2Handler):
        handler.server = server
    common: dict[str, Any] = {
        "hostname": server.host,
        "port": server.port,
        "auth_required": True,
        "authenticator": _authenticator(server),
        **options,
    }
    if implicit_tls:
        controller: Controller = _ImplicitTlsController(handler, ssl_context=_server_tls(files), **common)
    else:
        controller = Controller(
            handler, tls_context=_server_tls(files), require_starttls=True, auth_require_tls=True, **common
        )
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture
def smtp_server(smtp_tls_files: TlsFiles) -> Iterator[SmtpServer]:
    """aiosmtpd with STARTTLS and AUTH required; knows one user (SMTP_USER / SMTP_PASSWORD)."""
    with run_smtp_server(smtp_tls_files) as server:
        yield server


@pytest.fixture
def smtps_server(smtp_tls_files: TlsFiles) -> Iterator[SmtpServer]:
    """aiosmtpd with implicit TLS (the port-465 style, RFC 8314), AUTH required."""
    with run_smtp_server(smtp_tls_files, implicit_tls=True) as server:
        yield server


@pytest.fixture
def plain_smtp_server() -> Iterator[SmtpServer]:
    """aiosmtpd without TLS or AUTH: clients that insist on STARTTLS must refuse it."""
    handler = RecordingHandler()
    server = SmtpServer("127.0.0.1", free_port(), handler)
    controller = Controller(handler, hostname=server.host, port=server.port)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()
