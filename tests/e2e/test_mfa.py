"""Second factors in real Chromium: TOTP codes from pyotp, passkeys on Chromium's virtual authenticator
(TESTING.md §3), recovery codes, and an admin forced to enrol before anything else."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from app.auth import users
from app.extensions import get_database
from app.models import User
from app.settings import Settings
from tests.conftest import PASSWORD, make_settings
from tests.e2e.conftest import assert_no_console_errors, virtual_authenticator, without_passkey_autofill
from tests.support.live import LiveServer
from tests.support.mfa import enrol_totp as support_enrol_totp


@pytest.fixture
def live_settings(tmp_path: Path, sqlite_url: str, live_port: int) -> Settings:
    return make_settings(
        tmp_path,
        sqlite_url,
        AMI_AUTH_BASE_URL=f"http://localhost:{live_port}",
        AMI_AUTH_MFA_REQUIRED_ROLES="admin",
    )


@pytest.fixture
def authenticator(context: BrowserContext, page: Page) -> Iterator[str]:
    """A virtual platform authenticator with resident keys and user verification (TESTING.md §3)."""
    with virtual_authenticator(context, page) as authenticator_id:
        yield authenticator_id


def create_user(live: LiveServer, email: str, role: str = "member") -> User:
    with live.app.app_context():
        db = get_database(live.app).session()
        user = users.create_user(
            db, live.app.extensions["ami_settings"], email=email, password=PASSWORD, role=role, verified=True
        )
        db.commit()
        return user


def enrol_totp(live: LiveServer, user: User) -> str:
    return support_enrol_totp(live.app, live.app.extensions["ami_settings"], user)


def shot(page: Page, tmp_path: Path, name: str) -> None:
    """Key pages, kept for looking at when a test fails (AMI_AUTH_TEST_SCREENSHOTS, or the test's tmp dir)."""
    folder = Path(os.environ.get("AMI_AUTH_TEST_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"mfa-{name}.png"), full_page=True)


def password_signin(page: Page, live: LiveServer, email: str) -> None:
    page.goto(live.url + "/signin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()


def sign_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_admin_without_factor_enrols_totp_then_signs_in_with_a_code(
    live: LiveServer, page: Page, tmp_path: Path
) -> None:
    create_user(live, "admin@example.com", role="admin")
    password_signin(page, live, "admin@example.com")
    # Forced to enrol: the console is out of reach until a factor exists.
    expect(page).to_have_url(re.compile(r"/account/mfa$"))
    expect(page.get_by_text("Your role requires a second factor.")).to_be_visible()
    shot(page, tmp_path, "forced-enrolment")
    page.goto(live.url + "/admin/audit")
    expect(page).to_have_url(re.compile(r"/account/mfa$"))

    page.get_by_role("button", name="Set up an authenticator app").click()
    expect(page.get_by_role("heading", name="Set up an authenticator app")).to_be_visible()
    qr = page.get_by_role("img", name="QR code to add AMI Auth to your authenticator app")
    expect(qr).to_be_visible()
    # The SVG data URI really rendered (CSP allows img data:, and it carries no inline style).
    assert qr.evaluate("img => img.complete && img.naturalWidth > 0")
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    shot(page, tmp_path, "totp-enrol")
    page.get_by_label("Authentication code").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_text("Authenticator app added.")).to_be_visible()
    expect(page.locator("section", has_text="Authenticator app").get_by_text("On", exact=True)).to_be_visible()
    page.goto(live.url + "/admin/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    sign_out(page)
    password_signin(page, live, "admin@example.com")
    expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    shot(page, tmp_path, "second-step")
    # The enrolment used the current step; the next step is inside the ±1 window and not yet used.
    page.get_by_label("Authentication code").fill(pyotp.TOTP(secret).at(time.time() + 30))
    page.get_by_role("button", name="Verify code").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    assert_no_console_errors(page)


def test_passkey_enrolment_and_passwordless_sign_in(
    live: LiveServer, page: Page, authenticator: str, tmp_path: Path
) -> None:
    create_user(live, "pia@example.com")
    without_passkey_autofill(page)  # the button's path; autofill: tests/e2e/test_signin_methods.py
    password_signin(page, live, "pia@example.com")
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    page.goto(live.url + "/account/mfa")
    page.get_by_label("Passkey name").fill("Chromium virtual key")
    page.get_by_role("button", name="Add a passkey").click()
    expect(page.get_by_text("Passkey “Chromium virtual key” added.")).to_be_visible()
    expect(page.locator("table.mfa-passkeys")).to_contain_text("Chromium virtual key")
    shot(page, tmp_path, "account-passkey")

    # Passwordless: the discoverable credential with user verification signs in directly.
    sign_out(page)
    shot(page, tmp_path, "signin-page")
    page.get_by_role("button", name="Sign in with a passkey").click()
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    expect(page.locator(".who")).to_have_text("pia@example.com")

    # As a second factor after the password, too.
    sign_out(page)
    password_signin(page, live, "pia@example.com")
    expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    page.get_by_role("button", name="Use a passkey or security key").click()
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    page.goto(live.url + "/account/mfa")
    expect(page.locator("table.mfa-passkeys tbody tr")).to_have_count(1)
    expect(page.locator("table.mfa-passkeys")).not_to_contain_text("never")
    assert_no_console_errors(page)


def test_sign_in_with_a_recovery_code(live: LiveServer, page: Page, tmp_path: Path) -> None:
    user = create_user(live, "rory@example.com")
    secret = enrol_totp(live, user)
    password_signin(page, live, "rory@example.com")
    page.get_by_label("Authentication code").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Verify code").click()
    expect(page.get_by_role("heading", name="My account")).to_be_visible()

    page.goto(live.url + "/account/mfa")
    expect(page.get_by_text("You have no recovery codes.")).to_be_visible()
    page.get_by_role("button", name="Generate recovery codes").click()
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    codes = page.get_by_role("list", name="Recovery codes").locator("code").all_inner_texts()
    assert len(codes) == 10
    shot(page, tmp_path, "recovery-codes")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download as text").click()
    download = download_info.value
    assert download.suggested_filename == "ami-auth-recovery-codes.txt"
    text = Path(download.path()).read_text()
    assert all(code in text for code in codes)
    page.get_by_role("link", name="I have saved them").click()
    expect(page.locator(".mfa-codes-left")).to_have_text("10 of 10 codes left.")

    sign_out(page)
    password_signin(page, live, "rory@example.com")
    page.get_by_text("Use a recovery code").click()
    page.get_by_label("Recovery code").fill(codes[3])
    page.get_by_role("button", name="Use recovery code").click()
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    page.goto(live.url + "/account/mfa")
    expect(page.locator(".mfa-codes-left")).to_have_text("9 of 10 codes left.")

    # The same code does not work twice; the error sits on the field and the disclosure stays open.
    sign_out(page)
    password_signin(page, live, "rory@example.com")
    page.get_by_text("Use a recovery code").click()
    page.get_by_label("Recovery code").fill(codes[3])
    page.get_by_role("button", name="Use recovery code").click()
    expect(page.locator("#recovery_code-error")).to_have_text("That recovery code is not right or was used.")
    expect(page.get_by_label("Recovery code")).to_be_visible()
    shot(page, tmp_path, "recovery-code-wrong")
    assert_no_console_errors(page)
