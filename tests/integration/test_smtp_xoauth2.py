"""SMTP with XOAUTH2: an SMTP account logs in with a connected OAuth account's access token.

Real peers only: the OpenID provider (node oidc-provider) issues the refresh token and refreshes it; the
SMTP server (aiosmtpd) accepts a token only when the provider's userinfo endpoint says it opens the mailbox
being logged into — what Gmail and Exchange Online do with Google's and Microsoft's tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.extensions import get_cipher, get_database
from app.mailer import Mailer
from app.models import AuditEvent, utcnow
from app.oauth.connections import load_tokens, save_tokens
from app.oauth.tokens import TokenSet
from app.settings import Settings
from tests.conftest import UserFactory, make_settings, sign_in
from tests.support.accounts import blamed_fields, csrf_of, make_account, make_config, post_dialog, reload, result_code
from tests.support.op import OPClient, OpenIDProvider, running_op
from tests.support.smtp import SmtpServer, TlsFiles, run_smtp_server
from tests.support.xoauth2 import MAILBOX, mailbox_account, opens_mailbox

ADMIN = "admin@example.com"


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    with running_op(clients=[OPClient("ami-auth", "op-secret")], rotateRefreshToken=True) as provider:
        yield provider


@pytest.fixture
def settings(tmp_path: Path, database_url: str, smtp_tls_files: TlsFiles) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        AMI_AUTH_OUTBOUND_TIMEOUT="3",
        AMI_AUTH_OUTBOUND_RETRIES="0",
        AMI_AUTH_SMTP_CA_FILE=str(smtp_tls_files.ca_file),
    )


@dataclass
class World:
    """The app with a signed-in admin, the OP, and an SMTP server that takes XOAUTH2 tokens the OP vouches for."""

    app: Flask
    client: FlaskClient
    db: Session
    op: OpenIDProvider
    server: SmtpServer
    make_user: UserFactory
    admin_id: int

    def mailbox(self, user_id: int | None = None, **options: Any) -> int:
        """A connected OIDC account (the admin's unless ``user_id``) holding a real refresh token for alice."""
        return mailbox_account(self.app, self.db, self.op, self.admin_id if user_id is None else user_id, **options)

    def smtp_account(self, oauth_account_id: int, username: str = MAILBOX) -> int:
        settings = self.app.extensions["ami_settings"]
        server = {"host": self.server.host, "port": self.server.port}
        name = f"SMTP for account {oauth_account_id}"
        cfg = make_config(self.db, get_cipher(self.app), settings, "smtp", server, name=name)
        values = {
            "from_address": "mailer@example.com",
            "username": username,
            "auth_mechanism": "XOAUTH2",
            "oauth_account_id": oauth_account_id,
        }
        return make_account(self.db, cfg, values, label="Mail via OAuth").id

    def test_connection(self, smtp_id: int) -> str:
        """Press Test connection in the account's secure dialog; the result panel's HTML."""
        _status, panel = post_dialog(self.client, smtp_id, {}, test=True, htmx=True)
        return panel


@pytest.fixture
def world(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, op: OpenIDProvider, smtp_tls_files: TlsFiles
) -> Iterator[World]:
    admin = make_user(ADMIN, role="admin")
    assert sign_in(client, ADMIN).status_code == 302
    with run_smtp_server(smtp_tls_files, xoauth2=opens_mailbox(op)) as server:
        yield World(app, client, db, op, server, make_user, admin.id)


def test_xoauth2_logs_in_with_the_refreshed_token_and_sends_mail(world: World) -> None:
    app, client, db, op, server = world.app, world.client, world.db, world.op, world.server
    oauth_id = world.mailbox()
    smtp_id = world.smtp_account(oauth_id)
    op.reset_counts()

    # Test connection: the expired token is refreshed at the OP first, then the server accepts it.
    panel = world.test_connection(smtp_id)
    assert result_code(panel) == "ok", panel
    assert f"XOAUTH2 as {MAILBOX}" in panel
    assert server.logins == [f"XOAUTH2:{MAILBOX}"]
    assert op.grant_count("refresh_token") == 1
    stored = load_tokens(db, get_cipher(app), oauth_id)
    assert stored is not None and stored.access_token != "stale"
    assert stored.refresh_token is not None
    assert stored.access_token not in panel and stored.refresh_token not in panel
    assert stored.expires_at is not None and stored.expires_at > utcnow() + timedelta(minutes=2)

    # Save (no secret to type), mark it the system mailer, and the app's own mail goes out through it.
    _status, saved = post_dialog(client, smtp_id, {})
    assert reload(app, db, smtp_id).status == "active", saved
    page = client.get(f"/admin/accounts/{smtp_id}").get_data(as_text=True)
    on = client.post(f"/admin/accounts/{smtp_id}/system-mailer", data={"csrf_token": csrf_of(page), "on": "1"})
    assert on.status_code == 302
    with Session(get_database(app).engine) as mailer_db:
        Mailer(mailer_db, app.extensions["ami_settings"]).send("someone@example.com", "Hello", "via XOAUTH2")
    message = server.wait_for("someone@example.com")
    assert str(message["Subject"]) == "Hello" and str(message["From"]) == "mailer@example.com"
    # The fresh token is reused, not refreshed again; every hand-out is audited, without the token.
    assert op.grant_count("refresh_token") == 1
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "account.token.used")).all()
    assert len(events) >= 3 and {e.target for e in events} == {f"connected_account:{oauth_id}"}
    assert all(stored.access_token not in str(e.details) for e in events)


def test_a_token_for_another_mailbox_is_refused_on_the_oauth_account_field(world: World) -> None:
    smtp_id = world.smtp_account(world.mailbox(expired=True), username="bob@example.test")
    panel = world.test_connection(smtp_id)
    assert result_code(panel) == "invalid_credentials", panel
    assert list(blamed_fields(panel)) == ["oauth_account_id"]
    assert world.server.logins == []


def test_a_missing_or_disconnected_oauth_account_is_named_on_its_field(world: World) -> None:
    panel = world.test_connection(world.smtp_account(424242))
    assert result_code(panel) == "invalid_config"
    assert "no admin's connected Google, Microsoft or OpenID account with id 424242" in unescape(panel)
    assert list(blamed_fields(panel)) == ["oauth_account_id"]

    oauth_id = world.mailbox(expired=False)
    reload(world.app, world.db, oauth_id).status = "consent_required"
    world.db.commit()
    panel = world.test_connection(world.smtp_account(oauth_id))
    assert result_code(panel) == "consent_required"
    assert "needs to be reconnected" in panel and list(blamed_fields(panel)) == ["oauth_account_id"]
    # A member's own connected account never sends the app's mail, even with a valid token.
    member = world.make_user("member@example.com")
    members = world.mailbox(member.id, expired=False, config_name="Corp ID (members)")
    panel = world.test_connection(world.smtp_account(members))
    assert result_code(panel) == "invalid_config" and list(blamed_fields(panel)) == ["oauth_account_id"]
    assert world.server.logins == []


def test_the_account_form_offers_the_admins_oauth_accounts(world: World) -> None:
    oauth_id = world.mailbox(expired=False)
    member = world.make_user("member@example.com")
    hidden = world.mailbox(member.id, expired=False, config_name="Corp ID (members)")
    settings = world.app.extensions["ami_settings"]
    cfg = make_config(world.db, get_cipher(world.app), settings, "smtp", {"host": "127.0.0.1", "port": 2525})
    page = world.client.get(f"/admin/accounts/new/{cfg.id}").get_data(as_text=True)
    options = re.search(r'<datalist id="oauth_account_id-options">(.*?)</datalist>', page, re.S)
    assert options is not None and 'list="oauth_account_id-options"' in page
    assert f'value="{oauth_id}"' in options.group(1) and f"#{oauth_id} {MAILBOX} · Corp ID (active)" in options.group(1)
    assert f'value="{hidden}"' not in options.group(1)


def test_a_refresh_the_provider_refuses_is_reported_and_the_account_marked(world: World) -> None:
    oauth_id = world.mailbox()
    # A refresh token the OP never issued: it answers invalid_grant.
    expired = TokenSet("stale", expires_at=utcnow() - timedelta(minutes=1), refresh_token="not-a-token-the-op-issued")
    save_tokens(world.db, get_cipher(world.app), oauth_id, expired)
    world.db.commit()
    panel = world.test_connection(world.smtp_account(oauth_id))
    assert result_code(panel) == "consent_required", panel
    assert list(blamed_fields(panel)) == ["oauth_account_id"]
    assert reload(world.app, world.db, oauth_id).status == "consent_required"
    assert world.server.logins == []
