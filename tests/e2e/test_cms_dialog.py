"""The CMS's secure dialog in real Chromium: a CMS stand-in (tests/support/cms_standin.py, a second origin)
gets a dialog URL with its service token, shows it in an iframe, the admin adds an Anthropic key there
(against the Anthropic stand-in), the dialog returns the browser to the CMS page, which lists the account
snapshot through the API.

Which origins, and why:

- AMI Auth is opened as ``http://localhost:<app>``; the CMS as ``http://localhost:<cms>``. Different
  origins (the port differs) but the **same site** (a site is scheme + registrable domain; ports do not
  count), so Chromium sends AMI Auth's ``SameSite=Lax`` session cookie with the iframe's requests and the
  admin works inside the frame. This is the deployment the docs ask for: CMS and AMI Auth on one site
  (``cms.example.com`` + ``auth.example.com``).
- The same CMS opened as ``http://127.0.0.1:<cms>`` is **another site** than ``localhost``: the frame gets
  no cookie, shows the sign-in guidance, and its top-level link takes the admin to the dialog as a full page
  (the fallback for a CMS on another site), which then returns to the CMS the same way.
- A page on ``http://localhost:<other>``, not in AMI_AUTH_CMS_ORIGINS, framing a genuine dialog URL is
  refused by the browser (CSP ``frame-ancestors``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import ConsoleMessage, FrameLocator, Page, expect

from app.auth import users
from app.extensions import get_database, get_settings
from app.settings import Settings
from tests.conftest import PASSWORD, make_settings
from tests.e2e.conftest import assert_no_console_errors, press_test_connection
from tests.support.cms_standin import CmsStandin, cms_credentials
from tests.support.live import LiveServer, free_port
from tests.support.vendors.anthropic import Anthropic

pytest_plugins = ("tests.support.vendor_fixtures",)

ADMIN = "admin@example.com"


@pytest.fixture
def cms_port() -> int:
    return free_port()


@pytest.fixture
def live_settings(tmp_path: Path, sqlite_url: str, live_port: int, cms_port: int) -> Settings:
    return make_settings(
        tmp_path,
        sqlite_url,
        AMI_AUTH_BASE_URL=f"http://localhost:{live_port}",
        AMI_AUTH_CMS_ORIGINS=f"http://localhost:{cms_port},http://127.0.0.1:{cms_port}",
        AMI_AUTH_OUTBOUND_RETRIES="0",
    )


def _prepare(app: Flask) -> tuple[int, str]:
    """An admin, an enabled Anthropic provider config, and the CMS's service token."""
    with app.app_context():
        db = get_database(app).session()
        users.create_user(db, get_settings(app), email=ADMIN, password=PASSWORD, role="admin", verified=True)
        db.commit()
    return cms_credentials(app, "anthropic", "Anthropic (CMS)")


@pytest.fixture
def cms(live: LiveServer, cms_port: int) -> Iterator[CmsStandin]:
    config_id, raw = _prepare(live.app)
    standin = CmsStandin(cms_port, f"http://127.0.0.1:{live.port}", raw, config_id).start()
    yield standin
    standin.stop()


def _sign_in_admin(page: Page, base: str) -> None:
    page.goto(f"{base}/signin")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(re.compile(r"^(?!.*signin).*$"))


def _fill_anthropic(scope: Page | FrameLocator, key: str, base_url: str) -> None:
    """Type the account into the dialog (``scope``: the page, or the iframe's FrameLocator)."""
    scope.locator("#label").fill("Claude (CMS)")
    scope.locator("#api_key").fill(key)
    scope.locator("summary", has_text="Advanced").click()
    scope.locator("#base_url").fill(base_url)


def test_the_cms_frames_the_dialog_the_admin_adds_an_anthropic_key_and_the_cms_lists_the_account(
    page: Page, live: LiveServer, cms: CmsStandin, cms_port: int, anthropic_standin: Anthropic
) -> None:
    _sign_in_admin(page, live.url)
    page.goto(f"http://localhost:{cms_port}/")
    frame = page.frame_locator("#dialog")
    expect(frame.get_by_role("heading", name="Add an account")).to_be_visible()
    assert cms.dialog_answers == [201]
    key = anthropic_standin.add_key()
    _fill_anthropic(frame, key, anthropic_standin.url)
    # Test connection stays in the frame.
    press_test_connection(frame)
    expect(frame.locator('.test-result[data-code="ok"]')).to_be_visible()
    assert page.url == f"http://localhost:{cms_port}/"
    # Save leaves the frame: the CMS page itself navigates to return_to with the outcome.
    frame.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(re.compile(rf"^http://localhost:{cms_port}/\?from=dialog&status=saved&account=\d+$"))
    account_id = page.url.rsplit("=", 1)[1]
    expect(page.locator("#outcome")).to_have_text(f"Dialog saved (account {account_id})")
    item = page.locator(f'#accounts li[data-account-id="{account_id}"]')
    expect(item).to_have_text("Claude (CMS) · anthropic · active")
    assert key not in page.content()
    assert len(anthropic_standin.requests_to("/v1/models")) == 2  # Test connection, then Save
    assert_no_console_errors(page)


def test_a_cms_on_another_site_gets_sign_in_guidance_and_the_full_page_dialog_returns_to_it(
    page: Page, live: LiveServer, cms: CmsStandin, cms_port: int, anthropic_standin: Anthropic
) -> None:
    _sign_in_admin(page, live.url)
    # 127.0.0.1 is another site than localhost: the framed dialog gets no SameSite=Lax cookie.
    page.goto(f"http://127.0.0.1:{cms_port}/")
    frame = page.frame_locator("#dialog")
    expect(frame.get_by_role("heading", name="Sign in to AMI Auth to continue")).to_be_visible()
    expect(frame.locator("#dialog-form")).to_have_count(0)
    frame.get_by_role("link", name="Sign in and open the dialog").click()
    # A top-level navigation carries the cookie: already signed in, the admin lands on the dialog itself.
    page.wait_for_url(re.compile(rf"^{re.escape(live.url)}/dialogs/cms\?dialog="))
    expect(page.get_by_role("heading", name="Add an account")).to_be_visible()
    _fill_anthropic(page, anthropic_standin.add_key(), anthropic_standin.url)
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(re.compile(rf"^http://127\.0\.0\.1:{cms_port}/\?from=dialog&status=saved&account=\d+$"))
    expect(page.locator("#accounts li")).to_have_text(["Claude (CMS) · anthropic · active"])
    assert_no_console_errors(page)


def test_framing_from_an_origin_outside_the_allow_list_is_refused_by_the_browser(
    page: Page, live: LiveServer, cms: CmsStandin, cms_port: int
) -> None:
    _sign_in_admin(page, live.url)
    # A page on another origin frames a genuine dialog URL (issued for the real CMS).
    foreign = CmsStandin(
        free_port(), cms.api_base, cms.token, cms.provider_config_id, return_origin=f"http://localhost:{cms_port}"
    ).start()
    refusals: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "frame-ancestors" in message.text:
            refusals.append(message.text)

    page.on("console", on_console)
    try:
        with page.expect_console_message(lambda m: "frame-ancestors" in m.text):
            page.goto(f"http://localhost:{foreign.port}/")
        assert foreign.dialog_answers == [201]
    finally:
        foreign.stop()
    assert re.search(r"Framing 'http://localhost:\d+/' violates", refusals[0]) and "blocked" in refusals[0]
    assert f"frame-ancestors http://localhost:{cms_port} http://127.0.0.1:{cms_port}" in refusals[0]
    # Nothing of the dialog rendered in the frame.
    frame = next(f for f in page.frames if f != page.main_frame)
    assert not frame.url.startswith(live.url)
    expect(page.frame_locator("#dialog").locator("#dialog-form")).to_have_count(0)
    # The refusal is the console error this test provokes; nothing else went wrong.
    errors: list[str] = getattr(page, "console_errors", [])
    assert [e for e in errors if "frame-ancestors" not in e] == []
    errors.clear()
