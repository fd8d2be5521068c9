"""Keyboard only, in real Chromium: signing in, and adding a connected account on a phone-sized window.

Every step is a key press (Tab, Enter, typed text); the locators only check where the focus is. The focus
ring is checked where it is drawn: the accent colour, at least 3:1 against the page (WCAG 2.4.11/1.4.11).
"""

from __future__ import annotations

import re

from flask import Flask
from playwright.sync_api import Locator, Page, expect

from app.auth import users
from app.extensions import get_cipher, get_database, get_settings
from tests.conftest import PASSWORD
from tests.e2e.conftest import DocsScreenshots, assert_no_console_errors
from tests.support.accounts import make_config
from tests.support.live import LiveServer
from tests.support.vendors.openai import OpenAI

pytest_plugins = ("tests.support.vendor_fixtures",)

ADMIN = "admin@example.com"


def tab_to(page: Page, target: Locator, *, limit: int = 40) -> int:
    """Press Tab until ``target`` has the focus; return how many presses it took."""
    for presses in range(limit):
        if target.evaluate("el => el === document.activeElement"):
            return presses
        page.keyboard.press("Tab")
    raise AssertionError(f"{target} never got the focus in {limit} presses of Tab")


def _channels(css: str) -> tuple[float, float, float]:
    match = re.match(r"rgba?\((\d+), (\d+), (\d+)", css)
    assert match, css
    r, g, b = (int(c) / 255 for c in match.groups())
    return r, g, b


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two computed CSS colours."""

    def luminance(css: str) -> float:
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in _channels(css)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def assert_focus_ring(page: Page, target: Locator) -> None:
    # The console's ring (solid, in the accent colour), not the browser's default one: waited for, as a style
    # recalculation after the focus moves may land a moment later on a loaded machine.
    expect(target).to_have_css("outline-style", "solid")
    ring = target.evaluate(
        """el => {
          const s = getComputedStyle(el);
          let bg = 'rgba(0, 0, 0, 0)';
          for (let n = el.parentElement; n; n = n.parentElement) {
            const c = getComputedStyle(n).backgroundColor;
            if (!c.startsWith('rgba(0, 0, 0, 0)')) { bg = c; break; }
          }
          return {style: s.outlineStyle, width: parseFloat(s.outlineWidth), color: s.outlineColor, bg};
        }"""
    )
    assert ring["style"] != "none" and ring["width"] >= 2, ring
    assert contrast(ring["color"], ring["bg"]) >= 3, f"focus ring {ring['color']} on {ring['bg']}"


def _admin(app: Flask) -> None:
    with app.app_context():
        db = get_database(app).session()
        users.create_user(db, get_settings(app), email=ADMIN, password=PASSWORD, role="admin", verified=True)
        db.commit()


def keyboard_sign_in(page: Page, base: str) -> None:
    page.goto(base + "/signin")
    email = page.get_by_label("Email")
    expect(email).to_be_focused()  # autofocus: the first key typed goes where it belongs
    page.keyboard.type(ADMIN)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type("not the password, surely")
    page.keyboard.press("Enter")
    expect(page.locator("#password-error")).to_contain_text("Email or password is not right.")
    tab_to(page, page.get_by_label("Password"))
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def test_sign_in_and_move_around_with_the_keyboard_only(live: LiveServer, page: Page) -> None:
    _admin(live.app)
    page.set_viewport_size({"width": 1280, "height": 800})
    keyboard_sign_in(page, live.url)

    # The first Tab stop skips the navigation; its ring shows where the focus is.
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_visible()
    assert_focus_ring(page, skip)

    # Tab reaches the navigation; Enter follows a link.
    audit = page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log")
    tab_to(page, audit)
    assert_focus_ring(page, audit)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Audit log", level=1)).to_be_visible()
    outcome = page.get_by_label("Outcome")
    tab_to(page, outcome)
    assert_focus_ring(page, outcome)

    sign_out = page.get_by_role("button", name="Sign out")
    tab_to(page, sign_out)
    assert_focus_ring(page, sign_out)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert_no_console_errors(page)


def test_add_an_openai_account_with_the_keyboard_only_on_a_phone(
    live: LiveServer, page: Page, openai_standin: OpenAI, docs_screenshot: DocsScreenshots
) -> None:
    _admin(live.app)
    with live.app.app_context():
        db = get_database(live.app).session()
        make_config(db, get_cipher(live.app), get_settings(live.app), "openai", {"rotation_days": 90}, "OpenAI (staff)")
    key = openai_standin.add_key()
    page.set_viewport_size({"width": 375, "height": 740})
    keyboard_sign_in(page, live.url)

    # The folded navigation opens from its button.
    menu = page.get_by_role("button", name="Menu")
    tab_to(page, menu)
    assert_focus_ring(page, menu)
    page.keyboard.press("Enter")
    expect(menu).to_have_attribute("aria-expanded", "true")
    tab_to(page, page.get_by_role("navigation", name="Main").get_by_role("link", name="Accounts"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Accounts", level=1)).to_be_visible()

    tab_to(page, page.get_by_role("link", name="Add account"))
    page.keyboard.press("Enter")
    tab_to(page, page.get_by_role("link", name="OpenAI (staff)"))
    page.keyboard.press("Enter")

    tab_to(page, page.get_by_label("Label"))
    page.keyboard.type("OpenAI prod")
    tab_to(page, page.get_by_label("Environment"))
    page.keyboard.type("production")
    advanced = page.locator("summary", has_text="Advanced")
    tab_to(page, advanced)
    assert_focus_ring(page, advanced)
    page.keyboard.press("Enter")  # a <summary> opens with Enter, like a button
    tab_to(page, page.get_by_label("Base URL"))
    page.keyboard.type(openai_standin.url)
    tab_to(page, page.get_by_role("button", name="Continue to the secret"))
    page.keyboard.press("Enter")

    # The secure dialog: type the key, save.
    expect(page.get_by_role("heading", name=re.compile("Enter the secret for"))).to_be_visible()
    tab_to(page, page.get_by_label("API key"))
    page.keyboard.type(key)
    docs_screenshot(page, "phone-account-secret-dialog")
    tab_to(page, page.get_by_role("button", name="Save"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="OpenAI prod")).to_be_visible()
    expect(page.get_by_text("Saved.")).to_be_visible()
    assert openai_standin.last_request("/v1/models").bearer() == key
    assert_no_console_errors(page)
