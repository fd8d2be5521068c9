"""In Chromium, with mail going through a real aiosmtpd server (STARTTLS + AUTH):
forgot password → mail → link → new password → sign in; admin invites → mail → set password → sign in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect

from app.auth import users
from app.extensions import get_database
from app.settings import Settings
from tests.conftest import PASSWORD, make_settings
from tests.e2e.conftest import assert_no_console_errors
from tests.support.live import LiveServer
from tests.support.mailbox import link_path
from tests.support.smtp import SmtpServer, body_text

NEW_PASSWORD = "my fresh passphrase 2026"


@pytest.fixture
def live_settings(tmp_path: Path, sqlite_url: str, live_port: int, smtp_server: SmtpServer) -> Settings:
    """The live app sends its mail through the test SMTP server, trusting only the test CA."""
    return make_settings(
        tmp_path,
        sqlite_url,
        AMI_AUTH_BASE_URL=f"http://localhost:{live_port}",
        AMI_AUTH_SMTP_URL=smtp_server.url(),
        AMI_AUTH_SMTP_CA_FILE=str(smtp_server.ca_file),
        AMI_AUTH_MAIL_FROM="AMI Auth <no-reply@example.com>",
    )


def _create_user(app: Flask, email: str, role: str = "member") -> None:
    with app.app_context():
        db = get_database(app).session()
        users.create_user(db, app.extensions["ami_settings"], email=email, password=PASSWORD, role=role, verified=True)
        db.commit()


def _sign_in(page: Page, live: LiveServer, email: str, password: str) -> None:
    page.goto(live.url + "/signin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def test_forgot_password_through_real_mail(live: LiveServer, page: Page, smtp_server: SmtpServer) -> None:
    _create_user(live.app, "reader@example.com")
    page.goto(live.url + "/signin")
    page.get_by_role("link", name="Forgot password?").click()
    expect(page.get_by_role("heading", name="Forgot your password?")).to_be_visible()
    page.get_by_label("Email").fill("reader@example.com")
    page.get_by_role("button", name="Send reset link").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()

    mail = smtp_server.wait_for("reader@example.com")
    assert mail["Subject"] == "Reset your password"
    assert mail["From"] == "AMI Auth <no-reply@example.com>"
    text = body_text(mail)
    link = re.search(rf"{re.escape(live.url)}/reset/\S+", text)
    assert link, text
    page.goto(link.group(0))
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    page.get_by_label("New password", exact=True).fill("too short")
    page.get_by_label("Repeat new password").fill("too short")
    page.get_by_role("button", name="Set new password").click()
    expect(page.locator("#password-error")).to_contain_text("at least 12 characters")
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("Repeat new password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set new password").click()

    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Your password was changed")
    _sign_in(page, live, "reader@example.com", PASSWORD)
    expect(page.locator("#password-error")).to_contain_text("Email or password is not right.")
    _sign_in(page, live, "reader@example.com", NEW_PASSWORD)
    expect(page.get_by_role("heading", name="My account")).to_be_visible()

    # The link was single use.
    page.goto(link.group(0))
    expect(page.get_by_text("This reset link is no longer valid.")).to_be_visible()
    assert_no_console_errors(page)


def test_admin_invites_user_who_sets_password_and_signs_in(
    live: LiveServer, page: Page, browser: Browser, smtp_server: SmtpServer
) -> None:
    _create_user(live.app, "chief@example.com", role="admin")
    _sign_in(page, live, "chief@example.com", PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    page.get_by_role("link", name="New user").click()
    page.get_by_label("Email").fill("guest@example.com")
    page.get_by_label("Name").fill("Gwen Guest")
    page.get_by_label("Metadata (JSON object, optional)").fill('{"team": "docs"')
    page.get_by_role("button", name="Create user").click()
    expect(page.locator("#metadata-error")).to_contain_text("Not valid JSON")
    page.get_by_label("Metadata (JSON object, optional)").fill('{"team": "docs"}')
    expect(page.get_by_label("Send an invitation by mail")).to_be_checked()
    page.get_by_role("button", name="Create user").click()
    expect(page.get_by_role("heading", name="Gwen Guest")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Invitation sent to guest@example.com")
    expect(page.locator(".page-head .badge")).to_have_text("invited")
    assert_no_console_errors(page)

    mail = smtp_server.wait_for("guest@example.com")
    assert "chief@example.com invited you" in body_text(mail)
    path = link_path(body_text(mail), "/invite/")

    guest_context = browser.new_context()
    try:
        guest = guest_context.new_page()
        guest.goto(live.url + path)
        expect(guest.get_by_role("heading", name="Welcome, Gwen Guest")).to_be_visible()
        guest.get_by_label("Password", exact=True).fill(NEW_PASSWORD)
        guest.get_by_label("Repeat password").fill(NEW_PASSWORD)
        guest.get_by_role("button", name="Activate account").click()
        expect(guest.get_by_role("heading", name="Sign in")).to_be_visible()
        _sign_in(guest, live, "guest@example.com", NEW_PASSWORD)
        expect(guest.get_by_role("heading", name="My account")).to_be_visible()
        expect(guest.locator('[data-status="verified"]')).to_be_visible()
    finally:
        guest_context.close()

    page.reload()
    expect(page.locator(".page-head .badge")).to_have_text("active")
