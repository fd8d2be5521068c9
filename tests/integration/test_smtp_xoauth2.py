"""SMTP with XOAUTH2: an SMTP account logs in with a connected OAuth account's access token.

Real peers only: the OpenID provider (node oidc-provider) issues the refresh token and refreshes it; the
SMTP server (aiosmtpd) accepts a token only when the provider's userinfo endpoint says it opens the mailbox
being logged into — what Gmail and Exchange Online do with Google's and Microsoft's tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from html import unescape
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.connectors.mailer import Mailer
from app.extensions import get_cipher, get_database
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
def xoauth2_server(smtp_tls_files: TlsFiles, op: OpenIDProvider) -> Iterator[SmtpServer]:
    with run_smtp_server(smtp_tls_files, xoauth2=opens_mailbox(op)) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, database_url: str, smtp_tls_files: TlsFiles) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        AMI_AUTH_OUTBOUND_TIMEOUT="3",
        AMI_AUTH_OUTBOUND_RETRIES="0",
        AMI_AUTH_SMTP_CA_FILE=str(smtp_tls_files.ca_file),
    )


def _smtp_account(app: Flask, db: Session, server: SmtpServer, oauth_account_id: int, username: str = MAILBOX) -> int:
    settings = app.extensions["ami_settings"]
    values = {"host": server.host, "port": server.port}
    cfg = make_config(db, get_cipher(app), settings, "smtp", values, name=f"SMTP for account {oauth_account_id}")
    values = {
        "from_address": "mailer@example.com",
        "username": username,
        "auth_mechanism": "XOAUTH2",
        "oauth_account_id": oauth_account_id,
    }
    return make_account(db, cfg, values, label="Mail via OAuth").id


def _admin(client: FlaskClient, make_user: UserFactory) -> int:
    admin = make_user(ADMIN, role="admin")
    assert sign_in(client, ADMIN).status_code == 302
    return admin.id


def test_xoauth2_logs_in_with_the_refreshed_token_and_sends_mail(
    app: Flask,
    client: FlaskClient,
    db: Session,
    make_user: UserFactory,
    op: OpenIDProvider,
    xoauth2_server: SmtpServer,
) -> None:
    admin_id = _admin(client, make_user)
    oauth_id = mailbox_account(app, db, op, admin_id)
    smtp_id = _smtp_account(app, db, xoauth2_server, oauth_id)
    op.reset_counts()

    # Test connection: the expired token is refreshed at the OP first, then the server accepts it.
    _status, panel = post_dialog(client, smtp_id, {}, test=True, htmx=True)
    assert result_code(panel) == "ok", panel
    assert f"XOAUTH2 as {MAILBOX}" in panel
    assert xoauth2_server.logins == [f"XOAUTH2:{MAILBOX}"]
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
    message = xoauth2_server.wait_for("someone@example.com")
    assert str(message["Subject"]) == "Hello" and str(message["From"]) == "mailer@example.com"
    # The fresh token is reused, not refreshed again; every hand-out is audited, without the token.
    assert op.grant_count("refresh_token") == 1
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "account.token.used")).all()
    assert len(events) >= 3 and {e.target for e in events} == {f"connected_account:{oauth_id}"}
    assert all(stored.access_token not in str(e.details) for e in events)


def test_a_token_for_another_mailbox_is_refused_on_the_oauth_account_field(
    app: Flask,
    client: FlaskClient,
    db: Session,
    make_user: UserFactory,
    op: OpenIDProvider,
    xoauth2_server: SmtpServer,
) -> None:
    admin_id = _admin(client, make_user)
    oauth_id = mailbox_account(app, db, op, admin_id, expired=True)
    smtp_id = _smtp_account(app, db, xoauth2_server, oauth_id, username="bob@example.test")
    _status, panel = post_dialog(client, smtp_id, {}, test=True, htmx=True)
    assert result_code(panel) == "invalid_credentials", panel
    assert list(blamed_fields(panel)) == ["oauth_account_id"]
    assert xoauth2_server.logins == []


def test_a_missing_or_disconnected_oauth_account_is_named_on_its_field(
    app: Flask,
    client: FlaskClient,
    db: Session,
    make_user: UserFactory,
    op: OpenIDProvider,
    xoauth2_server: SmtpServer,
) -> None:
    admin_id = _admin(client, make_user)
    missing = _smtp_account(app, db, xoauth2_server, 424242)
    _status, panel = post_dialog(client, missing, {}, test=True, htmx=True)
    assert result_code(panel) == "invalid_config"
    assert "no admin's connected Google, Microsoft or OpenID account with id 424242" in unescape(panel)
    assert list(blamed_fields(panel)) == ["oauth_account_id"]

    oauth_id = mailbox_account(app, db, op, admin_id, expired=False)
    reload(app, db, oauth_id).status = "consent_required"
    db.commit()
    smtp_id = _smtp_account(app, db, xoauth2_server, oauth_id)
    _status, panel = post_dialog(client, smtp_id, {}, test=True, htmx=True)
    assert result_code(panel) == "consent_required"
    assert "needs to be reconnected" in panel and list(blamed_fields(panel)) == ["oauth_account_id"]
    # A member's own connected account never sends the app's mail, even with a valid token.
    member = make_user("member@example.com")
    members = mailbox_account(app, db, op, member.id, expired=False, config_name="Corp ID (members)")
    smtp_id = _smtp_account(app, db, xoauth2_server, members)
    _status, panel = post_dialog(client, smtp_id, {}, test=True, htmx=True)
    assert result_code(panel) == "invalid_config" and list(blamed_fields(panel)) == ["oauth_account_id"]
    assert xoauth2_server.logins == []


def test_the_account_form_offers_the_admins_oauth_accounts(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, op: OpenIDProvider
) -> None:
    admin_id = _admin(client, make_user)
    oauth_id = mailbox_account(app, db, op, admin_id, expired=False)
    member = make_user("member@example.com")
    hidden = mailbox_account(app, db, op, member.id, expired=False, config_name="Corp ID (members)")
    settings = app.extensions["ami_settings"]
    cfg = make_config(db, get_cipher(app), settings, "smtp", {"host": "127.0.0.1", "port": 2525})
    page = client.get(f"/admin/accounts/new/{cfg.id}").get_data(as_text=True)
    options = re.search(r'<datalist id="oauth_account_id-options">(.*?)</datalist>', page, re.S)
    assert options is not None and 'list="oauth_account_id-options"' in page
    assert f'value="{oauth_id}"' in options.group(1) and f"#{oauth_id} {MAILBOX} · Corp ID (active)" in options.group(1)
    assert f'value="{hidden}"' not in options.group(1)


def test_a_refresh_the_provider_refuses_is_reported_and_the_account_marked(
    app: Flask,
    client: FlaskClient,
    db: Session,
    make_user: UserFactory,
    op: OpenIDProvider,
    xoauth2_server: SmtpServer,
) -> None:
    admin_id = _admin(client, make_user)
    oauth_id = mailbox_account(app, db, op, admin_id)
    # Another client's refresh token: the OP answers invalid_grant.
    save_tokens(
        db,
        get_cipher(app),
        oauth_id,
        TokenSet("stale", expires_at=utcnow() - timedelta(minutes=1), refresh_token="not-a-token-the-op-issued"),
    )
    db.commit()
    smtp_id = _smtp_account(app, db, xoauth2_server, oauth_id)
    _status, panel = post_dialog(client, smtp_id, {}, test=True, htmx=True)
    assert result_code(panel) == "consent_required", panel
    assert list(blamed_fields(panel)) == ["oauth_account_id"]
    assert reload(app, db, oauth_id).status == "consent_required"
    assert xoauth2_server.logins == []
