"""Sign-in methods in real Chromium (issue 14): passkey autofill on the email field (WebAuthn conditional UI,
on Chromium's virtual authenticator) and the explicit passkey button beside it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect
from sqlalchemy import select

from app.auth import users
from app.extensions import get_database
from app.models import AuditEvent
from tests.conftest import PASSWORD
from tests.e2e.conftest import assert_no_console_errors, keep_screenshot, virtual_authenticator
from tests.support.live import LiveServer

DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "img" / "sign-in"


@pytest.fixture
def authenticator(context: BrowserContext, page: Page) -> Iterator[str]:
    with virtual_authenticator(context, page) as authenticator_id:
        yield authenticator_id


def docs_shot(page: Page, name: str) -> None:
    """The screenshots docs/sign-in.md shows, taken by this suite (AMI_AUTH_DOCS_SHOTS=1 refreshes them)."""
    if os.environ.get("AMI_AUTH_DOCS_SHOTS"):
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_SHOTS / f"{name}.png"))


def create_user(live: LiveServer, email: str, role: str = "member") -> None:
    with live.app.app_context():
        db = get_database(live.app).session()
        users.create_user(
            db, live.app.extensions["ami_settings"], email=email, password=PASSWORD, role=role, verified=True
        )
        db.commit()


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
