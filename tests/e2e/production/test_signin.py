"""Signing in on a production deployment, in Chromium over HTTPS through nginx (tests/support/prod_stack.py):
the first admin from the setup link with password + TOTP, a member's passkey and passwordless sign-in, a
password reset through real mail, sign-out — and that the pages really are HTTPS with Secure cookies and HSTS."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.e2e.conftest import virtual_authenticator, watch_console, without_passkey_autofill
from tests.e2e.production.conftest import FirstAdmin, ProdUsers, sign_in, sign_out
from tests.support.prod_stack import ProductionStack
from tests.support.smtp import body_text

NEW_PASSWORD = "a brand new passphrase 2027"


def test_pages_are_https_with_secure_cookies_and_hsts_and_a_member_signs_in_and_out(
    prod: ProductionStack, prod_page: Page, prod_context: BrowserContext, prod_users: ProdUsers
) -> None:
    user = prod_users.create("https-member@example.com")
    response = prod_page.goto(prod.url + "/signin")
    assert response is not None and response.status == 200
    assert response.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"
    assert response.headers["referrer-policy"] == "same-origin"
    assert prod_page.evaluate("[location.origin, window.isSecureContext]") == [prod.url, True]

    sign_in(prod_page, prod, user.email, user.password)
    expect(prod_page.get_by_role("heading", name="My account")).to_be_visible()
    expect(prod_page.locator(".who")).to_have_text(user.email)
    [cookie] = [c for c in prod_context.cookies(prod.url) if c["name"] == "ami_session"]
    assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (True, True, "Lax")
    assert "ami_session" not in prod_page.evaluate("document.cookie")

    sign_out(prod_page)
    prod_page.goto(prod.url + "/account/")
    expect(prod_page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_the_first_admin_from_the_setup_link_signs_in_with_password_and_totp(
    prod: ProductionStack, prod_page: Page, first_admin: FirstAdmin
) -> None:
    # The link `ami-auth bootstrap` printed worked once (the first_admin fixture); now it says so.
    prod_page.goto(prod.setup_link)
    expect(prod_page.get_by_role("heading", name="This setup link is no longer valid.")).to_be_visible()

    sign_in(prod_page, prod, first_admin.email, first_admin.password)
    expect(prod_page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    prod_page.get_by_label("Authentication code").fill(first_admin.next_code(1))
    prod_page.get_by_role("button", name="Verify code").click()
    expect(prod_page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(prod_page.locator(".who")).to_have_text(first_admin.email)
    sign_out(prod_page)


@pytest.fixture
def authenticator(prod_context: BrowserContext, prod_page: Page) -> Iterator[str]:
    with virtual_authenticator(prod_context, prod_page) as authenticator_id:
        yield authenticator_id


def test_a_member_enrols_a_passkey_and_signs_in_without_a_password(
    prod: ProductionStack, prod_page: Page, prod_users: ProdUsers, authenticator: str
) -> None:
    user = prod_users.create("passkey-member@example.com")
    without_passkey_autofill(prod_page)  # the button's path; autofill: tests/e2e/test_signin_methods.py
    sign_in(prod_page, prod, user.email, user.password)
    expect(prod_page.get_by_role("heading", name="My account")).to_be_visible()
    prod_page.goto(prod.url + "/account/mfa")
    prod_page.get_by_label("Passkey name").fill("Chromium virtual key")
    prod_page.get_by_role("button", name="Add a passkey").click()
    # The relying party is localhost, the origin https://localhost:PORT: what AMI_AUTH_BASE_URL says.
    expect(prod_page.get_by_text("Passkey “Chromium virtual key” added.")).to_be_visible()

    sign_out(prod_page)
    prod_page.get_by_role("button", name="Sign in with a passkey").click()
    expect(prod_page.get_by_role("heading", name="My account")).to_be_visible()
    expect(prod_page.locator(".who")).to_have_text(user.email)
    sign_out(prod_page)


def test_a_member_resets_the_password_through_the_mail(
    prod: ProductionStack, prod_page: Page, prod_users: ProdUsers
) -> None:
    user = prod_users.create("forgetful-member@example.com")
    prod_page.goto(prod.url + "/signin")
    prod_page.get_by_role("link", name="Forgot password?").click()
    prod_page.get_by_label("Email").fill(user.email)
    prod_page.get_by_role("button", name="Send reset link").click()
    expect(prod_page.get_by_role("heading", name="Check your inbox")).to_be_visible()

    # Through aiosmtpd, over STARTTLS with AUTH, as AMI_AUTH_SMTP_URL says.
    mail = prod.smtp.wait_for(user.email, timeout=30)
    assert mail["Subject"] == "Reset your password"
    link = re.search(rf"{re.escape(prod.url)}/reset/\S+", body_text(mail))
    assert link, body_text(mail)
    prod_page.goto(link.group(0))
    expect(prod_page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    prod_page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    prod_page.get_by_label("Repeat new password").fill(NEW_PASSWORD)
    prod_page.get_by_role("button", name="Set new password").click()
    expect(prod_page.get_by_role("status")).to_contain_text("Your password was changed")

    sign_in(prod_page, prod, user.email, NEW_PASSWORD)
    expect(prod_page.get_by_role("heading", name="My account")).to_be_visible()
    sign_out(prod_page)


def test_a_german_browser_signs_in_in_german_and_a_member_who_picks_french_reads_french(
    prod: ProductionStack, prod_browser: Browser, prod_users: ProdUsers
) -> None:
    """Languages over HTTPS behind nginx, with gunicorn's two workers and PostgreSQL (issue 14)."""
    user = prod_users.create("sprachen-member@example.com")
    context = prod_browser.new_context(locale="de-DE")
    try:
        page = context.new_page()
        errors = watch_console(page)
        page.goto(prod.url + "/signin")
        expect(page.locator("html")).to_have_attribute("lang", "de")
        expect(page.get_by_role("heading", name="Anmelden", level=1)).to_be_visible()
        page.get_by_label("E-Mail").fill(user.email)
        page.get_by_label("Passwort").fill(user.password)
        page.get_by_role("button", name="Anmelden", exact=True).click()
        expect(page.get_by_role("heading", name="Mein Konto")).to_be_visible()
        # The member's own choice wins over the browser's, on every worker (it is stored, not in the session).
        page.get_by_role("combobox", name="Sprache").select_option("fr")
        page.get_by_role("button", name="Sprache speichern").click()
        expect(page.get_by_role("heading", name="Mon compte")).to_be_visible()
        for _ in range(4):  # two workers: each answers in French
            page.goto(prod.url + "/account/")
            expect(page.locator("html")).to_have_attribute("lang", "fr")
        assert errors == []
    finally:
        context.close()
