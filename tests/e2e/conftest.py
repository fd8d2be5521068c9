"""Browser fixtures: the app served live on 127.0.0.1, opened as http://localhost:PORT in headless Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, BrowserContext, Frame, FrameLocator, Page, Playwright, sync_playwright

from app import create_app
from app.settings import Settings
from tests.conftest import dispose_app, make_settings, require_peer
from tests.e2e.a11y import AXE_JS, PageAudit
from tests.support.live import LiveServer, free_port, serve

CHROMIUM = os.environ.get("AMI_AUTH_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Playwright]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        require_peer(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def page_audit() -> Iterator[PageAudit]:
    """axe-core and the sideways-scroll check, shared by every context the suite opens (tests/e2e/a11y.py)."""
    if not AXE_JS.exists():
        require_peer(f"axe-core not found at {AXE_JS} (make peers)")
    audit = PageAudit.load()
    _AUDITS.append(audit)
    yield audit
    audit.close()


_AUDITS: list[PageAudit] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for audit in _AUDITS:
        elapsed = time.perf_counter() - audit.started
        terminalreporter.write_line(
            f"page check (axe-core, layout): {len(audit.checked)} page x width checks in {audit.seconds:.1f} s, "
            f"{audit.seconds / elapsed:.0%} of the {elapsed:.0f} s since the first browser test began"
        )


@pytest.fixture(autouse=True)
def _page_audit_gate(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test when a page it opened has a serious or critical axe violation or scrolls sideways."""
    if not {"browser", "prod_browser"} & set(request.fixturenames):
        yield
        return
    audit: PageAudit = request.getfixturevalue("page_audit")
    browser: Browser = request.getfixturevalue("browser")  # any Chromium will do: the check fetches nothing
    # Pages a session or module fixture opened for this test (a first admin signing up) count as the test's.
    findings = audit.flush(browser)
    yield
    findings += audit.flush(browser)
    assert not findings, "accessibility or layout problems:\n" + "\n".join(findings)


def audit_contexts(browser: Browser, page_audit: PageAudit) -> None:
    """Every context ``browser`` opens from now on (a fixture's, a second user's) gets the page check."""
    new_context = browser.new_context

    def audited_context(*args: Any, **kwargs: Any) -> BrowserContext:
        ctx = new_context(*args, **kwargs)
        page_audit.watch_context(ctx)
        return ctx

    setattr(browser, "new_context", audited_context)  # noqa: B010 - wraps the bound method of this one browser


@pytest.fixture(scope="session")
def browser(playwright_instance: Playwright, page_audit: PageAudit) -> Iterator[Browser]:
    b = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    audit_contexts(b, page_audit)
    yield b
    b.close()


@pytest.fixture
def live_port() -> int:
    return free_port()


@pytest.fixture
def live_settings(tmp_path: Path, sqlite_url: str, live_port: int) -> Settings:
    return make_settings(tmp_path, sqlite_url, AMI_AUTH_BASE_URL=f"http://localhost:{live_port}")


@pytest.fixture
def live_app(live_settings: Settings) -> Iterator[Flask]:
    application = create_app(live_settings)
    yield application
    dispose_app(application)


@pytest.fixture
def live(live_app: Flask, live_port: int) -> Iterator[LiveServer]:
    with serve(live_app, live_port) as server:
        yield server


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context()
    yield ctx
    ctx.close()


def watch_console(page: Page) -> list[str]:
    """Collect the page's script errors and CSP violations (also kept as ``page.console_errors``)."""
    errors: list[str] = []
    # HTTP error statuses the test provokes on purpose (401, 410…) are logged as "Failed to load resource";
    # what counts are script errors and CSP violations.
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    setattr(page, "console_errors", errors)  # noqa: B010 - tests read it
    return errors


def keep_screenshot(page: Page, name: str, fallback: Path) -> None:
    """A full-page screenshot into AMI_AUTH_TEST_SCREENSHOTS (or ``fallback``), to look at when a test fails."""
    shot_dir = Path(os.environ.get("AMI_AUTH_TEST_SCREENSHOTS", fallback))
    shot_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):
        page.screenshot(path=str(shot_dir / f"{name}.png"), full_page=True)


@contextlib.contextmanager
def virtual_authenticator(context: BrowserContext, page: Page) -> Iterator[str]:
    """Chromium's virtual platform authenticator with resident keys and user verification (TESTING.md §3);
    yields its id. The page's own navigator.credentials calls use it."""
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    try:
        yield added["authenticatorId"]
    finally:
        cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": added["authenticatorId"]})
        cdp.detach()


def without_passkey_autofill(page: Page) -> None:
    """Make ``page`` a browser without conditional mediation, where the explicit passkey button is the way.

    Chromium's virtual authenticator answers a conditional (autofill) request at once, as if the user had
    picked the passkey from the list: with it, every sign-in page would sign the passkey's owner in by itself.
    """
    page.add_init_script("delete PublicKeyCredential.isConditionalMediationAvailable;")


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    """A page that fails the test on any console error (CSP violations included) and keeps a screenshot."""
    p = context.new_page()
    watch_console(p)
    yield p
    keep_screenshot(p, request.node.name, tmp_path)


DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


class DocsScreenshots:
    """Pictures of the pages for docs/: written to docs/screenshots only when AMI_AUTH_UPDATE_SCREENSHOTS=1.

    Test runs otherwise leave the committed images alone; each call still proves the page is there to take.
    """

    def __init__(self, directory: Path, update: bool) -> None:
        self.directory = directory
        self.update = update
        self.taken: list[str] = []

    def __call__(self, page: Page, name: str, *, full_page: bool = True) -> None:
        self.taken.append(name)
        if not self.update:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # No caret, no animation: the same page gives the same picture run after run.
        page.screenshot(
            path=str(self.directory / f"{name}.png"), full_page=full_page, animations="disabled", caret="hide"
        )


@pytest.fixture
def docs_screenshot() -> DocsScreenshots:
    return DocsScreenshots(DOCS_SCREENSHOTS, os.environ.get("AMI_AUTH_UPDATE_SCREENSHOTS") == "1")


def assert_no_console_errors(page: Page) -> None:
    errors: list[Any] = getattr(page, "console_errors", [])
    assert not errors, f"browser console errors: {errors}"


def press_test_connection(where: Page | Frame | FrameLocator) -> None:
    """Click a secure dialog's "Test connection" once htmx has run: before that (deferred scripts on a page just
    opened) the button is the no-JavaScript path, a plain submit answered by a whole page whose secret fields come
    back empty, as they always do; a Save right after it then has no secret to send (seen once in CI)."""
    button = where.get_by_role("button", name="Test connection")
    frame = button.element_handle().owner_frame()  # the page's or the iframe's document, once the button is in it
    assert frame is not None
    frame.wait_for_function("() => document.readyState !== 'loading' && !!window.htmx")
    button.click()
