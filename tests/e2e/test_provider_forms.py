"""Catalog-driven provider forms in real Chromium: visible_when (static JS under the CSP) and write-only secrets."""

from __future__ import annotations

import re

from flask import Flask
from playwright.sync_api import Page, expect

from app.auth import users
from app.extensions import get_database, get_settings
from tests.conftest import PASSWORD
from tests.e2e.conftest import assert_no_console_errors
from tests.support.live import LiveServer

ADMIN = "admin@example.com"


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


def test_visible_when_shows_the_field_the_choice_needs(live: LiveServer, page: Page) -> None:
    _sign_in_admin(live.app, page, live.url)
    page.get_by_role("link", name="Providers").click()
    page.get_by_role("link", name="Add a provider").click()
    page.get_by_role("link", name="Generic API key").click()
    header_name = page.get_by_label("Header name")
    query_param = page.get_by_label("Query parameter")
    expect(header_name).to_be_hidden()
    expect(query_param).to_be_hidden()
    page.get_by_label("How the key is sent").select_option("header")
    expect(header_name).to_be_visible()
    expect(header_name).to_be_enabled()
    expect(query_param).to_be_hidden()
    page.get_by_label("How the key is sent").select_option("query")
    expect(header_name).to_be_hidden()
    expect(query_param).to_be_visible()
    page.get_by_label("How the key is sent").select_option("header")
    page.get_by_label("Name", exact=True).fill("Weather API")
    page.get_by_label("Base URL").fill("https://api.weather.example/")
    header_name.fill("X-Api-Key")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Weather API")).to_be_visible()
    expect(page.get_by_label("Header name")).to_have_value("X-Api-Key")
    expect(page.get_by_label("Base URL")).to_have_value("https://api.weather.example")
    expect(page.get_by_label("Query parameter")).to_be_hidden()
    assert_no_console_errors(page)


def test_smtp_clear_text_needs_the_explicit_tick(live: LiveServer, page: Page) -> None:
    _sign_in_admin(live.app, page, live.url)
    page.goto(live.url + "/admin/providers/new/smtp")
    allow = page.get_by_label("I understand that passwords and mail cross the network unencrypted")
    expect(allow).to_be_hidden()
    page.get_by_label("Name", exact=True).fill("Relay")
    page.get_by_label("Server host").fill("relay.internal")
    page.get_by_label("Connection security").select_option("none")
    expect(allow).to_be_visible()
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#allow_insecure-error")).to_have_text("This must be turned on (ticked) to continue.")
    # What was typed is still there, and the checkbox is still shown after the server's answer.
    expect(page.get_by_label("Server host")).to_have_value("relay.internal")
    expect(page.get_by_label("Connection security")).to_have_value("none")
    allow.check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Relay")).to_be_visible()
    assert_no_console_errors(page)


def test_a_saved_secret_is_never_shown_again(live: LiveServer, page: Page) -> None:
    secret = "GOCSPX-browser-only-91c2"
    _sign_in_admin(live.app, page, live.url)
    page.goto(live.url + "/admin/providers/new/google")
    page.get_by_label("Name", exact=True).fill("Google (staff)")
    page.get_by_label(re.compile(r"^Client ID")).fill("1234567890-e2e.apps.googleusercontent.com")
    page.get_by_label(re.compile(r"^Client secret")).fill(secret)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Google (staff)")).to_be_visible()
    state = page.locator("#client_secret-state")
    expect(state).to_contain_text(re.compile(r"set · last changed \d{4}-\d{2}-\d{2}"))
    expect(page.get_by_label(re.compile(r"^Client secret"))).to_have_value("")
    assert secret not in page.content()
    state.get_by_text("Replace").click()
    expect(page.get_by_label(re.compile(r"^Client secret"))).to_be_focused()
    page.get_by_role("button", name="Enable").click()
    expect(page.get_by_text("“Google (staff)” is now enabled.")).to_be_visible()
    assert secret not in page.content()
    assert_no_console_errors(page)
