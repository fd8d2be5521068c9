"""Auth.js, as the CMS uses it (@auth/express in tests/peers/authjs.mjs, configured as docs/oidc-provider.md shows),
signs people in through AMI Auth in Chromium: password + TOTP, and a passkey; its /auth/session answers 200 with
the user; RP-initiated logout ends both sessions; an admin revoking the AMI session reaches the app through
back-channel logout, and the app's session is gone on its next request."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from app.audit import AuditContext
from app.auth import users
from app.extensions import get_database
from app.idp import clients
from app.idp.delivery import stop_delivery
from app.models import User
from tests.conftest import PASSWORD, require_peer
from tests.e2e.conftest import virtual_authenticator, watch_console, without_passkey_autofill
from tests.support.live import LiveServer, free_port
from tests.support.mfa import enrol_totp

PEERS = Path(__file__).resolve().parent.parent / "peers"


@dataclass
class AuthJsApp:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def logouts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = httpx.get(f"http://127.0.0.1:{self.port}/logouts", trust_env=False).json()
        return result

    def wait_for_logouts(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(found := self.logouts()) < count:
            assert time.monotonic() < deadline, f"no back-channel logout arrived:\n{self.log.read_text()}"
            time.sleep(0.1)
        return found


@contextmanager
def running_authjs(issuer: str, client_id: str, secret: str, port: int) -> Iterator[AuthJsApp]:
    node = shutil.which(os.environ.get("AMI_AUTH_TEST_NODE", "node"))
    if node is None or not (PEERS / "node_modules" / "@auth" / "express").is_dir():
        require_peer("node or tests/peers/node_modules/@auth/express missing (run `make peers`)")
    assert node is not None
    url = f"http://localhost:{port}"
    log = Path(tempfile.mkstemp(prefix="authjs-", suffix=".log")[1])
    env = {
        **os.environ,
        "AMI_ISSUER": issuer,
        "AMI_CLIENT_ID": client_id,
        "AMI_CLIENT_SECRET": secret,
        "AUTH_SECRET": "test-only-auth-secret-0123456789abcdef",
        "APP_URL": url,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [node, str(PEERS / "authjs.mjs"), str(port)],
            cwd=PEERS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while "READY" not in log.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, (
                f"authjs.mjs did not start:\n{log.read_text()}"
            )
            time.sleep(0.05)
        yield AuthJsApp(url, port, process, log)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        log.unlink(missing_ok=True)


@pytest.fixture
def cms(live: LiveServer) -> Iterator[AuthJsApp]:
    """The CMS registered as a (not first-party) client, and its Auth.js app running."""
    port = free_port()
    url = f"http://localhost:{port}"
    with live.app.app_context():
        db = get_database(live.app).session()
        saved = clients.create_client(
            db,
            AuditContext(actor="test"),
            {
                "name": "The CMS",
                "redirect_uris": [f"{url}/auth/callback/ami"],
                "post_logout_redirect_uris": [f"{url}/signed-out"],
                "backchannel_logout_uri": f"http://127.0.0.1:{port}/backchannel-logout",
            },
        )
        db.commit()
        client_id, secret = saved.client.client_id, saved.secret
    assert secret is not None
    try:
        with running_authjs(live.url, client_id, secret, port) as app:
            yield app
    finally:
        stop_delivery(live.app)


def _user(live: LiveServer, email: str, role: str = "member") -> User:
    with live.app.app_context():
        db = get_database(live.app).session()
        user = users.create_user(
            db, live.app.extensions["ami_settings"], email=email, password=PASSWORD, role=role, verified=True
        )
        db.commit()
        return user


def _session(page: Page, cms: AuthJsApp) -> Any:
    """Auth.js's own session endpoint, read by the browser (its cookies)."""
    response = page.goto(f"{cms.url}/auth/session")
    assert response is not None and response.status == 200
    return json.loads(page.locator("body").inner_text() or "null")


def _start_sign_in(page: Page, cms: AuthJsApp) -> None:
    page.goto(f"{cms.url}/auth/signin?callbackUrl={cms.url}/")
    page.get_by_role("button", name="Sign in with AMI Auth").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def _password(page: Page, email: str) -> None:
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()


def test_password_and_totp_rp_logout_and_an_admin_revoke_reaching_authjs(
    live: LiveServer, cms: AuthJsApp, page: Page, browser: Browser
) -> None:
    ann = _user(live, "ann@example.com")
    _user(live, "root@example.com", role="admin")
    secret = enrol_totp(live.app, live.app.extensions["ami_settings"], ann)
    assert _session(page, cms) is None

    def sign_in(consent: bool, step: int = 0) -> None:
        _start_sign_in(page, cms)
        _password(page, ann.email)
        expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
        # A code is good once: the second sign-in uses the next one (within the accepted drift).
        page.get_by_label("Authentication code").fill(pyotp.TOTP(secret).at(time.time() + 30 * step))
        page.get_by_role("button", name="Verify code").click()
        if consent:
            expect(page.get_by_role("heading", name="Allow The CMS to use your AMI account?")).to_be_visible()
            page.get_by_role("button", name="Allow").click()
        expect(page.get_by_role("heading", name="CMS home")).to_be_visible()

    sign_in(consent=True)
    session = _session(page, cms)
    assert session["user"]["email"] == ann.email and session["user"]["id"] == str(ann.id)
    assert {"pwd", "otp", "mfa"} <= set(session["amr"])

    # RP-initiated logout: the app drops its session and sends the browser through AMI's end_session endpoint.
    page.goto(f"{cms.url}/logout")
    expect(page.get_by_role("heading", name="Signed out of the CMS")).to_be_visible()
    assert _session(page, cms) is None
    page.goto(f"{live.url}/account/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()  # the AMI session ended too
    [first] = cms.wait_for_logouts(1)  # and the app heard of it (ending an AMI session always notifies its apps)

    # Signed in again (the consent is remembered); then an admin signs that AMI session out.
    sign_in(consent=False, step=1)
    assert _session(page, cms)["user"]["email"] == ann.email
    admin_context = browser.new_context()
    try:
        admin = admin_context.new_page()
        watch_console(admin)
        admin.goto(f"{live.url}/signin")
        _password(admin, "root@example.com")
        admin.goto(f"{live.url}/admin/users/{ann.id}")
        admin.locator("table.sessions-table button", has_text="Sign out").first.click()
        expect(admin.get_by_text("The session was signed out.")).to_be_visible()
    finally:
        admin_context.close()
    logout = cms.wait_for_logouts(2)[1]
    assert logout["sub"] == str(ann.id) and logout["sid"] != first["sid"]
    # The app's session is gone on its next request.
    assert _session(page, cms) is None


def test_a_passkey_signs_in_to_authjs(live: LiveServer, cms: AuthJsApp, context: BrowserContext, page: Page) -> None:
    pia = _user(live, "pia@example.com")
    without_passkey_autofill(page)  # the button's path; autofill signs the passkey's owner in by itself
    with virtual_authenticator(context, page):
        page.goto(f"{live.url}/signin")
        _password(page, pia.email)
        page.goto(f"{live.url}/account/mfa")
        page.get_by_label("Passkey name").fill("Chromium virtual key")
        page.get_by_role("button", name="Add a passkey").click()
        expect(page.get_by_text("Passkey “Chromium virtual key” added.")).to_be_visible()
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

        _start_sign_in(page, cms)
        page.get_by_role("button", name="Sign in with a passkey").click()
        expect(page.get_by_role("heading", name="Allow The CMS to use your AMI account?")).to_be_visible()
        page.get_by_role("button", name="Allow").click()
        expect(page.get_by_role("heading", name="CMS home")).to_be_visible()
    session = _session(page, cms)
    assert session["user"]["email"] == pia.email
    assert "hwk" in session["amr"] or "passkey" in session["amr"]
