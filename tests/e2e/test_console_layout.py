"""The console as an admin sees it, at 1280 px and on a 375 px phone, in real Chromium.

Every page of the main navigation opens, in one line of navigation at 1280 px; on a phone the navigation
folds behind "Menu" (static/js/nav.js) and no page scrolls sideways. The page check of tests/e2e/a11y.py
runs axe-core on each page at both widths. The pictures in docs/screenshots are taken here
(AMI_AUTH_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

from flask import Flask
from playwright.sync_api import Page, expect

from app.auth import users
from app.extensions import get_cipher, get_database, get_settings
from tests.conftest import PASSWORD
from tests.e2e.conftest import DocsScreenshots, assert_no_console_errors
from tests.support.accounts import make_account, make_config
from tests.support.live import LiveServer

ADMIN = "admin@example.com"
# The main navigation: link, the page's heading, the picture for docs/ (None: no picture).
PAGES = [
    ("Overview", "Overview", "console-overview"),
    ("Users", "Users", "console-users"),
    ("Providers", "Providers", "console-providers"),
    ("Accounts", "Accounts", "console-accounts"),
    ("Audit log", "Audit log", "console-audit"),
    ("Security", "Security", None),
    ("Outbox", "Outbox", None),
    ("Service tokens", "Service tokens", None),
    ("Apps", "Apps", None),
    ("Webhooks", "Webhooks", None),
    ("Compliance", "Compliance", None),
    ("My account", "My account", "account"),
]


def seed(app: Flask) -> None:
    """An admin, a member, an OpenAI provider config with one account: pages with rows in them."""
    with app.app_context():
        db = get_database(app).session()
        settings = get_settings(app)
        users.create_user(db, settings, email=ADMIN, password=PASSWORD, role="admin", verified=True)
        users.create_user(db, settings, email="member@example.com", password=PASSWORD, role="member", verified=True)
        db.commit()
        cfg = make_config(db, get_cipher(app), settings, "openai", {"rotation_days": 90}, name="OpenAI (staff)")
        make_account(db, cfg, {}, label="OpenAI prod")
        db.commit()


def sign_in(page: Page, base: str) -> None:
    page.goto(base + "/signin")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def page_width(page: Page) -> int:
    width: int = page.evaluate("() => document.documentElement.scrollWidth")
    return width


def test_every_console_page_at_1280_px_with_the_navigation_on_one_line(
    live: LiveServer, page: Page, docs_screenshot: DocsScreenshots
) -> None:
    seed(live.app)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(live.url + "/signin")
    docs_screenshot(page, "signin", full_page=False)
    sign_in(page, live.url)

    nav = page.get_by_role("navigation", name="Main")
    links = nav.get_by_role("link")
    expect(links).to_have_count(len(PAGES))
    expect(page.get_by_role("button", name="Menu")).to_be_hidden()  # nothing is folded at this width
    for link, heading, shot in PAGES:
        nav.get_by_role("link", name=link, exact=True).click()
        expect(page.get_by_role("heading", name=heading, exact=True, level=1)).to_be_visible()
        expect(nav.get_by_role("link", name=link, exact=True)).to_have_attribute("aria-current", "page")
        page.wait_for_load_state("load")  # laid out with the stylesheet: a measure taken before it is of bare HTML
        # One line: every link's top edge is the first link's.
        tops = {round(box["y"]) for box in (links.nth(i).bounding_box() for i in range(len(PAGES))) if box}
        assert len(tops) == 1, f"the navigation wraps on {heading}: link rows at {sorted(tops)}"
        assert page_width(page) <= 1280
        if shot:
            docs_screenshot(page, shot)
    assert_no_console_errors(page)


def test_on_a_phone_the_navigation_folds_behind_menu_and_no_page_scrolls_sideways(
    live: LiveServer, page: Page, docs_screenshot: DocsScreenshots
) -> None:
    seed(live.app)
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(page, live.url)
    docs_screenshot(page, "phone-overview", full_page=False)

    menu = page.get_by_role("button", name="Menu")
    nav = page.get_by_role("navigation", name="Main")
    for link, heading, _shot in PAGES:
        expect(menu).to_have_attribute("aria-expanded", "false")
        expect(nav).to_be_hidden()  # folded: the page starts right under the top bar
        menu.click()
        expect(menu).to_have_attribute("aria-expanded", "true")
        expect(nav).to_be_visible()
        if link == "Audit log":
            docs_screenshot(page, "phone-menu", full_page=False)
        nav.get_by_role("link", name=link, exact=True).click()
        expect(page.get_by_role("heading", name=heading, exact=True, level=1)).to_be_visible()
        # Measured once static/js/nav.js (deferred, so run after the stylesheet has loaded) has folded the new
        # page's navigation: a measure taken before is of bare HTML (CI once saw Compliance 513 px wide).
        expect(nav).to_be_hidden()
        assert page_width(page) <= 375, f"{heading} is {page_width(page)} px wide on a 375 px phone"

    # Escape folds the open menu again and gives the focus back to its button.
    menu.click()
    expect(nav).to_be_visible()
    page.keyboard.press("Escape")
    expect(nav).to_be_hidden()
    expect(menu).to_be_focused()

    page.goto(live.url + "/admin/audit")
    expect(page.get_by_role("heading", name="Audit log", level=1)).to_be_visible()
    docs_screenshot(page, "phone-audit")
    assert_no_console_errors(page)
