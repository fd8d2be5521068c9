"""Connected accounts in real Chromium: an admin adds an OpenAI account (against the OpenAI stand-in) and an
SMTP account (against a real aiosmtpd with STARTTLS + AUTH), tests, saves, replaces and deletes each; and an
SMTP account that logs in with XOAUTH2, with a token the real OpenID provider issued and refreshes.

Every HTML response the browser receives (pages and htmx fragments) and every log line of the run is kept
and scanned at the end: no secret value typed during the test may appear in any of them. The secure dialog
must leave nothing in localStorage or sessionStorage.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Page, Response, expect
from sqlalchemy import select

from app.auth import users
from app.extensions import get_cipher, get_database, get_settings
from app.models import User
from app.oauth.connections import load_tokens
from app.settings import Settings
from tests.conftest import PASSWORD, make_settings
from tests.e2e.conftest import assert_no_console_errors, press_test_connection
from tests.support.accounts import make_config
from tests.support.live import LiveServer
from tests.support.op import OPClient, OpenIDProvider, running_op
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, SmtpServer, TlsFiles, run_smtp_server
from tests.support.vendors.openai import OpenAI
from tests.support.xoauth2 import MAILBOX, mailbox_account, opens_mailbox

pytest_plugins = ("tests.support.vendor_fixtures",)

ADMIN = "admin@example.com"


@pytest.fixture
def live_settings(tmp_path: Path, sqlite_url: str, live_port: int, smtp_tls_files: TlsFiles) -> Settings:
    return make_settings(
        tmp_path,
        sqlite_url,
        AMI_AUTH_BASE_URL=f"http://localhost:{live_port}",
        AMI_AUTH_OUTBOUND_RETRIES="0",
        AMI_AUTH_SMTP_CA_FILE=str(smtp_tls_files.ca_file),
        AMI_AUTH_LOG_LEVEL="DEBUG",
    )


class Recorder:
    """HTML bodies the browser received, and every log record of the run."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, str]] = []
        self.records: list[logging.LogRecord] = []

    def on_response(self, response: Response) -> None:
        if response.status >= 300 and response.status < 400:
            return
        if "text/html" in (response.headers.get("content-type") or ""):
            self.bodies.append((response.url, response.text()))

    def assert_clean(self, secrets: list[str]) -> None:
        assert len(self.bodies) >= 5 and self.records, "the scan saw nothing: the recorder is not wired up"
        lines = [record.getMessage() for record in self.records]
        for secret in secrets:
            for url, body in self.bodies:
                assert secret not in body, f"a secret was rendered in {url}"
            for line in lines:
                assert secret not in line, f"a secret was logged: {line[:200]}"


@pytest.fixture
def recorder(page: Page) -> Iterator[Recorder]:
    rec = Recorder()
    page.on("response", rec.on_response)

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            rec.records.append(record)

    handler = _Handler(level=logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield rec
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def _sign_in_admin(app: Flask, page: Page, base: str) -> None:
    with app.app_context():
        db = get_database(app).session()
        users.create_user(db, get_settings(app), email=ADMIN, password=PASSWORD, role="admin", verified=True)
        db.commit()
    page.goto(base + "/signin")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def _config(app: Flask, provider_id: str, values: dict[str, object], name: str) -> None:
    with app.app_context():
        db = get_database(app).session()
        make_config(db, get_cipher(app), get_settings(app), provider_id, values, name=name)


def _client_storage(page: Page) -> list[int]:
    # htmx writes its current path to sessionStorage when it loads and static/js/dialog-storage.js, deferred
    # after it, removes it: what stays is what the page holds once it has loaded (a loaded machine showed
    # the moment between the two scripts).
    page.wait_for_load_state("load")
    counts: list[int] = page.evaluate("() => [window.localStorage.length, window.sessionStorage.length]")
    return counts


def _result(page: Page) -> str:
    panel = page.locator("#test-result .test-result")
    expect(panel).to_be_visible()
    code = panel.get_attribute("data-code")
    assert code is not None
    return code


def test_admin_adds_tests_saves_replaces_and_deletes_an_openai_account(
    live: LiveServer, page: Page, openai_standin: OpenAI, recorder: Recorder
) -> None:
    _config(live.app, "openai", {"rotation_days": 90}, "OpenAI (staff)")
    good = openai_standin.add_key()
    replacement = openai_standin.add_key()
    wrong = "sk-proj-this-key-is-not-known-at-openai"
    _sign_in_admin(live.app, page, live.url)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Accounts").click()
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    page.get_by_role("link", name="Add account").click()
    page.get_by_role("link", name="OpenAI (staff)").click()
    # The add-account form asks for non-secret settings only.
    expect(page.get_by_label("API key")).to_have_count(0)
    page.get_by_label("Label").fill("OpenAI prod")
    page.get_by_label("Environment").fill("production")
    page.get_by_text("Advanced").click()
    page.get_by_label("Base URL").fill(openai_standin.url)
    page.get_by_role("button", name="Continue to the secret").click()

    # The secure dialog.
    expect(page.get_by_role("heading", name=re.compile("Enter the secret for"))).to_be_visible()
    key_input = page.get_by_label("API key")
    expect(key_input).to_have_attribute("type", "password")
    expect(key_input).to_have_attribute("autocomplete", "off")
    expect(page.get_by_text("never shown again")).to_be_visible()
    assert "/dialogs/accounts/" in page.url and "sk-" not in page.url

    key_input.fill(wrong)
    press_test_connection(page)
    assert _result(page) == "invalid_credentials"
    expect(page.locator('#test-result li[data-field="api_key"]')).to_contain_text("did not accept")
    key_input.fill(good)
    press_test_connection(page)
    expect(page.locator("#test-result .test-result")).to_have_attribute("data-code", "ok")
    expect(page.locator("#test-result")).to_contain_text("Connection works")
    assert _client_storage(page) == [0, 0]
    assert "/secret?" in page.url  # htmx swapped the panel: no navigation, no history entry
    page.get_by_role("button", name="Save").click()

    expect(page.get_by_role("heading", name="OpenAI prod")).to_be_visible()
    expect(page.get_by_text("Saved.")).to_be_visible()
    expect(page.locator('[data-secret-field="api_key"]')).to_contain_text("set")
    expect(page.get_by_text("active", exact=True)).to_be_visible()
    assert openai_standin.last_request("/v1/models").bearer() == good

    # Replace the key: verified first, the old one kept for rollback.
    page.get_by_role("link", name="Replace secret").click()
    expect(page.get_by_role("heading", name=re.compile("Replace the secret of"))).to_be_visible()
    page.get_by_label("API key").fill(replacement)
    assert _client_storage(page) == [0, 0]  # the console's own htmx state is gone on the dialog, too
    page.get_by_role("button", name="Replace").click()
    expect(page.get_by_text("Replaced and verified")).to_be_visible()
    expect(page.get_by_role("button", name="Roll back")).to_be_visible()
    assert openai_standin.last_request("/v1/models").bearer() == replacement

    # The list shows it with its timestamps.
    page.get_by_role("link", name="Accounts").first.click()
    row = page.locator("#account-rows tr", has_text="OpenAI prod")
    expect(row).to_contain_text("active")
    expect(row.locator("time")).to_have_count(2)  # rotated, last verified (never used yet)

    # Delete: OpenAI has no revoke API, so the page says what to do by hand.
    row.get_by_role("link", name="OpenAI prod").click()
    page.get_by_role("link", name="Delete…").click()
    expect(page.get_by_text("OpenAI has no API to revoke a key")).to_be_visible()
    page.get_by_role("button", name="Delete", exact=True).click()
    expect(page.get_by_text("Deleted “OpenAI prod” and its stored secrets.")).to_be_visible()
    expect(page.locator("#account-rows")).to_contain_text("No accounts yet.")

    assert_no_console_errors(page)
    recorder.assert_clean([good, replacement, wrong])


def test_admin_adds_tests_saves_replaces_and_deletes_an_smtp_account(
    live: LiveServer, page: Page, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    _config(live.app, "smtp", {"host": smtp_server.host, "port": smtp_server.port, "security": "starttls"}, "Mail")
    wrong = "definitely not the smtp password"
    _sign_in_admin(live.app, page, live.url)
    page.goto(live.url + "/admin/accounts/new")
    page.get_by_role("link", name="Mail").click()
    expect(page.get_by_label("Password")).to_have_count(0)
    page.get_by_label("Label").fill("Notifications")
    page.get_by_label("From address").fill("notify@example.com")
    page.get_by_label("User name").fill(SMTP_USER)
    page.get_by_label("Authentication").select_option("LOGIN")
    page.get_by_label("Daily send cap").fill("100")
    page.get_by_role("button", name="Continue to the secret").click()

    password = page.get_by_label("Password")
    expect(password).to_have_attribute("type", "password")
    password.fill(wrong)
    press_test_connection(page)
    assert _result(page) == "invalid_credentials"
    expect(page.locator('#test-result li[data-field="password"]')).to_be_visible()
    password.fill(SMTP_PASSWORD)
    press_test_connection(page)
    expect(page.locator("#test-result .test-result")).to_have_attribute("data-code", "ok")
    expect(page.locator("#test-result")).to_contain_text(f"{smtp_server.host}:{smtp_server.port}")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Notifications")).to_be_visible()
    expect(page.locator("#sends-today")).to_contain_text("0 of 100")
    assert smtp_server.logins[-1] == f"LOGIN:{SMTP_USER}"

    # A wrong replacement is refused on the password field and changes nothing.
    page.get_by_role("link", name="Replace secret").click()
    page.get_by_label("Password").fill(wrong)
    page.get_by_role("button", name="Replace").click()
    expect(page.locator("#password-error")).to_contain_text("did not accept")
    expect(page.get_by_label("Password")).to_have_value("")  # never echoed back
    page.get_by_label("Password").fill(SMTP_PASSWORD)
    page.get_by_role("button", name="Replace").click()
    expect(page.get_by_text("Replaced and verified")).to_be_visible()

    page.get_by_role("button", name="Send a test mail to me").click()
    expect(page.get_by_text(f"Test mail sent to {ADMIN}.")).to_be_visible()
    assert "SMTP test" in str(smtp_server.wait_for(ADMIN)["Subject"])
    expect(page.locator("#sends-today")).to_contain_text("1 of 100")

    page.get_by_role("link", name="Delete…").click()
    page.get_by_role("button", name="Delete", exact=True).click()
    expect(page.get_by_text("Deleted “Notifications” and its stored secrets.")).to_be_visible()
    assert_no_console_errors(page)
    recorder.assert_clean([SMTP_PASSWORD, wrong])


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    with running_op(clients=[OPClient("ami-auth", "op-secret")], rotateRefreshToken=True) as provider:
        yield provider


def test_admin_sets_up_an_smtp_account_that_logs_in_with_xoauth2(
    live: LiveServer, page: Page, smtp_tls_files: TlsFiles, op: OpenIDProvider, recorder: Recorder
) -> None:
    _sign_in_admin(live.app, page, live.url)
    with live.app.app_context():
        db = get_database(live.app).session()
        admin = db.scalars(select(User).where(User.email == ADMIN)).one()
        oauth_id = mailbox_account(live.app, db, op, admin.id)
    with run_smtp_server(smtp_tls_files, xoauth2=opens_mailbox(op)) as server:
        _config(live.app, "smtp", {"host": server.host, "port": server.port, "security": "starttls"}, "Workspace")
        page.goto(live.url + "/admin/accounts/new")
        page.get_by_role("link", name="Workspace").click()
        oauth_field = page.get_by_label("OAuth account")
        expect(oauth_field).to_be_hidden()  # only for XOAUTH2
        page.get_by_label("Label").fill("Workspace mail")
        page.get_by_label("From address").fill("mailer@example.com")
        page.get_by_label("User name").fill(MAILBOX)
        page.get_by_label("Authentication").select_option("XOAUTH2")
        expect(oauth_field).to_be_visible()
        # The field offers the admin's connected account by id and name.
        options = page.locator("#oauth_account_id-options option")
        expect(options).to_have_count(1)
        expect(options.first).to_have_attribute("value", str(oauth_id))
        expect(options.first).to_have_attribute("label", re.compile(rf"#{oauth_id} {re.escape(MAILBOX)} · Corp ID"))
        oauth_field.fill(str(oauth_id))
        page.get_by_role("button", name="Continue to the secret").click()

        # No password to type: the test logs in with the account's token (refreshed at the OP first).
        expect(page.get_by_label("Password")).to_have_count(0)
        press_test_connection(page)
        expect(page.locator("#test-result .test-result")).to_have_attribute("data-code", "ok")
        expect(page.locator("#test-result")).to_contain_text(f"XOAUTH2 as {MAILBOX}")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("heading", name="Workspace mail")).to_be_visible()
        page.get_by_role("button", name="Send a test mail to me").click()
        expect(page.get_by_text(f"Test mail sent to {ADMIN}.")).to_be_visible()
        assert "SMTP test" in str(server.wait_for(ADMIN)["Subject"])
        assert server.logins and set(server.logins) == {f"XOAUTH2:{MAILBOX}"}
    with live.app.app_context():
        tokens = load_tokens(get_database(live.app).session(), get_cipher(live.app), oauth_id)
    assert tokens is not None and tokens.access_token != "stale" and tokens.refresh_token is not None
    assert_no_console_errors(page)
    recorder.assert_clean([tokens.access_token, tokens.refresh_token])
