"""Linked sign-in identities in real Chromium: a user links their account by signing in through the real OP and
unlinks it on their account page; an admin unlinks another user's identity in the console, and is refused the
last way someone signs in."""

from __future__ import annotations

import re

from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy import select

from app.auth import users
from app.extensions import get_database, get_settings
from app.models import AuditEvent, User
from tests.conftest import PASSWORD
from tests.e2e.conftest import assert_no_console_errors
from tests.support.live import LiveServer
from tests.support.oauth_app import create_config, generic_values
from tests.support.op import OPClient, running_op

ACCOUNTS = {
    "alice": {"email": "alice@example.com", "email_verified": True, "name": "Alice"},
    "carol": {"email": "carol@example.com", "email_verified": True, "name": "Carol"},
    "bob": {"email": "bob@example.com", "email_verified": True, "name": "Bob"},
}


def _users(app: Flask) -> None:
    with app.app_context():
        db = get_database(app).session()
        for email, role in (
            ("alice@example.com", "member"),
            ("carol@example.com", "member"),
            ("root@example.com", "admin"),
        ):
            users.create_user(db, get_settings(app), email=email, password=PASSWORD, role=role, verified=True)
        db.commit()


def _user_id(app: Flask, email: str) -> int:
    with app.app_context():
        user = get_database(app).session().scalar(select(User).where(User.email == email))
        assert user is not None
        return user.id


def _continue_with(page: Page, base: str, login: str) -> None:
    """Sign in through the OP's own pages (login, then consent), as nobody the OP remembers (its cookies live on
    127.0.0.1, the app's on localhost)."""
    page.context.clear_cookies(domain="127.0.0.1")
    page.goto(base + "/signin")
    page.get_by_role("link", name="Continue with Corp ID").click()
    page.locator('input[name="login"]').fill(login)
    page.locator('input[name="password"]').fill("any")
    page.locator('button[type="submit"]').click()
    page.locator('button[type="submit"]', has_text="Continue").click()
    expect(page.locator(".who")).to_have_text(str(ACCOUNTS[login]["email"]))


def _sign_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_a_user_unlinks_on_their_page_an_admin_in_the_console(live: LiveServer, page: Page) -> None:
    _users(live.app)
    client = OPClient("ami-auth", "op-secret", redirect_uri=f"{live.url}/oauth/1/callback")
    with running_op(clients=[client], accounts=ACCOUNTS) as op:
        create_config(
            live.app, "generic_oidc", "Corp ID", generic_values(op.issuer, client, trust_email=True, jit=True)
        )
        # Alice links by signing in through the provider, then unlinks it herself.
        _continue_with(page, live.url, "alice")
        page.goto(live.url + "/account/")
        section = page.locator("#identities")
        expect(section.locator("tr[data-identity-id]")).to_have_count(1)
        expect(section).to_contain_text("alice@example.com")
        section.get_by_role("button", name=re.compile("Unlink")).click()
        expect(page.locator(".flash-success")).to_contain_text("no longer signs you in here")
        expect(page.locator("#identities [data-empty=identities]")).to_be_visible()
        _sign_out(page)
        # Carol (who has a password) and Bob (created by the provider, no password) sign in through it.
        _continue_with(page, live.url, "carol")
        _sign_out(page)
        _continue_with(page, live.url, "bob")
        _sign_out(page)

    page.get_by_label("Email").fill("root@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.goto(f"{live.url}/admin/users/{_user_id(live.app, 'bob@example.com')}")
    page.locator("#identities").get_by_role("button", name=re.compile("Unlink")).click()
    expect(page.locator(".alert-error")).to_contain_text("the only way bob@example.com can sign in")
    expect(page.locator("#identities tr[data-identity-id]")).to_have_count(1)
    page.goto(f"{live.url}/admin/users/{_user_id(live.app, 'carol@example.com')}")
    page.locator("#identities").get_by_role("button", name=re.compile("Unlink")).click()
    expect(page.locator(".flash-success")).to_contain_text("no longer signs carol@example.com in")
    expect(page.locator("#identities [data-empty=identities]")).to_be_visible()
    assert_no_console_errors(page)

    with live.app.app_context():
        events = (
            get_database(live.app)
            .session()
            .scalars(select(AuditEvent).where(AuditEvent.action == "oauth.identity_unlinked").order_by(AuditEvent.id))
            .all()
        )
    assert [(e.outcome, e.details["via"], e.actor) for e in events] == [
        ("success", "self", "alice@example.com"),
        ("denied", "admin", "root@example.com"),
        ("success", "admin", "root@example.com"),
    ]
