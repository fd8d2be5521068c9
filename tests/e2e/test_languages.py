"""Languages in real Chromium (issue 14): a browser set to German gets the German sign-in page; a user who picks
"Français" on the account page reads it in French from then on, in this browser and any other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser, BrowserContext, Page, expect

from app.auth import users
from app.extensions import get_database, get_settings
from tests.conftest import PASSWORD
from tests.e2e.conftest import assert_no_console_errors, keep_screenshot, watch_console
from tests.support.live import LiveServer

EMAIL = "amelie@example.com"


@pytest.fixture
def german(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(locale="de-DE")
    yield ctx
    ctx.close()


def _user(app: Flask) -> None:
    with app.app_context():
        session = get_database(app).session()
        users.create_user(session, get_settings(app), email=EMAIL, password=PASSWORD, verified=True)
        session.commit()


def test_a_browser_set_to_german_sees_the_german_sign_in_page(
    live: LiveServer, german: BrowserContext, tmp_path: Path
) -> None:
    page = german.new_page()
    watch_console(page)
    page.goto(live.url + "/signin")
    expect(page.locator("html")).to_have_attribute("lang", "de")
    expect(page.get_by_role("heading", level=1)).to_have_text("Anmelden")
    expect(page.get_by_label("E-Mail")).to_be_visible()
    expect(page.get_by_role("button", name="Mit einem Passkey anmelden")).to_be_visible()
    expect(page.get_by_role("link", name="Passwort vergessen?")).to_be_visible()
    page.get_by_label("E-Mail").fill(EMAIL)
    page.get_by_label("Passwort").fill("not the password")
    page.get_by_role("button", name="Anmelden", exact=True).click()
    expect(page.get_by_text("E-Mail-Adresse oder Passwort ist nicht richtig.")).to_be_visible()
    keep_screenshot(page, "signin-de", tmp_path)
    assert_no_console_errors(page)
    page.close()


def test_a_user_who_picks_french_sees_the_account_page_in_french(
    live: LiveServer, live_app: Flask, page: Page, browser: Browser
) -> None:
    _user(live_app)
    page.goto(live.url + "/signin")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.goto(live.url + "/account/")
    expect(page.get_by_role("heading", level=1)).to_have_text("My account")
    language = page.get_by_role("combobox", name="Language")
    expect(language).to_have_value("")
    language.select_option(label="Français")
    page.get_by_role("button", name="Save language").click()

    expect(page.locator("html")).to_have_attribute("lang", "fr")
    expect(page.get_by_role("heading", level=1)).to_have_text("Mon compte")
    expect(page.get_by_role("status").filter(has_text="Votre langue a été enregistrée.")).to_be_visible()
    expect(page.get_by_role("combobox", name="Langue")).to_have_value("fr")
    expect(page.get_by_role("button", name="Se déconnecter")).to_be_visible()
    assert_no_console_errors(page)

    # The choice belongs to the user, not the browser: a German browser signing in as them reads French.
    other = browser.new_context(locale="de-DE")
    elsewhere = other.new_page()
    elsewhere.goto(live.url + "/signin")
    expect(elsewhere.get_by_role("heading", level=1)).to_have_text("Anmelden")
    elsewhere.get_by_label("E-Mail").fill(EMAIL)
    elsewhere.get_by_label("Passwort").fill(PASSWORD)
    elsewhere.get_by_role("button", name="Anmelden", exact=True).click()
    elsewhere.goto(live.url + "/account/")
    expect(elsewhere.get_by_role("heading", level=1)).to_have_text("Mon compte")
    other.close()
