"""Feedback in real Chromium (issue 15): a passing "Test connection" clears the field errors an earlier failed
Save left, the failure summary links only to fields that are on the page, copy buttons copy one-time tokens,
the optional passkey name is not `required`, and empty lists say so."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Page, expect

from app.auth import users
from app.extensions import get_cipher, get_database, get_settings
from app.settings import Settings
from tests.conftest import PASSWORD, make_settings
from tests.e2e.conftest import assert_no_console_errors, press_test_connection
from tests.support.accounts import make_config
from tests.support.live import LiveServer, free_port
from tests.support.vendors.openai import OpenAI

pytest_plugins = ("tests.support.vendor_fixtures",)

ADMIN = "admin@example.com"


@pytest.fixture
def live_settings(tmp_path: Path, sqlite_url: str, live_port: int) -> Settings:
    return make_settings(
        tmp_path, sqlite_url, AMI_AUTH_BASE_URL=f"http://localhost:{live_port}", AMI_AUTH_OUTBOUND_RETRIES="0"
    )


def _admin_with_openai_config(app: Flask, page: Page, base: str) -> None:
    with app.app_context():
        db = get_database(app).session()
        users.create_user(db, get_settings(app), email=ADMIN, password=PASSWORD, role="admin", verified=True)
        make_config(db, get_cipher(app), get_settings(app), "openai", {"rotation_days": 90}, name="OpenAI (staff)")
        db.commit()
    page.goto(base + "/signin")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def _open_dialog(page: Page, base: str, base_url: str) -> None:
    page.goto(base + "/admin/accounts/new")
    page.get_by_role("link", name="OpenAI (staff)").click()
    page.get_by_label("Label").fill("OpenAI prod")
    page.get_by_text("Advanced").click()
    page.get_by_label("Base URL").fill(base_url)
    page.get_by_role("button", name="Continue to the secret").click()
    expect(page.get_by_role("heading", name=re.compile("Enter the secret for"))).to_be_visible()


def _dangling_links(page: Page) -> list[str]:
    dangling: list[str] = page.evaluate(
        """() => Array.from(document.querySelectorAll('a[href^="#"]'))
              .map(a => a.getAttribute('href').slice(1))
              .filter(id => id && !document.getElementById(id))"""
    )
    return dangling


def test_a_passing_test_clears_the_field_error_of_a_failed_save(
    live: LiveServer, page: Page, openai_standin: OpenAI
) -> None:
    good = openai_standin.add_key()
    _admin_with_openai_config(live.app, page, live.url)
    _open_dialog(page, live.url, openai_standin.url)
    key = page.get_by_label("API key")
    key.fill("sk-proj-this-key-is-not-known-at-openai")
    page.get_by_role("button", name="Save").click()
    field = page.locator('.field[data-field="api_key"]')
    expect(field.locator("p.error")).to_be_visible()
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    assert _dangling_links(page) == []

    page.get_by_label("API key").fill(good)
    press_test_connection(page)
    expect(page.locator("#test-result")).to_contain_text("Connection works")
    expect(field.locator("p.error")).to_have_count(0)
    expect(page.locator(".field.has-error")).to_have_count(0)
    expect(page.get_by_label("API key")).not_to_have_attribute("aria-invalid", "true")
    assert_no_console_errors(page)


def test_the_failure_summary_links_only_to_fields_on_the_page(live: LiveServer, page: Page) -> None:
    _admin_with_openai_config(live.app, page, live.url)
    _open_dialog(page, live.url, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    page.get_by_label("API key").fill("sk-proj-any-key-at-all-0000000000")
    press_test_connection(page)
    blamed = page.locator('#test-result li[data-field="base_url"]')
    expect(blamed).to_contain_text("Base URL (set in the account\u2019s settings)")
    expect(blamed.locator("a")).to_have_count(0)
    assert _dangling_links(page) == []
    assert_no_console_errors(page)


def test_copy_buttons_put_a_one_time_token_on_the_clipboard(live: LiveServer, page: Page, context: Any) -> None:
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    with live.app.app_context():
        db = get_database(live.app).session()
        users.create_user(db, get_settings(live.app), email=ADMIN, password=PASSWORD, role="admin", verified=True)
        db.commit()
    page.goto(live.url + "/signin")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.goto(live.url + "/admin/tokens/")
    expect(page.locator('[data-empty="tokens"]')).to_have_text("No service tokens yet. Create one below.")
    page.get_by_label("Name").fill("CMS production")
    page.get_by_role("checkbox", name=re.compile(r"\bsessions:read\b")).check()
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token-value").input_value()
    assert token
    page.get_by_role("button", name="Copy the token").click()
    expect(page.get_by_role("status").filter(has_text="Copied.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == token
    assert_no_console_errors(page)


def test_the_passkey_name_is_optional_in_the_page_too(live: LiveServer, page: Page) -> None:
    with live.app.app_context():
        db = get_database(live.app).session()
        users.create_user(db, get_settings(live.app), email="pat@example.com", password=PASSWORD, verified=True)
        db.commit()
    page.goto(live.url + "/signin")
    page.get_by_label("Email").fill("pat@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.goto(live.url + "/account/mfa")
    name = page.get_by_label("Passkey name")
    expect(name).not_to_have_attribute("required", re.compile(".*"))
    expect(page.get_by_text("Optional; helps you tell them apart")).to_be_visible()
    expect(page.locator('[data-empty="passkeys"]')).to_have_text("No passkeys yet. Add one below.")
