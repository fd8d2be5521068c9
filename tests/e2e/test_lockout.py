"""Repeated failed sign-ins lock the account; the sign-in page says when to try again (real Chromium)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from playwright.sync_api import Browser, Page, expect

from tests.conftest import PASSWORD
from tests.support.live import LiveServer
from tests.support.throttle_app import add_user


def _submit(page: Page, email: str, password: str) -> None:
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def test_lock_after_repeated_failures_shows_the_retry_time(live: LiveServer, page: Page) -> None:
    lou = add_user(live.app, "lou@example.com")
    add_user(live.app, "root@example.com", role="admin")
    page.goto(live.url + "/signin")
    for _ in range(4):
        _submit(page, "lou@example.com", "wrong password, surely")
        expect(page.locator("#password-error")).to_contain_text("Email or password is not right.")
        expect(page.locator("#throttle-notice")).to_have_count(0)

    # The form's POST, not the passkey-autofill request the page makes as it loads.
    with page.expect_response(lambda r: r.request.method == "POST" and urlsplit(r.url).path == "/signin") as fifth:
        _submit(page, "lou@example.com", "wrong password, surely")
    assert fifth.value.status == 429
    assert fifth.value.headers["retry-after"] in {str(s) for s in range(55, 61)}
    notice = page.get_by_role("alert")
    expect(notice).to_contain_text("Too many failed sign-ins for this account.")
    expect(notice).to_contain_text("Try again in 1 minute.")
    expect(page.get_by_label("Email")).to_have_value("lou@example.com")

    # The right password does not get in while the lock holds; the page still says when to come back.
    _submit(page, "lou@example.com", PASSWORD)
    # The first lock is 60 s; on a slow machine a second or more may have passed when the page renders.
    expect(page.get_by_role("alert")).to_contain_text(re.compile(r"Try again in (1 minute|[1-5]?[0-9] seconds)\."))
    expect(page).to_have_url(re.compile(r"/signin"))
    page.goto(live.url + "/account/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    # An admin sees the lock on the user's page and lifts it; then the right password works at once.
    _submit(page, "root@example.com", PASSWORD)
    page.goto(f"{live.url}/admin/users/{lou}")
    lock = page.locator("#throttle-admin")
    expect(lock).to_contain_text(re.compile(r"after 5 failed sign-ins; opens in (1 minute|[1-5]?[0-9] seconds)"))
    lock.get_by_role("button", name="Unlock").click()
    expect(page.get_by_role("status")).to_contain_text("lou@example.com is unlocked.")
    expect(page.locator("#throttle-admin")).to_contain_text("Not locked")
    page.get_by_role("button", name="Sign out").click()
    _submit(page, "lou@example.com", PASSWORD)
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    # Chromium logs every 4xx document as "Failed to load resource" (401, 429, and the absent favicon's
    # 404); those are the statuses this test expects. Anything else (CSP, script errors) fails it.
    expected = re.compile(r"^Failed to load resource: the server responded with a status of (401|404|429) ")
    errors: list[str] = getattr(page, "console_errors", [])
    assert [e for e in errors if not expected.match(e)] == []


def test_a_strangers_lock_does_not_lock_the_owners_browser(live: LiveServer, page: Page, browser: Browser) -> None:
    add_user(live.app, "ola@example.com")
    # The owner signs in once in this browser: it is known to the account from now on (device cookie).
    page.goto(live.url + "/signin")
    _submit(page, "ola@example.com", PASSWORD)
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()

    # A stranger's browser guesses until the account is locked for it.
    stranger_context = browser.new_context()
    try:
        stranger = stranger_context.new_page()
        stranger.goto(live.url + "/signin")
        for _ in range(4):
            _submit(stranger, "ola@example.com", "a stranger's guess")
            expect(stranger.locator("#password-error")).to_contain_text("Email or password is not right.")
        _submit(stranger, "ola@example.com", "a stranger's guess")
        expect(stranger.get_by_role("alert")).to_contain_text("Too many failed sign-ins for this account.")
        _submit(stranger, "ola@example.com", PASSWORD)  # even the right password is refused in that browser
        expect(stranger.get_by_role("alert")).to_contain_text("Too many failed sign-ins for this account.")
        expect(stranger.get_by_role("button", name="Email me an unlock link")).to_be_visible()
        expect(stranger).to_have_url(re.compile(r"/signin"))

        # Meanwhile the owner's browser signs in as usual.
        page.goto(live.url + "/signin")
        _submit(page, "ola@example.com", PASSWORD)
        expect(page.get_by_role("heading", name="My account")).to_be_visible()

        # And the stranger is still locked out.
        stranger.goto(live.url + "/signin")
        _submit(stranger, "ola@example.com", PASSWORD)
        expect(stranger.get_by_role("alert")).to_contain_text("Too many failed sign-ins for this account.")
    finally:
        stranger_context.close()
    assert getattr(page, "console_errors", []) == []  # script errors and CSP violations (the fixture's filter)
