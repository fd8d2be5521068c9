"""OAuth in real Chromium: "Continue with …" through the real OP's own login and consent pages, then connect
an account, refresh it from the console, and connect another with a code (device flow, htmx polling, QR).

The OP starts inside each test, once the live server's port (and so the callback URL) is known.
"""

from __future__ import annotations

import re

from flask import Flask
from playwright.sync_api import Page, expect

from app.auth import users
from app.extensions import get_database, get_settings
from tests.conftest import PASSWORD
from tests.e2e.conftest import assert_no_console_errors
from tests.support.live import LiveServer
from tests.support.oauth_app import create_config, generic_values
from tests.support.op import OPClient, op_device_login, running_op

EMAIL = "alice@example.com"
ACCOUNTS = {
    "alice": {"email": EMAIL, "email_verified": True, "name": "Alice"},
    "bob": {"email": "bob@example.com", "email_verified": True, "name": "Bob"},
}


def _user(app: Flask, email: str = EMAIL) -> None:
    with app.app_context():
        db = get_database(app).session()
        users.create_user(db, get_settings(app), email=email, password=PASSWORD, verified=True)
        db.commit()


def _op_pages(page: Page, login: str) -> None:
    """The OP's own interaction pages: sign in, then consent."""
    page.locator('input[name="login"]').fill(login)
    page.locator('input[name="password"]').fill("any")
    page.locator('button[type="submit"]').click()
    page.locator('button[type="submit"]', has_text="Continue").click()


def test_continue_with_the_provider_signs_in_through_its_pages(live: LiveServer, page: Page) -> None:
    _user(live.app)
    client = OPClient("ami-auth", "op-secret", redirect_uri=f"{live.url}/oauth/1/callback")
    with running_op(clients=[client], accounts=ACCOUNTS) as op:
        config_id = create_config(
            live.app, "generic_oidc", "Corp ID", generic_values(op.issuer, client, trust_email=True)
        )
        assert config_id == 1
        page.goto(live.url + "/signin")
        page.get_by_role("link", name="Continue with Corp ID").click()
        expect(page).to_have_url(re.compile(re.escape(op.issuer) + "/interaction/"))
        _op_pages(page, "alice")
        expect(page).to_have_url(re.compile(re.escape(live.url) + "/"))
        expect(page.locator(".who")).to_have_text(EMAIL)
        page.goto(live.url + "/account/")
        expect(page.get_by_role("heading", name="My account")).to_be_visible()
    assert_no_console_errors(page)


def test_connect_refresh_and_device_flow_in_the_console(live: LiveServer, page: Page) -> None:
    _user(live.app)
    client = OPClient("ami-auth", "op-secret", redirect_uri=f"{live.url}/oauth/1/callback")
    with running_op(clients=[client], accounts=ACCOUNTS, deviceInterval=1) as op:
        create_config(live.app, "generic_oidc", "Corp ID", generic_values(op.issuer, client, device_flow=True))
        page.goto(live.url + "/signin")
        page.get_by_label("Email").fill(EMAIL)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.goto(live.url + "/account/connections/")

        page.get_by_role("link", name="Connect Corp ID").click()
        _op_pages(page, "alice")
        expect(page.locator(".flash-success")).to_contain_text("Connected Corp ID account alice@example.com")
        card = page.locator("section.connection").first
        expect(card).to_have_attribute("data-status", "active")
        expect(card).to_contain_text("refreshed automatically")

        op.reset_counts()
        card.get_by_role("button", name="Refresh now").click()
        expect(page.locator(".flash-success")).to_contain_text("the new access token is valid until")
        assert op.grant_count("refresh_token") == 1

        # Connect with a code: the page polls (htmx, every `interval`) while the user approves elsewhere.
        page.get_by_role("button", name="Connect with a code").click()
        expect(page.get_by_role("heading", name="Connect Corp ID with a code")).to_be_visible()
        expect(page.locator("svg.device-qr")).to_be_visible()
        expect(page.locator("#device-status")).to_have_attribute("data-status", "pending")
        user_code = page.locator("#user-code").inner_text()
        verification = page.locator("#verification-uri").inner_text()
        op_device_login(f"{verification}?user_code={user_code}", "bob")
        expect(page).to_have_url(re.compile(re.escape(live.url) + r"/account/connections/#account-\d+"), timeout=15000)
        expect(page.locator("section.connection")).to_have_count(2)
        expect(page.locator("section.connection").nth(1)).to_contain_text("bob@example.com")
    assert_no_console_errors(page)
