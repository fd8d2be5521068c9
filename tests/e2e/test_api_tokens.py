"""In Chromium: an admin creates a service token (shown once), the CMS uses it, the admin revokes it;
a page on the CMS origin reads the session through CORS with credentials, another origin cannot."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from playwright.sync_api import Page, expect

from app.auth import users
from app.extensions import get_database
from app.settings import Settings
from tests.conftest import PASSWORD, make_settings
from tests.e2e.conftest import assert_no_console_errors
from tests.support.live import LiveServer, free_port, serve


@pytest.fixture
def cms_port() -> int:
    return free_port()


@pytest.fixture
def live_settings(tmp_path: Path, sqlite_url: str, live_port: int, cms_port: int) -> Settings:
    return make_settings(
        tmp_path,
        sqlite_url,
        AMI_AUTH_BASE_URL=f"http://localhost:{live_port}",
        AMI_AUTH_CMS_ORIGINS=f"http://localhost:{cms_port}",
    )


@pytest.fixture
def cms(cms_port: int) -> Iterator[LiveServer]:
    """A stand-in for the CMS: a blank page on its own origin that scripts run from."""
    site = Flask("cms")

    @site.get("/")
    def index() -> str:
        return "<!doctype html><title>CMS</title><h1>CMS</h1>"

    with serve(site, cms_port) as server:
        yield server


FETCH = """async ([url, init]) => {
  try {
    const response = await fetch(url, init);
    return {status: response.status, body: await response.json()};
  } catch (error) {
    return {blocked: String(error)};
  }
}"""


def _admin(app: Flask) -> None:
    with app.app_context():
        db = get_database(app).session()
        users.create_user(
            db, app.extensions["ami_settings"], email="root@example.com", password=PASSWORD, role="admin", verified=True
        )
        db.commit()


def _sign_in(page: Page, live: LiveServer) -> None:
    page.goto(live.url + "/signin")
    page.get_by_label("Email").fill("root@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def test_token_lifecycle_in_the_console(live: LiveServer, page: Page) -> None:
    _admin(live.app)
    _sign_in(page, live)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Service tokens").click()
    expect(page.get_by_role("heading", name="Service tokens")).to_be_visible()

    page.get_by_label("Name").fill("CMS production")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#scopes-error")).to_contain_text("Choose at least one scope")
    expect(page.get_by_label("Name")).to_have_value("CMS production")

    page.get_by_role("checkbox", name=re.compile(r"\bsessions:read\b")).check()
    page.get_by_role("checkbox", name=re.compile(r"\bcompliance:read\b")).check()
    page.get_by_label("Expires after (days)").fill("30")
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_role("heading", name="Token created")).to_be_visible()
    field = page.get_by_label("Token for “CMS production”")
    raw = field.input_value()
    assert re.fullmatch(r"amis_[A-Za-z0-9_-]{43}", raw)
    assert field.get_attribute("readonly") is not None
    assert_no_console_errors(page)

    with httpx.Client(base_url=live.url, timeout=10) as http:
        ok = http.get("/api/compliance/report", headers={"Authorization": f"Bearer {raw}"})
        assert ok.status_code == 200 and ok.json()["audit_chain"]["ok"] is True

        page.get_by_role("link", name="Done").click()
        row = page.locator("tr", has_text="CMS production")
        expect(row).to_contain_text(raw[:11] + "…")
        expect(row.locator(".badge")).to_have_text("active")
        assert raw not in page.content()

        row.get_by_role("button", name="Revoke CMS production").click()
        expect(page.get_by_role("status")).to_contain_text("Revoked the token")
        expect(page.locator("tr", has_text="CMS production").locator(".badge")).to_have_text("revoked")
        refused = http.get("/api/compliance/report", headers={"Authorization": f"Bearer {raw}"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "not_authenticated"

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Compliance").click()
    expect(page.get_by_role("heading", name="Compliance", exact=True)).to_be_visible()
    expect(page.locator("#tokens")).to_contain_text("Service tokens unused for 90 days")
    expect(page.locator("#audit")).to_contain_text("Verified")
    assert_no_console_errors(page)


def test_cms_origin_reads_the_session_with_credentials_other_origins_cannot(
    live: LiveServer, cms: LiveServer, page: Page
) -> None:
    _admin(live.app)
    _sign_in(page, live)

    page.goto(cms.url + "/")
    session: dict[str, Any] = page.evaluate(FETCH, [live.url + "/api/auth/session", {"credentials": "include"}])
    assert session["status"] == 200, session
    assert session["body"]["user"]["email"] == "root@example.com"
    csrf = session["body"]["csrf_token"]

    listing = page.evaluate(FETCH, [live.url + "/api/auth/sessions", {"credentials": "include"}])
    assert listing["status"] == 200 and len(listing["body"]["sessions"]) == 1
    own = listing["body"]["sessions"][0]["id"]
    # A state-changing call needs the CSRF header (and passes the preflight for it).
    forged = page.evaluate(
        FETCH, [f"{live.url}/api/auth/sessions/{own}", {"method": "DELETE", "credentials": "include"}]
    )
    assert forged["status"] == 403 and "CSRF" in forged["body"]["error"]["message"]
    revoked = page.evaluate(
        """async ([url, csrf]) => {
          const r = await fetch(url, {method: "DELETE", credentials: "include", headers: {"X-CSRFToken": csrf}});
          return r.status;
        }""",
        [f"{live.url}/api/auth/sessions/{own}", csrf],
    )
    assert revoked == 204
    after = page.evaluate(FETCH, [live.url + "/api/auth/session", {"credentials": "include"}])
    assert after["status"] == 401 and after["body"]["error"]["code"] == "not_authenticated"

    # The same page on an origin outside AMI_AUTH_CMS_ORIGINS: the browser refuses to hand over the response.
    page.goto(f"http://127.0.0.1:{cms.port}/")
    other = page.evaluate(FETCH, [live.url + "/api/auth/session", {"credentials": "include"}])
    assert "blocked" in other, other
    assert any("CORS" in e for e in getattr(page, "console_errors", [])), "expected the browser's CORS refusal"
