"""First-admin setup link → sign in → console → audit page, in real Chromium."""

from __future__ import annotations

import re

from flask import Flask
from playwright.sync_api import Page, expect

from app.auth import mail_tokens
from app.extensions import get_database
from tests.conftest import PASSWORD
from tests.e2e.conftest import assert_no_console_errors
from tests.support.live import LiveServer


def _setup_link(app: Flask) -> str:
    with app.app_context():
        db = get_database(app).session()
        raw = mail_tokens.issue_token(db, "setup")
        db.commit()
    return f"/setup/{raw}"


def test_first_admin_setup_then_console_and_audit(live: LiveServer, page: Page) -> None:
    link = _setup_link(live.app)
    page.goto(live.url + link)
    expect(page.get_by_role("heading", name="Create the first admin")).to_be_visible()
    page.get_by_label("Email").fill("root@example.com")
    page.get_by_label("Your name").fill("Root Admin")
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_label("Repeat password").fill("short")
    page.get_by_role("button", name="Create admin and sign in").click()
    # The policy error sits on the password field; the email survives.
    expect(page.locator("#password-error")).to_contain_text("at least 12 characters")
    expect(page.get_by_label("Email")).to_have_value("root@example.com")

    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Repeat password").fill(PASSWORD)
    page.get_by_role("button", name="Create admin and sign in").click()
    expect(page).to_have_url(re.compile(r"/admin/$"))
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    # Sign out, sign back in through the form.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Email").fill("root@example.com")
    page.get_by_label("Password").fill("wrong password, surely")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#password-error")).to_contain_text("Email or password is not right.")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    rows = page.locator("#audit-rows tr")
    expect(rows.filter(has_text="setup.first_admin")).to_have_count(1)
    expect(rows.filter(has_text="signin.failure")).to_have_count(1)
    page.get_by_label("Outcome").select_option("failure")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#audit-rows tr")).to_have_count(1)
    expect(page.locator("#audit-rows")).to_contain_text("signin.failure")
    page.goto(live.url + link)
    expect(page.get_by_text("This setup link is no longer valid.")).to_be_visible()
    assert_no_console_errors(page)
