"""Fixtures for the production-shaped suite: the stack of tests/support/prod_stack.py and Chromium trusting it.

How a journey uses them (see test_signin.py, test_console.py, test_csrf.py)::

    def test_something(prod: ProductionStack, prod_page: Page, prod_users: ProdUsers) -> None:
        user = prod_users.create("me@example.com")            # through the logic layer, on the stack's DB
        sign_in(prod_page, prod, user.email, user.password)   # https://localhost:PORT, through nginx
        ...

- ``prod`` — the stack, once per test session. Under ``--dist loadfile`` every file of this folder goes to the
  same worker (``SHARED_SESSION_SUITES`` in tests/conftest.py), so a run starts one stack however many files
  journeys add here. Journeys share it, so each uses users of its own (``prod_users.create``, a unique email).
- ``prod_browser`` — Chromium launched with the stack's SPKI hash; ``prod_context`` / ``prod_page`` a fresh
  context and page per test (the page fails the test on console errors and leaves a screenshot in
  ``AMI_AUTH_TEST_SCREENSHOTS``).
- ``first_admin`` — the operator's first step, done once: the link ``ami-auth bootstrap`` printed, the admin
  created there, the authenticator app the production MFA policy makes them enrol. ``admin_context`` is a
  browser context signed in as that admin (admin journeys share its session; a journey that signs out uses a
  user of its own).
- Every test that fails shows what gunicorn logged while it ran ("Captured gunicorn log").
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect

from app.auth import users
from app.extensions import get_database
from tests.e2e.a11y import PageAudit
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, audit_contexts, keep_screenshot, watch_console
from tests.support.prod_stack import ProductionStack, production_stack

ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "first admin passphrase 2026"
PASSWORD = "a long member passphrase 2026"

_LOG_OFFSET = pytest.StashKey[tuple[ProductionStack, int]]()


# An operator's folder of further provider types, as AMI_AUTH_CATALOG_DIR names it: the synthetic entries of the
# integration suite (test_synthetic_provider.py signs in with one); no other journey looks at them.
SYNTHETIC_CATALOG = Path(__file__).resolve().parents[2] / "fixtures" / "catalog"


@pytest.fixture(scope="session")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionStack]:
    with production_stack(tmp_path_factory.mktemp("prod"), AMI_AUTH_CATALOG_DIR=str(SYNTHETIC_CATALOG)) as stack:
        yield stack


@pytest.fixture(autouse=True)
def _app_log_section(request: pytest.FixtureRequest, prod: ProductionStack) -> None:
    """Remember where gunicorn's log stood when the test began (the report hook below shows what follows)."""
    request.node.stash[_LOG_OFFSET] = (prod, prod.log_offset())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed and _LOG_OFFSET in item.stash:
        stack, offset = item.stash[_LOG_OFFSET]
        report.sections.append(("Captured gunicorn log", stack.app_log(offset)[-20000:] or "(nothing)"))


@pytest.fixture(scope="session")
def prod_browser(playwright_instance: Playwright, prod: ProductionStack, page_audit: PageAudit) -> Iterator[Browser]:
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *prod.chromium_args])
    audit_contexts(browser, page_audit)  # axe-core and the layout check on the production pages too
    yield browser
    browser.close()


@pytest.fixture
def prod_context(prod_browser: Browser) -> Iterator[BrowserContext]:
    context = prod_browser.new_context()
    yield context
    context.close()


def _watched_page(context: BrowserContext, name: str, tmp_path: Path) -> Iterator[Page]:
    """A page that fails its test on console errors (CSP violations included) and leaves a screenshot."""
    page = context.new_page()
    errors = watch_console(page)
    yield page
    keep_screenshot(page, f"prod-{name}", tmp_path)
    assert not errors, f"browser console errors: {errors}"


@pytest.fixture
def prod_page(prod_context: BrowserContext, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    yield from _watched_page(prod_context, request.node.name, tmp_path)


# --- users --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProdUser:
    email: str
    password: str
    id: int


class ProdUsers:
    """Users made through the logic layer on the stack's database (members by default)."""

    def __init__(self, stack: ProductionStack) -> None:
        self.stack = stack

    def create(self, email: str, *, role: str = "member", password: str = PASSWORD) -> ProdUser:
        app = self.stack.app
        with app.app_context():
            db = get_database(app).session()
            user = users.create_user(
                db, app.extensions["ami_settings"], email=email, password=password, role=role, verified=True
            )
            db.commit()
            return ProdUser(user.email, password, user.id)


@pytest.fixture(scope="session")
def prod_users(prod: ProductionStack) -> ProdUsers:
    return ProdUsers(prod)


# --- pages every journey goes through -------------------------------------------------------------------------


def sign_in(page: Page, stack: ProductionStack, email: str, password: str) -> None:
    """The password step of /signin (what follows depends on the account's factors)."""
    page.goto(stack.url + "/signin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def sign_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


@dataclass(frozen=True)
class FirstAdmin:
    email: str
    password: str
    totp_secret: str
    storage_state: Any

    def next_code(self, steps_ahead: int) -> str:
        """A TOTP code ``steps_ahead`` 30-second steps after now (each code is accepted once, RFC 6238 §5.2)."""
        import time

        return pyotp.TOTP(self.totp_secret).at(time.time() + 30 * steps_ahead)


@pytest.fixture(scope="session")
def first_admin(prod: ProductionStack, prod_browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> FirstAdmin:
    """The operator's first step, in Chromium: open the setup link, create the admin, enrol an authenticator app
    (production requires a second factor for admins), land on the console."""
    shots = tmp_path_factory.mktemp("first-admin")
    context = prod_browser.new_context()
    try:
        page = context.new_page()
        errors = watch_console(page)
        page.goto(prod.setup_link)
        expect(page.get_by_role("heading", name="Create the first admin")).to_be_visible()
        page.get_by_label("Email").fill(ADMIN_EMAIL)
        page.get_by_label("Your name").fill("Root Admin")
        page.get_by_label("Password", exact=True).fill(ADMIN_PASSWORD)
        page.get_by_label("Repeat password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Create admin and sign in").click()
        # Signed in, and held at the MFA page until a factor exists.
        expect(page).to_have_url(re.compile(re.escape(prod.url) + r"/account/mfa$"))
        expect(page.get_by_text("Your role requires a second factor.")).to_be_visible()
        page.get_by_role("button", name="Set up an authenticator app").click()
        secret = page.locator("#totp-secret").inner_text().replace(" ", "")
        keep_screenshot(page, "prod-first-admin-totp", shots)
        page.get_by_label("Authentication code").fill(pyotp.TOTP(secret).now())
        page.get_by_role("button", name="Turn on").click()
        expect(page.get_by_text("Authenticator app added.")).to_be_visible()
        page.goto(prod.url + "/admin/")
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        assert not errors, f"browser console errors: {errors}"
        return FirstAdmin(ADMIN_EMAIL, ADMIN_PASSWORD, secret, context.storage_state())
    finally:
        context.close()


@pytest.fixture
def admin_context(prod_browser: Browser, first_admin: FirstAdmin) -> Iterator[BrowserContext]:
    """A browser context signed in as the first admin (its session is shared: do not sign it out)."""
    context = prod_browser.new_context(storage_state=first_admin.storage_state)
    yield context
    context.close()


@pytest.fixture
def admin_page(admin_context: BrowserContext, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    yield from _watched_page(admin_context, request.node.name, tmp_path)
