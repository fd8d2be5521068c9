"""The newcomer's first hour in real Chromium (issue 15): what a user sees when something is set up the easy way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from app.auth import users
from app.extensions import get_database
from app.settings import Settings
from tests.conftest import PASSWORD, make_settings
from tests.e2e.conftest import virtual_authenticator
from tests.support.live import LiveServer


@pytest.fixture
def live_settings(tmp_path: Path, sqlite_url: str, live_port: int) -> Settings:
    # What `make run` used to do: the base URL is an IP address, and the site is opened there.
    return make_settings(tmp_path, sqlite_url, AMI_AUTH_BASE_URL=f"http://127.0.0.1:{live_port}")


@pytest.fixture
def authenticator(context: BrowserContext, page: Page) -> Iterator[str]:
    with virtual_authenticator(context, page) as authenticator_id:
        yield authenticator_id


def test_a_passkey_on_an_ip_address_says_to_open_localhost(live: LiveServer, page: Page, authenticator: str) -> None:
    with live.app.app_context():
        db = get_database(live.app).session()
        users.create_user(db, live.app.extensions["ami_settings"], email="ip@example.com", password=PASSWORD)
        db.commit()
    site = f"http://127.0.0.1:{live.port}"
    page.goto(site + "/signin")
    page.get_by_label("Email").fill("ip@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    page.goto(site + "/account/mfa")
    page.get_by_role("button", name="Add a passkey").click()
    error = page.locator("[data-webauthn-error]")
    expect(error).to_contain_text("Passkeys need a domain name, and this page is open at an IP address (127.0.0.1)")
    expect(error).to_contain_text(f"Open the site at http://localhost:{live.port} instead")
    expect(error).to_contain_text("AMI_AUTH_BASE_URL")
