"""Repeated failed sign-ins lock the account; the sign-in page says when to try again (real Chromium)."""

from __future__ import annotations

import re

from flask import Flask
from playwright.sync_api import Page, expect

from app.auth import users
from app.extensions import get_database
from tests.conftest import PASSWORD
from tests.support.live import LiveServer


def _make_user(app: Flask, email: str) -> None:
    with app.app_context():
        db = get_database(app).session()
        users.create_user(db, app.extensions["ami_settings"], email=email, password=PASSWORD, verified=True)
        db.commit()


def _submit(page: Page, email: str, password: str) -> None:
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_lock_after_repeated_failures_shows_the_retry_time(live: LiveServer, page: Page) -> None:
    _make_user(live.app, "lou@example.com")
    page.goto(live.url + "/signin")
    for _ in range(4):
        _submit(page, "lou@example.com", "wrong password, surely")
        expect(page.locator("#password-error")).to_contain_text("Email or password is not right.")
        expect(page.locator("#throttle-notice")).to_have_count(0)

    with page.expect_response(re.compile(r"/signin")) as fifth:
        _submit(page, "lou@example.com", "wrong password, surely")
    assert fifth.value.status == 429
    assert fifth.value.headers["retry-after"] in {str(s) for s in range(55, 61)}
    notice = page.get_by_role("alert")
    expect(notice).to_contain_text("Too many failed sign-ins for this account.")
    expect(notice).to_contain_text("Try again in 1 minute.")
    expect(page.get_by_label("Email")).to_have_value("lou@example.com")

    # The right password does not get in while the lock holds; the page still says when to come back.
    _submit(page, "lou@example.com", PASSWORD)
    expect(page.get_by_role("alert")).to_contain_text("Try again in 1 minute.")
    expect(page).to_have_url(re.compile(r"/signin"))
    page.goto(live.url + "/account/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    # Chromium logs every 4xx document as "Failed to load resource" (401, 429, and the absent favicon's
    # 404); those are the statuses this test expects. Anything else (CSP, script errors) fails it.
    expected = re.compile(r"^Failed to load resource: the server responded with a status of (401|404|429) ")
    errors: list[str] = getattr(page, "console_errors", [])
    assert [e for e in errors if not expected.match(e)] == []
