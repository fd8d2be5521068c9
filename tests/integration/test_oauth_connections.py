"""Connected accounts against the real OP: connect (tokens encrypted on the account), see the job refresh an
expired access token, "Refresh now", a revoked grant turning into consent_required (one mail), a provider
outage backing off with the old tokens kept, refresh-token rotation on every use, and disconnect."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import AppError
from app.extensions import get_cipher, get_database
from app.jobs.refresh import RefreshReport, run_refresh
from app.models import AuditEvent, ConnectedAccount, MailOutbox, StoredSecret, utcnow
from app.net import OutboundClient
from app.oauth import ProviderMetadata, TokenSet, fetch_userinfo, refresh, revoke
from app.oauth.connections import load_tokens
from app.oauth.runtime import runtime
from tests.conftest import UserFactory, sign_in
from tests.support.oauth_app import create_config, follow_callback, generic_values, location, page_csrf
from tests.support.op import OPClient, OpenIDProvider, op_login, running_op
from tests.support.revocation import rfc7009

BASE = "http://127.0.0.1:5000"
EMAIL = "member@example.com"


def _client(secret: str = "op-secret") -> OPClient:
    return OPClient("ami-auth", secret, extra={"redirect_uris": [f"{BASE}/oauth/{i}/callback" for i in range(1, 4)]})


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    # Access tokens live one second, so a test can watch one expire; refresh tokens are not rotated.
    with running_op(clients=[_client()], ttl={"AccessToken": 1}, omitUnchangedRefreshToken=True) as provider:
        yield provider


@pytest.fixture(scope="module")
def rotating_op() -> Iterator[OpenIDProvider]:
    """The second instance: a new refresh token on every use (and the old one dies, with its grant on reuse)."""
    with running_op(clients=[_client()], rotateRefreshToken=True, signing="ES256") as provider:
        yield provider


@pytest.fixture(scope="module")
def outbound() -> Iterator[OutboundClient]:
    with OutboundClient(allow=("127.0.0.1",), retries=0) as client:
        yield client


def _connect(app: Flask, client: FlaskClient, op: OpenIDProvider, make_user: UserFactory) -> int:
    make_user(EMAIL)
    config_id = create_config(
        app, "generic_oidc", "Corp ID", generic_values(op.issuer, op.client, scopes="openid email profile")
    )
    sign_in(client, EMAIL)
    page = client.get("/account/connections/").get_data(as_text=True)
    assert "Connect Corp ID" in page
    start = client.get(f"/account/connections/connect/{config_id}")
    url = location(start)
    # A refresh token needs offline_access *and* prompt=consent (TESTING.md §1).
    assert "offline_access" in url and "prompt=consent" in url
    done = follow_callback(client, op_login(url, "alice"))
    assert location(done).startswith("/account/connections/#account-")
    return int(location(done).rsplit("-", 1)[1])


def _account(db: Session, account_id: int) -> ConnectedAccount:
    db.expire_all()
    account = db.get(ConnectedAccount, account_id)
    assert account is not None
    return account


def _tokens(app: Flask, db: Session, account_id: int) -> TokenSet:
    tokens = load_tokens(db, get_cipher(app), account_id)
    assert tokens is not None
    return tokens


def _run(app: Flask, margin: timedelta = timedelta(0)) -> RefreshReport:
    return run_refresh(runtime(app), get_database(app).engine, margin=margin, workers=2)


def _metadata(op: OpenIDProvider, outbound: OutboundClient) -> ProviderMetadata:
    from app.oauth import discover

    return discover(outbound, op.issuer)


def test_connect_stores_the_token_set_encrypted(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    account_id = _connect(app, client, op, make_user)
    account = _account(db, account_id)
    assert (account.label, account.subject, account.status) == ("alice@example.test", "alice", "active")
    assert {"openid", "offline_access"} <= set(account.scopes)
    assert account.provider_data["userinfo"]["email"] == "alice@example.test"
    tokens = _tokens(app, db, account_id)
    assert tokens.refresh_token and tokens.expires_at == account.expires_at
    stored = db.scalars(select(StoredSecret).where(StoredSecret.owner_type == "connected_account")).one()
    assert (
        tokens.refresh_token.encode() not in stored.ciphertext and tokens.access_token.encode() not in stored.ciphertext
    )
    page = client.get("/account/connections/").get_data(as_text=True)
    assert "alice@example.test" in page and "refreshed automatically" in page and "Refresh now" in page
    assert db.scalars(select(AuditEvent.action).where(AuditEvent.action == "connected_account.connect")).one()


def test_the_job_refreshes_an_expired_access_token(
    app: Flask,
    client: FlaskClient,
    db: Session,
    op: OpenIDProvider,
    outbound: OutboundClient,
    make_user: UserFactory,
) -> None:
    account_id = _connect(app, client, op, make_user)
    before = _tokens(app, db, account_id)
    assert before.expires_at is not None
    metadata = _metadata(op, outbound)
    while utcnow() <= before.expires_at:  # the OP's access tokens live one second
        time.sleep(0.1)
    page = client.get("/account/connections/").get_data(as_text=True)
    assert "expired at" in page

    op.reset_counts()
    report = _run(app)
    assert report.refreshed == 1
    assert op.grant_count("refresh_token") == 1
    after = _tokens(app, db, account_id)
    assert after.access_token != before.access_token
    assert after.refresh_token == before.refresh_token  # omitted from the response: the old one is kept
    assert fetch_userinfo(outbound, metadata, after.access_token)["sub"] == "alice"
    account = _account(db, account_id)
    assert account.expires_at == after.expires_at and account.lease_owner is None
    assert "valid until" in client.get("/account/connections/").get_data(as_text=True)


def test_refresh_now_from_the_console(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    account_id = _connect(app, client, op, make_user)
    before = _tokens(app, db, account_id)
    op.reset_counts()
    page = client.get("/account/connections/").get_data(as_text=True)
    done = client.post(f"/account/connections/{account_id}/refresh", data={"csrf_token": page_csrf(page)})
    assert location(done).endswith(f"#account-{account_id}")
    assert op.grant_count("refresh_token") == 1
    assert "the new access token is valid until" in client.get("/account/connections/").get_data(as_text=True)
    assert _tokens(app, db, account_id).access_token != before.access_token


def test_a_revoked_grant_becomes_consent_required_and_the_owner_is_told_once(
    app: Flask,
    client: FlaskClient,
    db: Session,
    op: OpenIDProvider,
    outbound: OutboundClient,
    make_user: UserFactory,
) -> None:
    account_id = _connect(app, client, op, make_user)
    tokens = _tokens(app, db, account_id)
    assert tokens.refresh_token is not None
    # The user removes the app's access at the provider.
    revoke(outbound, rfc7009(_metadata(op, outbound), op.client.credentials, tokens.refresh_token, "refresh_token"))

    report = _run(app, margin=timedelta(hours=2))
    assert (report.consent_required, report.refreshed) == (1, 0)
    account = _account(db, account_id)
    assert (account.status, account.last_error_code, account.error_attempts) == (
        "consent_required",
        "consent_required",
        1,
    )
    assert _tokens(app, db, account_id).refresh_token == tokens.refresh_token  # kept for the record, never lost
    page = client.get("/account/connections/").get_data(as_text=True)
    assert "reconnect needed" in page and "Refreshing stopped: reconnect this account." in page
    assert "<code>consent_required</code>" in page

    # Further runs do not touch it again, and do not mail again.
    op.reset_counts()
    assert _run(app, margin=timedelta(hours=2)).total == 0
    assert op.grant_count("refresh_token", 400) == 0
    [mail] = db.scalars(select(MailOutbox).where(MailOutbox.to == EMAIL)).all()
    assert mail.subject == "Reconnect your Corp ID account"
    assert f"/account/connections/#account-{account_id}" in mail.text
    assert db.scalars(select(AuditEvent).where(AuditEvent.action == "connected_account.consent_required")).one()

    # Reconnecting makes it active again.
    start = client.get(f"/account/connections/{account_id}/reconnect")
    follow_callback(client, op_login(location(start), "alice"))
    account = _account(db, account_id)
    assert (account.status, account.last_error_code, account.error_attempts) == ("active", None, 0)


def test_a_provider_outage_backs_off_and_keeps_the_tokens(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    with running_op(clients=[_client()]) as op:
        account_id = _connect(app, client, op, make_user)
        before = _tokens(app, db, account_id)
        op.stop()
        report = _run(app, margin=timedelta(hours=2))
        assert report.retry_later == 1 and report.errors == {"provider_unreachable": 1}
        account = _account(db, account_id)
        assert (account.status, account.last_error_code, account.error_attempts) == (
            "active",
            "provider_unreachable",
            1,
        )
        assert account.next_attempt_at is not None and account.next_attempt_at > utcnow() + timedelta(seconds=20)
        assert _tokens(app, db, account_id).to_dict() == before.to_dict()
        # Backing off: the next run leaves it alone.
        assert _run(app, margin=timedelta(hours=2)).total == 0
        page = client.get("/account/connections/").get_data(as_text=True)
        assert "The last refresh failed; it is retried automatically." in page and "1 attempt" in page


def test_rotating_refresh_tokens_are_replaced_on_every_use(
    app: Flask,
    client: FlaskClient,
    db: Session,
    rotating_op: OpenIDProvider,
    outbound: OutboundClient,
    make_user: UserFactory,
) -> None:
    op = rotating_op
    account_id = _connect(app, client, op, make_user)
    seen = [_tokens(app, db, account_id).refresh_token]
    op.reset_counts()
    for _ in range(2):
        assert _run(app, margin=timedelta(days=1)).refreshed == 1
        seen.append(_tokens(app, db, account_id).refresh_token)
    assert len(set(seen)) == 3 and op.grant_count("refresh_token") == 2
    # The stored (newest) token works; the ES256 ID token of each refresh was checked on the way.
    assert _tokens(app, db, account_id).id_claims is not None
    metadata = _metadata(op, outbound)
    fresh = refresh(outbound, metadata, op.client.credentials, TokenSet("x", refresh_token=seen[-1]))
    assert fresh.refresh_token not in seen


def test_disconnect_revokes_at_the_provider(
    app: Flask,
    client: FlaskClient,
    db: Session,
    op: OpenIDProvider,
    outbound: OutboundClient,
    make_user: UserFactory,
) -> None:
    account_id = _connect(app, client, op, make_user)
    tokens = _tokens(app, db, account_id)
    page = client.get(f"/account/connections/{account_id}/disconnect").get_data(as_text=True)
    assert "asks the provider to revoke its access" in page
    done = client.post(f"/account/connections/{account_id}/disconnect", data={"csrf_token": page_csrf(page)})
    assert location(done) == "/account/connections/"
    assert "revoked its access at the provider" in client.get("/account/connections/").get_data(as_text=True)
    assert _account_gone(db, account_id)
    assert db.scalars(select(StoredSecret).where(StoredSecret.owner_type == "connected_account")).all() == []
    with pytest.raises(AppError) as refused:
        refresh(outbound, _metadata(op, outbound), op.client.credentials, tokens)
    assert refused.value.code == "consent_required"


def _account_gone(db: Session, account_id: int) -> bool:
    db.expire_all()
    return db.get(ConnectedAccount, account_id) is None


def test_another_users_account_is_not_found(
    app: Flask, client: FlaskClient, op: OpenIDProvider, make_user: UserFactory
) -> None:
    account_id = _connect(app, client, op, make_user)
    make_user("other@example.com")
    other = app.test_client()
    sign_in(other, "other@example.com")
    page = other.get("/account/connections/").get_data(as_text=True)
    assert "No connected accounts yet." in page
    assert other.get(f"/account/connections/{account_id}/disconnect").status_code == 404
    refused = other.post(f"/account/connections/{account_id}/refresh", data={"csrf_token": page_csrf(page)})
    assert refused.status_code == 404
