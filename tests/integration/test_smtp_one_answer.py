"""An SMTP test is not a port scanner.

A closed port, a port that accepts and never speaks, a port that speaks another protocol (an SSH banner), a
name that does not resolve, and an address the outbound guard refuses (with a real SMTP server listening
there) all get one and the same answer — code, message, field — through every face that tests SMTP: the
JSON API (provider-config test, the CMS's add-account dialog, account refresh), the console's secret dialog
and the CLI (`ami-auth providers test`, `ami-auth mail test`). The cause goes to the server log, for the
operator. A real SMTP server that refuses the password is still `invalid_credentials` on the password.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import create_app
from app.api import tokens
from app.audit import AuditContext
from app.connectors import accounts
from app.extensions import get_cipher
from app.mailer import NO_SERVER_HINT
from app.models import AuditEvent, ConnectedAccount, ProviderConfig
from app.net import get_client
from app.settings import Settings
from app.vault import Secret
from tests.conftest import UserFactory, dispose_app, make_settings, sign_in
from tests.support.accounts import CTX, blamed_fields, csrf_of, make_account, make_config, post_dialog, result_code
from tests.support.listeners import SSH_BANNER, listening
from tests.support.live import free_port
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, SmtpServer, TlsFiles, run_smtp_server

CMS = "https://cms.example.com"
ADMIN = "admin@example.com"
CASES = ("closed port", "silent port", "SSH banner", "no such name", "guard refused")
# What every case must read as, with the host:port the admin typed replaced by <server>.
NO_SERVER = "No SMTP server answered at <server>."
# The dialogs' result panel: the host is set in the provider config, not on the dialog, and the summary says so.
ON_HOST = (("config.host", f"Provider config · Server host (set in the provider\u2019s settings): {NO_SERVER}"),)
# Words that would tell the cases apart; none may reach the caller.
TELLTALES = ("refused", "loopback", "not allowed", "SSH", "timed out", "DNS", "resolve", "greeting", "127.0.0.3")


@dataclass(frozen=True)
class Where:
    host: str
    port: int

    def same(self, text: str) -> str:
        """``text`` with this host:port replaced, so answers for different servers can be compared."""
        return text.replace(f"{self.host}:{self.port}", "<server>")


@pytest.fixture(scope="module")
def not_smtp(smtp_tls_files: TlsFiles) -> Iterator[dict[str, Where]]:
    with (
        listening() as silent,
        listening(banner=SSH_BANNER) as ssh,
        # A real SMTP server at an address AMI_AUTH_OUTBOUND_ALLOW (127.0.0.1 in tests) does not list.
        run_smtp_server(smtp_tls_files, host="127.0.0.3") as internal,
    ):
        yield {
            "closed port": Where("127.0.0.1", free_port()),
            "silent port": Where("127.0.0.1", silent.port),
            "SSH banner": Where("127.0.0.1", ssh.port),
            "no such name": Where("smtp.nowhere.invalid", 587),
            "guard refused": Where(internal.host, internal.port),
        }
        assert internal.logins == [] and internal.messages == []


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str, smtp_tls_files: TlsFiles) -> Settings:
    return make_settings(
        tmp_path,
        sqlite_url,
        # Each of these answers waits for the connection deadline: keep it short here.
        AMI_AUTH_OUTBOUND_TIMEOUT="0.5",
        AMI_AUTH_OUTBOUND_RETRIES="0",
        AMI_AUTH_SMTP_CA_FILE=str(smtp_tls_files.ca_file),
        AMI_AUTH_CMS_ORIGINS=CMS,
    )


@dataclass
class Harness:
    """An SMTP config and an active account on it (verified against a real server), which each case then
    points somewhere else; an admin's browser; service tokens."""

    app: Flask
    db: Session
    browser: FlaskClient
    config: ProviderConfig
    account: ConnectedAccount

    def point_at(self, where: Where) -> None:
        self.db.refresh(self.config)
        self.config.config = {**self.config.config, "host": where.host, "port": where.port}
        self.db.commit()

    def token(self, *scopes: str) -> dict[str, str]:
        raw = tokens.create_token(self.db, AuditContext(actor="test"), name="CMS", scopes=list(scopes), created_by=None)
        self.db.commit()
        return {"Authorization": f"Bearer {raw.raw}"}

    def cli(self, *args: str, app: Flask | None = None) -> tuple[int, str]:
        result = (app or self.app).test_cli_runner().invoke(args=list(args))
        return result.exit_code, result.output


@pytest.fixture
def harness(app: Flask, db: Session, make_user: UserFactory, smtp_server: SmtpServer) -> Harness:
    settings = app.extensions["ami_settings"]
    config = make_config(
        db, get_cipher(app), settings, "smtp", {"host": smtp_server.host, "port": smtp_server.port}, name="Mail"
    )
    account = make_account(db, config, {"from_address": "mailer@example.com", "username": SMTP_USER}, label="Mailer")
    with app.app_context():
        accounts.save_secrets(
            db, get_cipher(app), get_client(app), settings, CTX, account, {"password": Secret(SMTP_PASSWORD)}
        )
    db.commit()
    make_user(ADMIN, role="admin")
    browser = app.test_client()
    assert sign_in(browser, ADMIN).status_code == 302
    return Harness(app, db, browser, config, account)


# --- the faces: each returns what the caller sees, with the server's host:port replaced --------------------


def api_config_test(h: Harness, where: Where) -> tuple[Any, ...]:
    h.point_at(where)
    response = h.browser.post(
        f"/api/account-manager/provider-configs/{h.config.id}/test", headers=h.token("providers:write")
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    return body["status"], body["code"], body["field"], where.same(body["message"])


def api_refresh(h: Harness, where: Where) -> tuple[Any, ...]:
    h.point_at(where)
    response = h.browser.post(
        f"/api/account-manager/accounts/{h.account.id}/refresh", headers=h.token("accounts:write")
    )
    # The server could not be asked: no verdict on the password, so an error answer (nothing recorded on the account).
    error = response.get_json()["error"]
    return response.status_code, error["code"], where.same(error["message"]), error["hint"]


def _form_action(html: str, contains: str) -> str:
    for action in re.findall(r'<form[^>]*\saction="([^"]+)"|formaction="([^"]+)"', html):
        joined = "".join(action).replace("&amp;", "&")
        if contains in joined:
            return joined
    raise AssertionError(f"no form posting to …{contains}…")


def api_add_account_dialog(h: Harness, where: Where) -> tuple[Any, ...]:
    """The CMS asks for an add-account link; the admin types the password, tests, then saves."""
    h.point_at(where)
    issued = h.browser.post(
        "/api/account-manager/dialogs",
        json={"kind": "add_account", "provider_config_id": h.config.id, "return_to": f"{CMS}/mail"},
        headers=h.token("accounts:write"),
    )
    assert issued.status_code == 201, issued.get_data(as_text=True)
    url = urlsplit(issued.get_json()["url"])
    html = h.browser.get(f"{url.path}?{url.query}").get_data(as_text=True)
    data = {
        "csrf_token": csrf_of(html),
        "label": "Second mailbox",
        "from_address": "second@example.com",
        "username": SMTP_USER,
        "auth_mechanism": "PLAIN",
        "password": SMTP_PASSWORD,
    }
    panel = h.browser.post(_form_action(html, "/dialogs/cms/test"), data=data, headers={"HX-Request": "true"})
    saved = h.browser.post(_form_action(html, "/dialogs/cms?"), data=data)
    page = saved.get_data(as_text=True)
    assert "Location" not in saved.headers and SMTP_PASSWORD not in page
    tested = panel.get_data(as_text=True)
    fields = {k: where.same(v) for k, v in blamed_fields(tested).items()}
    return result_code(tested), tuple(fields.items()), saved.status_code, result_code(page)


def console_secret_dialog(h: Harness, where: Where) -> tuple[Any, ...]:
    h.point_at(where)
    _status, panel = post_dialog(h.browser, h.account.id, {"password": SMTP_PASSWORD}, test=True, htmx=True)
    fields = {k: where.same(v) for k, v in blamed_fields(panel).items()}
    return result_code(panel), tuple(fields.items())


def cli_providers_test(h: Harness, where: Where) -> tuple[Any, ...]:
    h.point_at(where)
    code, output = h.cli("providers", "test", str(h.config.id))
    return code, where.same(output)


def cli_mail_test(h: Harness, where: Where) -> tuple[Any, ...]:
    """AMI_AUTH_SMTP_URL pointed at the server (an operator's setting: the same guard, the same answer)."""
    settings = h.app.extensions["ami_settings"]
    env = {
        "AMI_AUTH_SMTP_URL": f"smtp+starttls://{SMTP_USER}:pw@{where.host}:{where.port}",
        "AMI_AUTH_OUTBOUND_TIMEOUT": "0.5",
        "AMI_AUTH_SMTP_CA_FILE": str(settings.smtp_ca_file),
    }
    app = create_app(make_settings(settings.instance_dir, settings.database_url, **env))
    try:
        code, output = h.cli("mail", "test", "someone@example.com", app=app)
    finally:
        dispose_app(app)
    return code, where.same(output)


Face = Callable[[Harness, Where], tuple[Any, ...]]
FACES: dict[str, tuple[Face, tuple[Any, ...]]] = {
    "POST /api/account-manager/provider-configs/<id>/test": (
        api_config_test,
        ("failed", "provider_unreachable", "host", f"{NO_SERVER} {NO_SERVER_HINT}"),
    ),
    "POST /api/account-manager/accounts/<id>/refresh": (
        api_refresh,
        (502, "provider_unreachable", NO_SERVER, NO_SERVER_HINT),
    ),
    "CMS add-account dialog (test, then save)": (
        api_add_account_dialog,
        ("provider_unreachable", ON_HOST, 502, "provider_unreachable"),
    ),
    "console secret dialog": (console_secret_dialog, ("provider_unreachable", ON_HOST)),
    "ami-auth providers test": (cli_providers_test, (1, f"Mail: failed: {NO_SERVER} {NO_SERVER_HINT}\n")),
    "ami-auth mail test": (cli_mail_test, (1, f"Error: provider_unreachable: {NO_SERVER} {NO_SERVER_HINT}\n")),
}


@pytest.mark.parametrize("face", FACES)
def test_every_failure_before_an_smtp_greeting_gets_one_answer(
    face: str, harness: Harness, not_smtp: dict[str, Where], caplog: pytest.LogCaptureFixture
) -> None:
    run, expected = FACES[face]
    caplog.set_level(logging.WARNING, "ami_auth.mailer")
    answers = {case: run(harness, not_smtp[case]) for case in CASES}
    assert set(answers.values()) == {expected}, answers
    assert not any(word in str(answer) for word in TELLTALES for answer in answers.values()), answers
    # The operator's log tells the cases apart.
    log = caplog.text
    assert "Outbound address not allowed: 127.0.0.3 (loopback)" in log
    assert "ConnectionRefusedError" in log and "DNS lookup failed" in log
    assert "not an SMTP greeting" in log and "no SMTP greeting" in log


def test_the_audit_trail_keeps_only_the_code(harness: Harness, not_smtp: dict[str, Where]) -> None:
    for case in ("closed port", "guard refused"):
        api_config_test(harness, not_smtp[case])
    harness.db.expire_all()
    events = harness.db.scalars(select(AuditEvent).where(AuditEvent.action == "provider_config.test")).all()
    assert [e.details for e in events] == [{"status": "failed", "code": "provider_unreachable"}] * 2


def test_a_real_server_refusing_the_password_is_still_invalid_credentials(harness: Harness) -> None:
    _status, panel = post_dialog(harness.browser, harness.account.id, {"password": "not it"}, test=True, htmx=True)
    assert result_code(panel) == "invalid_credentials"
    assert list(blamed_fields(panel)) == ["password"]
