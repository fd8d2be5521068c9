"""An end user connects their own Anthropic key in real Chromium: the CMS server asks AMI Auth for a connect
link for that user (service token, ``POST /api/account-manager/connect-links``) and sends the browser there;
signed out, the page offers sign-in, which comes back to it; the member types the key (verified against the
Anthropic stand-in), saves, and lands on the CMS page with ``status=saved&account=<id>``. The account is the
member's; another user's session cannot open the link; a webhook receiver verifying signatures hears of it.

The same for an OpenID Connect account: the link's page sends the member through the real OP's own login and
consent pages (tests/peers/op.mjs) and back to the CMS; the OP starts inside the test, once the live server's
port (and so the callback URL) is known."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api import tokens
from app.audit import AuditContext
from app.auth import users
from app.extensions import get_cipher, get_database, get_settings
from app.jobs.webhooks import deliver_due, delivery_client
from app.models import ConnectedAccount
from app.services import webhooks
from app.settings import Settings
from tests.conftest import PASSWORD, make_settings
from tests.e2e.conftest import assert_no_console_errors, press_test_connection
from tests.support.accounts import make_config
from tests.support.live import LiveServer, free_port
from tests.support.oauth_app import create_config, generic_values
from tests.support.op import OPClient, running_op
from tests.support.vendors.anthropic import Anthropic
from tests.support.webhook_receiver import WebhookReceiver

pytest_plugins = ("tests.support.vendor_fixtures",)

MEMBER = "ann@example.com"
OTHER = "bob@example.com"


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
        AMI_AUTH_OUTBOUND_RETRIES="0",
    )


@pytest.fixture
def cms_page(cms_port: int) -> Iterator[list[str]]:
    """The CMS page the user comes back to: answers 200 and remembers the paths it was asked for."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            seen.append(self.path)
            body = b"<!doctype html><html lang='en'><title>CMS</title><h1>Back in the CMS</h1></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", cms_port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield seen
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


def _prepare(live: LiveServer, receiver: WebhookReceiver) -> tuple[int, int, str]:
    """Two members, an Anthropic config open to end users, the CMS's token, a webhook endpoint."""
    app = live.app
    with Session(get_database(app).engine, expire_on_commit=False) as db:
        settings = get_settings(app)
        member = users.create_user(db, settings, email=MEMBER, password=PASSWORD, role="member", verified=True)
        users.create_user(db, settings, email=OTHER, password=PASSWORD, role="member", verified=True)
        cfg = make_config(db, get_cipher(app), settings, "anthropic", {"end_users_connect": True}, name="Claude")
        ctx = AuditContext(actor="t")
        raw = tokens.create_token(db, ctx, name="CMS", scopes=["accounts:write"], created_by=None).raw
        made = webhooks.create_endpoint(
            db, settings, get_cipher(app), ctx, url=receiver.url, events=["account.connected"]
        )
        receiver.secrets = [made.value]
        db.commit()
        return member.id, cfg.id, raw


def _connect_link(live: LiveServer, token: str, config_id: int, user_id: int, return_to: str) -> str:
    """What the CMS server does: ask for the link with its service token (the browser never sees the token)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{live.port}", trust_env=False, timeout=10) as client:
        answer = client.post(
            "/api/account-manager/connect-links",
            json={"provider_config_id": config_id, "user_id": user_id, "return_to": return_to},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 201, answer.text
    url: str = answer.json()["url"]
    return url


def _sign_in(page: Page, email: str) -> None:
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()


def test_a_member_connects_their_own_key_in_the_secure_page_and_returns_to_the_cms(
    page: Page,
    live: LiveServer,
    cms_port: int,
    cms_page: list[str],
    receiver: WebhookReceiver,
    anthropic_standin: Anthropic,
) -> None:
    member_id, config_id, token = _prepare(live, receiver)
    return_to = f"http://localhost:{cms_port}/me/keys"
    url = _connect_link(live, token, config_id, member_id, return_to)

    # Another member cannot use it.
    page.goto(f"{live.url}/signin")
    _sign_in(page, OTHER)
    page.wait_for_url(re.compile(r"^(?!.*signin).*$"))
    page.goto(url)
    expect(page.get_by_role("heading", name="This link was made for another user.")).to_be_visible()
    page.context.clear_cookies()

    # Signed out, the page offers sign-in and comes back to itself.
    page.goto(url)
    expect(page.get_by_role("heading", name="Sign in to AMI Auth to continue")).to_be_visible()
    expect(page.get_by_text("Sign in with your own AMI Auth account")).to_be_visible()
    page.get_by_role("link", name="Sign in and open the dialog").click()
    _sign_in(page, MEMBER)
    expect(page.get_by_role("heading", name="Connect your account")).to_be_visible()
    key = anthropic_standin.add_key()
    page.locator("#label").fill("My Claude")
    page.locator("#api_key").fill(key)
    page.locator("summary", has_text="Advanced").click()
    page.locator("#base_url").fill(anthropic_standin.url)
    press_test_connection(page)
    expect(page.locator('.test-result[data-code="ok"]')).to_be_visible()
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(re.compile(rf"^http://localhost:{cms_port}/me/keys\?status=saved&account=\d+$"))
    expect(page.get_by_role("heading", name="Back in the CMS")).to_be_visible()
    account_id = int(page.url.rsplit("=", 1)[1])
    assert key not in page.content()
    assert_no_console_errors(page)

    with Session(get_database(live.app).engine) as db:
        account = db.scalars(select(ConnectedAccount).where(ConnectedAccount.id == account_id)).one()
        assert (account.user_id, account.label, account.status) == (member_id, "My Claude", "active")
        client = delivery_client(get_settings(live.app))
        try:
            deliver_due(db, client, get_cipher(live.app))
        finally:
            client.close()
    connected = [r.body for r in receiver.verified if r.body["type"] == "account.connected"]
    assert [c["data"]["account_id"] for c in connected] == [account_id]
    assert connected[0]["data"]["user_id"] == member_id


def test_a_member_connects_their_own_oauth_account_through_the_providers_consent_and_returns_to_the_cms(
    page: Page,
    live: LiveServer,
    cms_port: int,
    cms_page: list[str],
    receiver: WebhookReceiver,
) -> None:
    app = live.app
    client = OPClient("ami-auth", "op-secret", redirect_uri=f"{live.url}/oauth/1/callback")
    with running_op(clients=[client]) as op:
        values = generic_values(op.issuer, client, scopes="openid email profile", end_users_connect=True)
        config_id = create_config(app, "generic_oidc", "Corp ID", values)
        assert config_id == 1
        with Session(get_database(app).engine, expire_on_commit=False) as db:
            settings = get_settings(app)
            member = users.create_user(db, settings, email=MEMBER, password=PASSWORD, role="member", verified=True)
            ctx = AuditContext(actor="t")
            token = tokens.create_token(db, ctx, name="CMS", scopes=["accounts:write"], created_by=None).raw
            made = webhooks.create_endpoint(
                db, settings, get_cipher(app), ctx, url=receiver.url, events=["account.connected"]
            )
            receiver.secrets = [made.value]
            db.commit()
        return_to = f"http://localhost:{cms_port}/me/connections"
        url = _connect_link(live, token, config_id, member.id, return_to)

        page.goto(url)
        page.get_by_role("link", name="Sign in and open the dialog").click()
        _sign_in(page, MEMBER)
        expect(page.get_by_role("heading", name="Connect your account")).to_be_visible()
        expect(page.get_by_text("You: the account will be yours.")).to_be_visible()
        page.get_by_role("link", name="Continue to OpenID Connect (any provider)").click()
        # The OP's own pages: sign in, then consent.
        expect(page).to_have_url(re.compile(re.escape(op.issuer) + "/interaction/"))
        page.locator('input[name="login"]').fill("alice")
        page.locator('input[name="password"]').fill("any")
        page.locator('button[type="submit"]').click()
        page.locator('button[type="submit"]', has_text="Continue").click()
        page.wait_for_url(re.compile(rf"^http://localhost:{cms_port}/me/connections\?status=saved&account=\d+$"))
        expect(page.get_by_role("heading", name="Back in the CMS")).to_be_visible()
        account_id = int(page.url.rsplit("=", 1)[1])
        assert_no_console_errors(page)

    with Session(get_database(app).engine) as db:
        account = db.scalars(select(ConnectedAccount).where(ConnectedAccount.id == account_id)).one()
        assert (account.user_id, account.subject, account.status) == (member.id, "alice", "active")
        delivery = delivery_client(get_settings(app))
        try:
            deliver_due(db, delivery, get_cipher(app))
        finally:
            delivery.close()
    connected = [r.body for r in receiver.verified if r.body["type"] == "account.connected"]
    assert [(c["data"]["account_id"], c["data"]["user_id"]) for c in connected] == [(account_id, member.id)]
    # The link is spent: opening it again shows the error page, not the CMS.
    page.goto(url)
    expect(page.get_by_role("heading", name="This dialog link has already been used.")).to_be_visible()
