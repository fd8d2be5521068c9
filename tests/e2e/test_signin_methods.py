"""Sign-in methods in real Chromium (issue 14): passkey autofill on the email field (WebAuthn conditional UI,
on Chromium's virtual authenticator) and the explicit passkey button beside it; a mailed sign-in code; an email
change; "Trust this browser" and the new-device alert; branding. With AMI_AUTH_DOCS_SHOTS=1 the tests refresh the
screenshots docs/sign-in.md shows."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from sqlalchemy import select

from app.auth import users
from app.extensions import get_database
from app.models import AuditEvent, MailOutbox, User
from app.settings import Settings
from tests.conftest import PASSWORD, make_settings
from tests.e2e.conftest import assert_no_console_errors, keep_screenshot, virtual_authenticator
from tests.support.live import LiveServer
from tests.support.mailbox import link_path
from tests.support.mfa import enrol_totp

DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "img" / "sign-in"


@pytest.fixture
def live_settings(tmp_path: Path, sqlite_url: str, live_port: int) -> Settings:
    logo = tmp_path / "acme.svg"
    logo.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><circle cx="12" cy="12" r="11" fill="#0b7a5a"/>'
        '<path d="M7 16l5-9 5 9z" fill="#fff"/></svg>'
    )
    return make_settings(
        tmp_path,
        sqlite_url,
        AMI_AUTH_BASE_URL=f"http://localhost:{live_port}",
        AMI_AUTH_EMAIL_CODE_SIGNIN="true",
        AMI_AUTH_BRAND_NAME="Acme Sign-in",
        AMI_AUTH_BRAND_LOGO=str(logo),
        AMI_AUTH_BRAND_ACCENT="#0b7a5a",
    )


@pytest.fixture
def authenticator(context: BrowserContext, page: Page) -> Iterator[str]:
    with virtual_authenticator(context, page) as authenticator_id:
        yield authenticator_id


def docs_shot(page: Page, name: str, *, full_page: bool = False) -> None:
    """The screenshots docs/sign-in.md shows, taken by this suite (AMI_AUTH_DOCS_SHOTS=1 refreshes them)."""
    if os.environ.get("AMI_AUTH_DOCS_SHOTS"):
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_SHOTS / f"{name}.png"), full_page=full_page)


def create_user(live: LiveServer, email: str, role: str = "member") -> User:
    with live.app.app_context():
        db = get_database(live.app).session()
        user = users.create_user(
            db, live.app.extensions["ami_settings"], email=email, password=PASSWORD, role=role, verified=True
        )
        db.commit()
        return user


def mails_to(live: LiveServer, email: str) -> list[MailOutbox]:
    with live.app.app_context():
        db = get_database(live.app).session()
        return list(db.scalars(select(MailOutbox).where(MailOutbox.to == email).order_by(MailOutbox.id)))


def password_signin(page: Page, live: LiveServer, email: str) -> None:
    page.goto(live.url + "/signin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()


def sign_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def signin_events(live: LiveServer) -> list[dict[str, object]]:
    with live.app.app_context():
        rows = (
            get_database(live.app)
            .session()
            .scalars(select(AuditEvent).where(AuditEvent.action == "signin.success").order_by(AuditEvent.id))
            .all()
        )
        return [dict(e.details or {}) for e in rows]


def test_passkey_autofill_signs_in_from_the_email_field(
    live: LiveServer, page: Page, authenticator: str, tmp_path: Path
) -> None:
    create_user(live, "ada@example.com")
    password_signin(page, live, "ada@example.com")
    page.goto(live.url + "/account/mfa")
    page.get_by_label("Passkey name").fill("Laptop")
    page.get_by_role("button", name="Add a passkey").click()
    expect(page.get_by_text("Passkey “Laptop” added.")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()

    # The sign-in page asks for the passkeys conditionally; the email field says so to the browser. Chromium's
    # virtual authenticator answers a conditional request with its credential, as picking it from the list does.
    expect(page).to_have_url(live.url + "/account/")
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    expect(page.locator(".who")).to_have_text("ada@example.com")
    assert signin_events(live)[-1] == {"methods": ["webauthn"], "ui": "autofill"}
    keep_screenshot(page, "autofill-signed-in", tmp_path)
    assert_no_console_errors(page)


def test_the_email_field_offers_passkeys_and_the_button_stays(live: LiveServer, page: Page) -> None:
    page.goto(live.url + "/signin")
    assert page.get_by_label("Email").get_attribute("autocomplete") == "username webauthn"
    expect(page.get_by_role("button", name="Sign in with a passkey")).to_be_visible()
    docs_shot(page, "signin")
    assert_no_console_errors(page)


def test_a_mailed_code_signs_in_in_the_browser(live: LiveServer, page: Page) -> None:
    create_user(live, "cody@example.com")
    page.goto(live.url + "/signin")  # no authenticator here: the email field offers no passkey
    expect(page.get_by_role("link", name="Acme Sign-in")).to_be_visible()  # branding in the top bar
    page.get_by_role("link", name="Email me a sign-in code").click()
    page.get_by_label("Email").fill("cody@example.com")
    docs_shot(page, "code-request")
    page.get_by_role("button", name="Email me a code").click()
    expect(page.get_by_role("heading", name="Enter your sign-in code")).to_be_visible()
    [mail] = mails_to(live, "cody@example.com")
    assert mail.subject == "Your sign-in code" and "Acme Sign-in" in mail.text
    code = next(line for line in mail.text.splitlines() if line.isdigit() and len(line) == 6)
    page.get_by_label("Sign-in code").fill("000000" if code != "000000" else "111111")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("This code is not right or has expired.")).to_be_visible()
    page.get_by_label("Sign-in code").fill(code)
    docs_shot(page, "code-enter")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    expect(page.locator(".who")).to_have_text("cody@example.com")
    assert_no_console_errors(page)


def test_an_email_change_in_the_browser(live: LiveServer, page: Page) -> None:
    create_user(live, "before@example.com")
    password_signin(page, live, "before@example.com")
    section = page.locator("#email")
    section.get_by_label("New email address").fill("after@example.com")
    section.get_by_label("Your password").fill(PASSWORD)
    docs_shot(page, "email-change")
    section.get_by_role("button", name="Send confirmation link").click()
    expect(page.locator(".flash-success")).to_contain_text("We sent a link to after@example.com")
    [mail] = mails_to(live, "after@example.com")
    page.goto(live.url + link_path(mail.text, "/account/email/"))
    page.get_by_role("button", name="Change my email address").click()
    expect(page.locator(".flash-success")).to_contain_text("Your email address is now after@example.com")
    expect(page.locator(".who")).to_have_text("after@example.com")
    assert mails_to(live, "before@example.com")[-1].subject == "Your email address was changed"
    assert_no_console_errors(page)


def test_trust_this_browser_and_the_new_device_alert(live: LiveServer, page: Page, browser: Browser) -> None:
    user = create_user(live, "tess@example.com")
    secret = enrol_totp(live.app, live.app.extensions["ami_settings"], user)
    password_signin(page, live, "tess@example.com")
    expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    page.get_by_label("Authentication code").fill(pyotp.TOTP(secret).now())
    page.get_by_label("Trust this browser for 30 days").check()
    docs_shot(page, "trust-browser")
    page.get_by_role("button", name="Verify code").click()
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    expect(page.locator("tr[data-trusted]")).to_have_count(1)
    sign_out(page)
    password_signin(page, live, "tess@example.com")  # no second step in this browser now
    expect(page.get_by_role("heading", name="My account")).to_be_visible()

    # Another browser (a fresh context: no cookies) is new to the account: asked for the code, and mailed about.
    other = browser.new_context()
    try:
        stranger = other.new_page()
        password_signin(stranger, live, "tess@example.com")
        expect(stranger.get_by_role("heading", name="Confirm it's you")).to_be_visible()
        stranger.get_by_label("Authentication code").fill(pyotp.TOTP(secret).at(time.time() + 30))
        stranger.get_by_role("button", name="Verify code").click()
        expect(stranger.get_by_role("heading", name="My account")).to_be_visible()
    finally:
        other.close()
    alert = mails_to(live, "tess@example.com")[-1]
    assert alert.subject == "New sign-in to your account"
    assert "/account/#sessions-heading" in alert.text

    page.goto(live.url + "/account/")
    docs_shot(page, "trusted-browsers", full_page=True)
    page.locator("tr[data-trusted]").get_by_role("button", name=re.compile("Stop trusting")).click()
    expect(page.locator("[data-empty=trusted]")).to_be_visible()
    assert_no_console_errors(page)
