"""The mailer against a real aiosmtpd server: STARTTLS/implicit TLS with verified certificates, AUTH,
failures mapped to the taxonomy, transport selection (system mailer, AMI_AUTH_SMTP_URL, outbox)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app import create_app
from app.errors import AppError
from app.extensions import get_database
from app.mailer import (
    Mailer,
    SmtpTarget,
    build_message,
    parse_smtp_url,
    set_system_mailer_resolver,
    smtp_send,
    smtp_verify,
)
from app.outbound import OutboundGuard
from app.preflight import preflight, system_mailer_configured
from app.settings import Settings, SettingsError, with_overrides
from tests.conftest import make_settings
from tests.support.hold import connections_while_held
from tests.support.live import free_port
from tests.support.mailbox import outbox
from tests.support.smtp import (
    SMTP_PASSWORD,
    SMTP_USER,
    SmtpServer,
    TlsFiles,
    body_text,
    html_text,
    run_smtp_server,
)

# The test servers listen on 127.0.0.1, which the outbound guard refuses unless allowed.
LOCAL = OutboundGuard.from_allow(["127.0.0.1"])


def _target(server: SmtpServer, *, password: str | None = None, scheme: str = "smtp+starttls") -> SmtpTarget:
    return parse_smtp_url(
        server.url(password, scheme=scheme),
        ca_file=str(server.ca_file) if server.ca_file else None,
        timeout=5,
        from_address="AMI Auth <no-reply@example.test>",
        guard=LOCAL,
    )


def test_url_parsing_decodes_user_and_password_and_hides_password() -> None:
    target = parse_smtp_url("smtp+starttls://me%40corp.test:p%40ss%3Aw%2Frd@mail.example.com")
    assert (target.host, target.port, target.security) == ("mail.example.com", 587, "starttls")
    assert (target.username, target.password) == ("me@corp.test", "p@ss:w/rd")
    assert "p@ss" not in repr(target)
    assert parse_smtp_url("smtps://u:p@mail.example.com").port == 465
    assert parse_smtp_url("smtp://127.0.0.1").security == "none"
    with pytest.raises(AppError) as plain:
        parse_smtp_url("smtp://mail.example.com:25")
    assert plain.value.code == "invalid_config"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com:25", "only for a relay on 127.0.0.1"),
        ("smtp+starttls://user:pass@:587", "needs a host"),
        ("smtp+starttls://mail.example.com:99999", "invalid port"),
    ],
)
def test_settings_refuse_unsafe_or_broken_smtp_urls(tmp_path: Path, url: str, expected: str) -> None:
    with pytest.raises(SettingsError) as exc:
        make_settings(tmp_path, "sqlite:///x.db", AMI_AUTH_SMTP_URL=url)
    assert exc.value.variable == "AMI_AUTH_SMTP_URL" and expected in exc.value.problem


def test_settings_ca_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as exc:
        make_settings(tmp_path, "sqlite:///x.db", AMI_AUTH_SMTP_CA_FILE=str(tmp_path / "missing.pem"))
    assert exc.value.variable == "AMI_AUTH_SMTP_CA_FILE"


def test_send_over_starttls_with_auth(smtp_server: SmtpServer) -> None:
    target = _target(smtp_server)
    smtp_verify(target)
    message = build_message(target.from_address, "ann@example.com", "Hello", "Plain body\n", "<p>HTML body</p>")
    smtp_send(target, message)
    received = smtp_server.wait_for("ann@example.com")
    assert received["Subject"] == "Hello"
    assert received["From"] == "AMI Auth <no-reply@example.test>"
    assert body_text(received).strip() == "Plain body"
    assert "<p>HTML body</p>" in html_text(received)
    assert received["Message-ID"].endswith("@example.test>")
    # The server only offers AUTH after STARTTLS, so a login proves the session was encrypted.
    assert smtp_server.logins and all(login.endswith(SMTP_USER) for login in smtp_server.logins)


def test_auth_login_when_plain_is_not_offered(smtp_tls_files: TlsFiles) -> None:
    with run_smtp_server(smtp_tls_files, auth_exclude_mechanism=["PLAIN"]) as server:
        target = _target(server)
        smtp_send(target, build_message(target.from_address, "lo@example.com", "Via LOGIN", "Body\n"))
        assert server.wait_for("lo@example.com")["Subject"] == "Via LOGIN"
        assert server.logins == [f"LOGIN:{SMTP_USER}"]


def test_send_over_implicit_tls(smtps_server: SmtpServer) -> None:
    target = _target(smtps_server, scheme="smtps")
    assert target.security == "tls"
    smtp_send(target, build_message(target.from_address, "bob@example.com", "Over 465", "Body\n"))
    assert smtps_server.wait_for("bob@example.com")["Subject"] == "Over 465"


def test_wrong_password_is_invalid_credentials(smtp_server: SmtpServer) -> None:
    with pytest.raises(AppError) as exc:
        smtp_verify(_target(smtp_server, password="not the password"))
    assert exc.value.code == "invalid_credentials"
    assert "535" in exc.value.text
    assert "not the password" not in exc.value.text + exc.value.help
    assert smtp_server.messages == []


def test_server_without_starttls_is_unreachable(plain_smtp_server: SmtpServer) -> None:
    with pytest.raises(AppError) as exc:
        smtp_send(
            _target(plain_smtp_server),
            build_message("a@example.test", "c@example.com", "Must not be sent in the clear", "x\n"),
        )
    assert exc.value.code == "provider_unreachable"
    assert "STARTTLS" in exc.value.text
    assert plain_smtp_server.messages == []


def test_closed_port_is_unreachable() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(AppError) as exc:
        smtp_verify(SmtpTarget("127.0.0.1", port, timeout=0.5, guard=LOCAL))
    assert exc.value.code == "provider_unreachable"
    assert f"127.0.0.1:{port}" in exc.value.text


def test_untrusted_certificate_is_unreachable(smtp_server: SmtpServer) -> None:
    # Without the test CA the server's certificate must be refused: no silent downgrade.
    target = parse_smtp_url(smtp_server.url(), timeout=5, guard=LOCAL)
    with pytest.raises(AppError) as exc:
        smtp_verify(target)
    assert exc.value.code == "provider_unreachable"
    assert "certificate" in exc.value.text
    assert "AMI_AUTH_SMTP_CA_FILE" in exc.value.help


def test_wrong_tls_mode_for_the_port_is_unreachable(smtp_server: SmtpServer) -> None:
    with pytest.raises(AppError) as exc:
        smtp_verify(_target(smtp_server, scheme="smtps"))  # implicit TLS against a STARTTLS port
    assert exc.value.code == "provider_unreachable"


def test_silent_server_times_out_as_unreachable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the TCP connection, never greets
        port = listener.getsockname()[1]
        with pytest.raises(AppError) as exc:
            smtp_verify(SmtpTarget("127.0.0.1", port, timeout=0.5, guard=LOCAL))
    assert exc.value.code == "provider_unreachable"


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError):
        build_message("a@example.test", "victim@example.com", "Hi\r\nBcc: other@example.com", "x\n")


# --- the Mailer: which transport ------------------------------------------------------------------


def test_test_env_without_smtp_keeps_mail_in_the_outbox(settings: Settings, db: Session) -> None:
    mailer = Mailer(db, settings)
    assert mailer.transport() == "outbox"
    mailer.send("dev@example.com", "Subject line", "text body\n", "<p>html</p>")
    (mail,) = outbox(db, "dev@example.com")
    assert (mail.subject, mail.text, mail.html) == ("Subject line", "text body\n", "<p>html</p>")


def test_smtp_url_setting_sends_over_smtp(settings: Settings, db: Session, smtp_server: SmtpServer) -> None:
    configured = with_overrides(settings, smtp_url=smtp_server.url(), smtp_ca_file=smtp_server.ca_file)
    Mailer(db, configured).send("eve@example.com", "Via URL", "body\n")
    received = smtp_server.wait_for("eve@example.com")
    assert received["From"] == settings.mail_from
    assert outbox(db) == []


def test_a_mail_being_sent_holds_no_database_connection(
    settings: Settings, db: Session, smtp_server: SmtpServer
) -> None:
    """An SMTP server may take its timeout (10 s) for each command: while it answers, the sender keeps no
    transaction open (reading which account is the system mailer opened one), so no connection of the pool the
    requests share is tied up."""
    configured = with_overrides(settings, smtp_url=smtp_server.url(), smtp_ca_file=smtp_server.ca_file)
    engine = db.get_bind()
    assert isinstance(engine, Engine)
    with Session(engine) as own:
        idle, held, _ = connections_while_held(
            engine, smtp_server.handler.hold, lambda: Mailer(own, configured).send("eve@example.com", "Held", "b\n")
        )
    assert held == idle
    assert smtp_server.wait_for("eve@example.com")["Subject"] == "Held"


def test_production_without_mailer_refuses_naming_the_variable(settings: Settings, db: Session) -> None:
    production = with_overrides(settings, env="production")
    with pytest.raises(AppError) as exc:
        Mailer(db, production).send("x@example.com", "s", "t\n")
    assert exc.value.code == "invalid_config"
    assert "AMI_AUTH_SMTP_URL" in exc.value.help
    assert outbox(db) == []


@pytest.fixture
def system_mailer(smtp_server: SmtpServer) -> Iterator[SmtpServer]:
    previous = set_system_mailer_resolver(lambda _db, _settings: _target(smtp_server))
    try:
        yield smtp_server
    finally:
        set_system_mailer_resolver(previous)


def test_system_mailer_comes_first(settings: Settings, db: Session, system_mailer: SmtpServer) -> None:
    # Even with AMI_AUTH_SMTP_URL pointing elsewhere, the admin-marked account is used.
    configured = with_overrides(settings, smtp_url=f"smtp+starttls://u:p@127.0.0.1:{free_port()}")
    Mailer(db, configured).send("sys@example.com", "Via system mailer", "body\n")
    received = system_mailer.wait_for("sys@example.com")
    assert received["From"] == "AMI Auth <no-reply@example.test>"  # the account's own from address


def test_check_config_reports_a_missing_mailer_in_production(settings: Settings) -> None:
    production = with_overrides(settings, env="production", base_url="https://auth.example.com")
    app: Flask = create_app(production)
    try:
        assert any("AMI_AUTH_SMTP_URL" in p for p in preflight(app))
        assert not system_mailer_configured(app)
        previous = set_system_mailer_resolver(lambda _db, _s: SmtpTarget("smtp.example.com", 587))
        try:
            assert system_mailer_configured(app)
            assert not any("AMI_AUTH_SMTP_URL" in p for p in preflight(app))
        finally:
            set_system_mailer_resolver(previous)
    finally:
        get_database(app).remove()
        get_database(app).engine.dispose()


def test_password_is_never_in_errors(smtp_server: SmtpServer) -> None:
    with pytest.raises(AppError) as exc:
        smtp_verify(_target(smtp_server, password="wrong-" + SMTP_PASSWORD))
    rendered = str(exc.value.to_dict())
    assert SMTP_PASSWORD not in rendered
