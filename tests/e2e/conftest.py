"""Browser fixtures: the app served live on 127.0.0.1, opened as http://localhost:PORT in headless Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from app import create_app
from app.settings import Settings
from tests.conftest import dispose_app, make_settings, require_peer
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
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    b = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
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


def assert_no_console_errors(page: Page) -> None:
    errors: list[Any] = getattr(page, "console_errors", [])
    assert not errors, f"browser console errors: {errors}"
