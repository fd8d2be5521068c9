"""The one SMTP client (the only module allowed to import smtplib) and the system :class:`Mailer`.

The client is split so the SMTP *connector* (an admin-configured SMTP account) can reuse it:
:class:`SmtpTarget` describes where and how to connect, :func:`smtp_verify` checks a target
(connect, EHLO, STARTTLS, AUTH, NOOP) and :func:`smtp_send` delivers one message. Every failure
becomes an :class:`AppError` from the taxonomy: a refused login (535) is ``invalid_credentials``,
anything that stops us from talking to the server over verified TLS is ``provider_unreachable``.

**Every connection goes through the outbound guard** (:class:`app.outbound.OutboundGuard`, the one that
guards HTTP): the socket comes from ``target.guard.connect``, which resolves the host once, refuses
internal addresses unless ``AMI_AUTH_OUTBOUND_ALLOW`` lists them and connects to the vetted address; TLS
(implicit or STARTTLS) still checks the certificate against the configured host name.

**One answer until the peer has shown it speaks SMTP.** Whatever stops us before a ``220`` greeting and a
``250`` answer to EHLO — the guard refused the address, the name does not resolve, the port is closed,
nothing answers, or something that is not an SMTP server answers — is the same ``provider_unreachable``
(:data:`NO_SERVER`, blamed on the host field), given no sooner than the connection deadline
(``target.timeout``). Otherwise an SMTP test would be a port scanner for whoever may configure SMTP (a
service token with ``providers:write``): "refused in 30 ms" vs "silent for 3 s" maps a network. The cause
goes to the server's log (``ami_auth.mailer``), which only operators read.

The :class:`Mailer` picks the transport for the app's own mail (verification, reset, invite):
1. an SMTP account an admin marked as system mailer (:func:`system_mailer_target`: the resolver the app
   factory registers, app/connectors/wiring.py, or one a test or an embedding sets),
2. ``AMI_AUTH_SMTP_URL``,
3. in development and test only, the ``mail_outbox`` table, readable at /admin/outbox.
In production with none of them, sending raises ``invalid_config`` naming AMI_AUTH_SMTP_URL.

This module is infrastructure, like :mod:`app.net`: the sign-in flows (``app.auth``), the jobs and the CLI
send through it, and it imports nothing of theirs. The one thing it needs from above — which stored SMTP
account an admin marked as the system mailer — is a port: the app factory registers the SMTP connector's
answer (:func:`app.connectors.smtp.system_mailer`) with :func:`set_system_mailer_resolver`.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from typing import Literal
from urllib.parse import unquote, urlsplit

from sqlalchemy.orm import Session

from app import metrics
from app.errors import N_, AppError
from app.models import MailOutbox
from app.outbound import OutboundBlocked, OutboundGuard
from app.settings import Settings

log = logging.getLogger("ami_auth.mailer")

Security = Literal["starttls", "tls", "none"]

# RFC 8314 §3.3: implicit TLS on 465 ("submissions"); RFC 6409: submission with STARTTLS on 587.
DEFAULT_PORTS: dict[Security, int] = {"starttls": 587, "tls": 465, "none": 25}
URL_SCHEMES: dict[str, Security] = {"smtp+starttls": "starttls", "smtps": "tls", "smtp": "none"}
# Password mechanisms, tried in this order, over the TLS channel we insist on; CRAM-MD5 adds nothing there.
# An SMTP account may name one (``SmtpTarget.mechanism``), including XOAUTH2 with an OAuth access token.
AUTH_MECHANISMS = ("PLAIN", "LOGIN")
Mechanism = Literal["PLAIN", "LOGIN", "XOAUTH2"]
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to reach an SMTP server. ``password`` never appears in a repr."""

    host: str
    port: int
    security: Security = "starttls"
    username: str = ""
    password: str = field(default="", repr=False)
    from_address: str = ""
    timeout: float = 10.0
    # A PEM bundle to trust instead of the system store (a private CA, or the test server's CA).
    ca_file: str | None = None
    # Sent in EHLO. smtplib's default is socket.getfqdn(), which can stall on DNS.
    local_hostname: str = "localhost"
    # The SMTP connector's account settings: one mechanism instead of "PLAIN, else LOGIN"; the OAuth access
    # token XOAUTH2 sends; and a check run before each delivery (the account's daily send cap).
    mechanism: Mechanism | None = None
    oauth_token: str = field(default="", repr=False)
    before_send: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    # Which addresses may be reached (AMI_AUTH_OUTBOUND_ALLOW, via OutboundGuard.from_settings); the
    # default allows nothing internal.
    guard: OutboundGuard = field(default_factory=OutboundGuard, repr=False, compare=False)


def parse_smtp_url(
    url: str,
    *,
    from_address: str = "",
    timeout: float = 10.0,
    ca_file: str | None = None,
    local_hostname: str = "localhost",
    guard: OutboundGuard | None = None,
) -> SmtpTarget:
    """``smtp+starttls://user:pass@host:587``, ``smtps://…:465`` or ``smtp://127.0.0.1:25`` (local relays only).

    The user and password are percent-decoded, so a password with ``@`` or ``:`` is written ``%40``/``%3A``.
    """
    parts = urlsplit(url)
    security = URL_SCHEMES.get(parts.scheme)
    hint = "Use smtp+starttls://user:password@host:587 or smtps://user:password@host:465 in AMI_AUTH_SMTP_URL."
    if security is None:
        raise AppError("invalid_config", N_("The mail URL has an unknown scheme."), hint)
    try:
        port = parts.port or DEFAULT_PORTS[security]
    except ValueError:
        raise AppError("invalid_config", N_("The mail URL has an invalid port."), hint) from None
    host = parts.hostname or ""
    if not host:
        raise AppError("invalid_config", N_("The mail URL has no host."), hint)
    if security == "none" and host not in LOOPBACK:
        raise AppError("invalid_config", N_("Plain smtp:// is only allowed to a relay on 127.0.0.1."), hint)
    return SmtpTarget(
        host=host,
        port=port,
        security=security,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        from_address=from_address,
        timeout=timeout,
        ca_file=ca_file,
        local_hostname=local_hostname,
        guard=guard or OutboundGuard(),
    )


def tls_context(target: SmtpTarget) -> ssl.SSLContext:
    """Certificate and host-name verification always on (RFC 8314 §4.1: no opportunistic fallback)."""
    context = ssl.create_default_context(cafile=target.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _server_said(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    return f"{exc.smtp_code} {text}"[:200]


def _login(client: smtplib.SMTP, target: SmtpTarget) -> None:
    if not client.has_extn("auth"):
        raise AppError(
            "invalid_config",
            N_("%(host)s does not offer authentication on this connection.", host=target.host),
            N_("Use STARTTLS or implicit TLS (most servers only offer AUTH over TLS), or remove the username."),
        )
    offered = client.esmtp_features.get("auth", "").upper().split()
    if target.mechanism is not None and target.mechanism not in offered:
        raise AppError(
            "invalid_config",
            N_(
                "%(host)s does not offer AUTH %(mechanism)s (%(none)s).",
                host=target.host,
                mechanism=target.mechanism,
                none=" ".join(offered) or "none",
            ),
            N_("Choose a login method the server offers."),
        )
    if target.mechanism == "XOAUTH2":
        # https://developers.google.com/gmail/imap/xoauth2-protocol; after a failure the server sends a
        # 334 challenge with error details and expects an empty reply, then answers 535.
        initial = f"user={target.username}\x01auth=Bearer {target.oauth_token}\x01\x01"
        client.auth("XOAUTH2", lambda challenge=None: initial if challenge is None else "")
        return
    for mechanism in (target.mechanism,) if target.mechanism is not None else AUTH_MECHANISMS:
        if mechanism in offered:
            # smtplib's auth_plain/auth_login read these attributes (that is how SMTP.login works).
            client.user, client.password = target.username, target.password
            authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
            client.auth(mechanism, authobject)
            return
    raise AppError(
        "invalid_config",
        N_("%(host)s offers no supported login method (%(none)s).", host=target.host, none=" ".join(offered) or "none"),
        N_("The server must offer AUTH PLAIN or LOGIN."),
    )


NO_SERVER = "No SMTP server answered at {where}."
NO_SERVER_HINT = (
    "Check the host, the port and the connection security; an internal address must be listed in "
    "AMI_AUTH_OUTBOUND_ALLOW. The server's log names the cause (this answer does not, so that the test "
    "cannot be used to scan a network)."
)


class _NotSmtp(smtplib.SMTPException):
    """The peer greeted but did not answer EHLO like an SMTP server (an FTP server also greets with 220)."""


def _cause(exc: BaseException, timeout: float) -> str:
    """What stopped the connection, for the operator's log: fixed phrases and codes, never peer-sent text."""
    if isinstance(exc, OutboundBlocked):
        return exc.text
    if isinstance(exc, smtplib.SMTPConnectError):
        return f"not an SMTP greeting (code {exc.smtp_code})"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        # smtplib's own words ("Connection unexpectedly closed: timed out"), not the peer's.
        return f"no SMTP greeting ({exc})"[:200]
    if isinstance(exc, _NotSmtp):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"no greeting within {timeout:g}s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"[:200]


def _guarded_socket(guard: OutboundGuard, host: str, port: int, deadline: float) -> socket.socket:
    sock = guard.connect(host, port, timeout=max(0.01, deadline - time.monotonic()))
    # The greeting (and, for implicit TLS, the handshake) must arrive within what is left of the deadline.
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    return sock


class _GuardedSMTP(smtplib.SMTP):
    """``smtplib.SMTP`` whose socket comes from the outbound guard.

    ``_get_socket`` is smtplib's own seam for this (``SMTP_SSL`` overrides it the same way); smtplib keeps
    the configured host for STARTTLS's ``server_hostname``, so the certificate is checked against it.
    """

    def __init__(self, target: SmtpTarget, deadline: float) -> None:
        self._guard, self._deadline = target.guard, deadline
        super().__init__(target.host, target.port, local_hostname=target.local_hostname, timeout=target.timeout)

    def _get_socket(self, host: str, port: int, timeout: float | None) -> socket.socket:
        return _guarded_socket(self._guard, host, port, self._deadline)


class _GuardedSMTPSSL(smtplib.SMTP_SSL):
    """Implicit TLS (RFC 8314) over a guarded socket; SNI and the certificate check use the configured host."""

    def __init__(self, target: SmtpTarget, deadline: float) -> None:
        self._guard, self._deadline, self._server_name = target.guard, deadline, target.host
        super().__init__(
            target.host,
            target.port,
            local_hostname=target.local_hostname,
            timeout=target.timeout,
            context=tls_context(target),
        )

    def _get_socket(self, host: str, port: int, timeout: float | None) -> socket.socket:
        sock = _guarded_socket(self._guard, host, port, self._deadline)
        try:
            return self.context.wrap_socket(sock, server_hostname=self._server_name)
        except BaseException:
            sock.close()
            raise


def _open(target: SmtpTarget) -> smtplib.SMTP:
    """Connect through the guard and check that an SMTP server answers (220 greeting, 250 to EHLO).

    Every failure up to that point is the one :data:`NO_SERVER` answer, given at the deadline.
    """
    started = time.monotonic()
    deadline = started + target.timeout
    where = f"{target.host}:{target.port}"
    client: smtplib.SMTP | None = None
    try:
        client = _GuardedSMTPSSL(target, deadline) if target.security == "tls" else _GuardedSMTP(target, deadline)
        code, _reply = client.ehlo()
        if code != 250:
            raise _NotSmtp(f"EHLO answered {code}")
    except (OutboundBlocked, OSError, ValueError) as exc:  # smtplib's and ssl's errors are OSErrors
        if client is not None:
            client.close()
        log.warning("SMTP %s: %s", where, _cause(exc, target.timeout))
        # The same answer in the same time: a closed port and a refused address must not answer sooner.
        time.sleep(max(0.0, deadline - time.monotonic()))
        raise AppError("provider_unreachable", NO_SERVER.format(where=where), NO_SERVER_HINT) from None
    assert client.sock is not None
    client.sock.settimeout(target.timeout)
    return client


@contextmanager
def _session(target: SmtpTarget) -> Iterator[smtplib.SMTP]:
    """An SMTP connection that has said EHLO, switched to TLS and logged in; SMTP errors mapped to AppError."""
    where = f"{target.host}:{target.port}"
    client = _open(target)
    try:
        if target.security == "starttls":
            if not client.has_extn("starttls"):
                raise AppError(
                    "provider_unreachable",
                    N_("The mail server at %(where)s does not offer STARTTLS.", where=where),
                    N_("Use the submission port (587) of a server that supports STARTTLS, or smtps:// on port 465."),
                )
            client.starttls(context=tls_context(target))
            client.ehlo()  # RFC 3207 §4.2: forget what was learned before TLS and ask again
        if target.username:
            _login(client, target)
        yield client
    except AppError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise AppError(
            "invalid_credentials",
            N_("The mail server refused the login (%(exc)s).", exc=_server_said(exc)),
            N_("Check the SMTP username and password; some providers need an app password."),
        ) from None
    except smtplib.SMTPSenderRefused as exc:
        raise AppError(
            "invalid_config",
            N_("The mail server refused the sender address (%(exc)s).", exc=_server_said(exc)),
            N_("Use a from address this account may send as (AMI_AUTH_MAIL_FROM or the account's from address)."),
        ) from None
    except smtplib.SMTPRecipientsRefused as exc:
        codes = ", ".join(f"{code} {msg.decode('utf-8', 'replace')}"[:120] for code, msg in exc.recipients.values())
        raise AppError(
            "validation_failed",
            N_("The mail server refused the recipient (%(codes)s).", codes=codes),
            N_("Check the email address."),
        ) from None
    except smtplib.SMTPResponseException as exc:
        if exc.smtp_code == 530:
            # RFC 4954 §6: 530 = authentication required.
            raise AppError(
                "invalid_credentials",
                N_("The mail server requires a login (%(exc)s).", exc=_server_said(exc)),
                N_("Add the SMTP username and password."),
            ) from None
        raise AppError(
            "provider_unreachable",
            N_("The mail server at %(where)s answered %(exc)s.", where=where, exc=_server_said(exc)),
            "Try again later; if it persists, check the server's logs." if exc.smtp_code < 500 else None,
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise AppError(
            "provider_unreachable",
            N_(
                "The mail server at %(where)s presented a certificate we cannot trust (%(verify_message)s).",
                where=where,
                verify_message=exc.verify_message,
            ),
            N_("The certificate must be valid for the host name; for a private CA set AMI_AUTH_SMTP_CA_FILE."),
        ) from None
    except ssl.SSLError as exc:
        raise AppError(
            "provider_unreachable",
            N_(
                "TLS with the mail server at %(where)s failed (%(__name__)s).",
                where=where,
                __name__=exc.reason or type(exc).__name__,
            ),
            N_("Check the security setting for this port: smtps:// (implicit TLS) on 465, smtp+starttls:// on 587."),
        ) from None
    except smtplib.SMTPNotSupportedError:
        raise AppError(
            "provider_unreachable",
            N_("The mail server at %(where)s does not support a required extension.", where=where),
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise AppError(
            "provider_unreachable",
            N_(
                "The connection to the mail server at %(where)s failed (%(__name__)s).",
                where=where,
                __name__=type(exc).__name__,
            ),
            N_("Try again; if it persists, check the server's logs."),
        ) from None
    finally:
        with suppress(smtplib.SMTPException, OSError):
            client.quit()
        client.close()


def smtp_verify(target: SmtpTarget) -> None:
    """Connect, EHLO, STARTTLS, AUTH and NOOP: raises an AppError, or returns when the target works."""
    with _session(target) as client:
        code, _reply = client.noop()
        if code != 250:
            raise AppError("provider_unreachable", N_("The mail server answered NOOP with %(code)s.", code=code))


def smtp_send(target: SmtpTarget, message: EmailMessage) -> None:
    """Deliver one message; the envelope comes from its From/To headers."""
    sender = parseaddr(str(message["From"]))[1]
    recipients = [addr for _name, addr in getaddresses([str(v) for v in message.get_all("To", [])]) if addr]
    if target.before_send is not None:
        target.before_send()
    with _session(target) as client:
        client.send_message(message, from_addr=sender, to_addrs=recipients)


def build_message(from_address: str, to: str, subject: str, text: str, html: str | None = None) -> EmailMessage:
    """A text message with an optional HTML alternative; headers reject CR/LF (email.policy.default)."""
    message = EmailMessage()
    message["From"] = from_address
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    domain = parseaddr(from_address)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)  # with a domain: make_msgid would otherwise call getfqdn()
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


Transport = SmtpTarget | Literal["outbox"]

# (session, settings) → the admin-marked SMTP account's target, or None when no account is marked.
SystemMailerResolver = Callable[[Session, Settings], SmtpTarget | None]

_system_mailer: SystemMailerResolver | None = None


def set_system_mailer_resolver(resolver: SystemMailerResolver | None) -> SystemMailerResolver | None:
    """Register the function that finds the admin-marked SMTP account (the app factory registers the SMTP
    connector's; tests and embedders may swap it); returns the one it replaces, so it can be put back."""
    global _system_mailer
    previous, _system_mailer = _system_mailer, resolver
    return previous


def system_mailer_target(db: Session, settings: Settings) -> SmtpTarget | None:
    """The admin-marked system mailer's SMTP target, or None when there is none (or nothing is registered)."""
    return _system_mailer(db, settings) if _system_mailer is not None else None


class Mailer:
    """The app's own mail. Send *after* committing the change a mail describes: a mail cannot be unsent."""

    def __init__(self, db: Session, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def transport(self) -> Transport:
        target = system_mailer_target(self.db, self.settings)
        if target is not None:
            return target
        if self.settings.smtp_url:
            return parse_smtp_url(
                self.settings.smtp_url,
                from_address=self.settings.mail_from,
                timeout=self.settings.outbound_timeout,
                ca_file=str(self.settings.smtp_ca_file) if self.settings.smtp_ca_file else None,
                local_hostname=urlsplit(self.settings.base_url).hostname or "localhost",
                guard=OutboundGuard.from_settings(self.settings),
            )
        if not self.settings.is_production:
            return "outbox"
        raise AppError(
            "invalid_config",
            N_("No mailer is configured, so this mail cannot be sent."),
            N_(
                "Set AMI_AUTH_SMTP_URL (smtp+starttls://user:password@host:587), "
                "or mark an SMTP account as the system mailer."
            ),
        )

    def send(self, to: str, subject: str, text: str, html: str | None = None) -> None:
        transport = self.transport()
        if transport == "outbox":
            # Committed on its own, like a delivered mail: the caller has already committed its change.
            self.db.add(MailOutbox(to=to, subject=subject, text=text, html=html))
            self.db.commit()
            metrics.MAIL_SENDS.labels(transport="outbox", outcome="sent").inc()
            log.info("mail to %s stored in the outbox (no SMTP configured): %s", to, subject)
            return
        from_address = transport.from_address or self.settings.mail_from
        # Nothing is held while the SMTP server answers (up to the timeout per command): this ends the read of the
        # system mailer's account and its secret (the caller has committed its change before sending).
        self.db.commit()
        try:
            smtp_send(transport, build_message(from_address, to, subject, text, html))
        except AppError as exc:
            metrics.MAIL_SENDS.labels(transport="smtp", outcome=exc.code).inc()
            raise
        metrics.MAIL_SENDS.labels(transport="smtp", outcome="sent").inc()
        log.info("mail to %s sent via %s:%s: %s", to, transport.host, transport.port, subject)
