"""OAuth accounts through the proxy, the token handout and the headers endpoint, against the real OpenID
Provider (``oidc-provider``) and the local streaming upstream as the provider's API (its ``api_base_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit_batch
from app.api import tokens
from app.audit import AuditContext
from app.extensions import get_cipher, get_database
from app.models import AuditEvent, ConnectedAccount, utcnow
from app.oauth.connections import load_tokens, save_tokens
from app.settings import Settings
from tests.conftest import UserFactory, make_settings, sign_in
from tests.support.oauth_app import create_config, follow_callback, generic_values, location
from tests.support.op import OPClient, OpenIDProvider, op_login, running_op
from tests.support.stream_upstream import StreamUpstream, running_upstream

BASE = "http://127.0.0.1:5000"
PATH = "/api/account-manager/accounts"
MEMBER = "member@example.com"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_OUTBOUND_TIMEOUT="5", AMI_AUTH_OUTBOUND_RETRIES="0")


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    client = OPClient("ami-auth", "op-secret", extra={"redirect_uris": [f"{BASE}/oauth/{i}/callback" for i in (1, 2)]})
    with running_op(clients=[client], ttl={"AccessToken": 3600}) as provider:
        yield provider


@pytest.fixture
def upstream() -> Iterator[StreamUpstream]:
    with running_upstream() as up:
        yield up


def _token(db: Session, *scopes: str) -> dict[str, str]:
    raw = tokens.create_token(db, AuditContext(actor="test"), name="CMS", scopes=list(scopes), created_by=None).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


def _connect(app: Flask, op: OpenIDProvider, upstream: StreamUpstream, make_user: UserFactory) -> int:
    make_user(MEMBER)
    values = generic_values(op.issuer, op.client, api_base_url=upstream.url, scopes="openid email offline_access")
    config_id = create_config(app, "generic_oidc", "Corp ID", values)
    browser = app.test_client()
    sign_in(browser, MEMBER)
    start = browser.get(f"/account/connections/connect/{config_id}")
    done = follow_callback(browser, op_login(location(start), "alice"))
    return int(location(done).rsplit("-", 1)[1])


def _access_token(app: Flask, db: Session, account_id: int) -> str:
    db.expire_all()
    stored = load_tokens(db, get_cipher(app), account_id)
    assert stored is not None
    return stored.access_token


def _expire_soon(app: Flask, db: Session, account_id: int) -> str:
    """Make the stored access token due for refresh (it expires in 10 s); return it."""
    stored = load_tokens(db, get_cipher(app), account_id)
    assert stored is not None and stored.refresh_token
    save_tokens(db, get_cipher(app), account_id, replace(stored, expires_at=utcnow() + timedelta(seconds=10)))
    db.commit()
    return stored.access_token


def test_the_proxy_sends_an_oauth_account_s_access_token_and_refreshes_it_first_when_due(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, upstream: StreamUpstream, make_user: UserFactory
) -> None:
    account_id = _connect(app, op, upstream, make_user)
    headers = _token(db, "accounts:proxy")
    first = upstream.add_key(_access_token(app, db, account_id))
    answer = client.get(f"{PATH}/{account_id}/proxy/v1/models", headers=headers)
    assert answer.status_code == 200 and answer.get_json()["data"][0]["id"] == "gpt-4o"
    assert upstream.hits("/v1/models")[-1].headers["authorization"] == f"Bearer {first}"

    old = _expire_soon(app, db, account_id)
    upstream.keys.clear()
    upstream.keys.add("placeholder")
    answer = client.get(f"{PATH}/{account_id}/proxy/v1/models", headers=headers)
    sent = upstream.hits("/v1/models")[-1].headers["authorization"].removeprefix("Bearer ")
    assert sent not in (old, first), "refreshed before it was sent"
    assert answer.status_code == 401  # the stand-in does not know the new token: its 401 comes back as sent
    assert answer.get_json()["error"]["code"] == "invalid_api_key"
    # A 401 for a bearer token leads to one forced refresh, as the refresh job answers a refused token; it
    # worked (the OP still honours the grant), so the account stays active with yet another token.
    assert _access_token(app, db, account_id) not in (old, sent)
    db.expire_all()
    account = db.get(ConnectedAccount, account_id)
    assert account is not None and account.status == "active"
    assert audit_batch.flush(get_database(app).engine, timeout=10)  # the calls' events are written by a thread
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "account.proxy")).all()
    assert [e.details["status"] for e in events] == [200, 401] and events[1].details["unauthorized"] == "refreshed"


def test_the_token_handout_returns_a_fresh_token_and_is_audited(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, upstream: StreamUpstream, make_user: UserFactory
) -> None:
    account_id = _connect(app, op, upstream, make_user)
    wrong = client.post(f"{PATH}/{account_id}/token", headers=_token(db, "accounts:proxy"))
    assert wrong.status_code == 403 and "accounts:token" in wrong.get_json()["error"]["message"]
    headers = _token(db, "accounts:token")
    old = _expire_soon(app, db, account_id)
    answer = client.post(f"{PATH}/{account_id}/token", headers=headers)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    body = answer.get_json()
    assert body["access_token"] != old and body["access_token"] == _access_token(app, db, account_id)
    assert body["token_type"].lower() == "bearer" and body["expires_at"] and "openid" in body["scopes"]
    [event] = db.scalars(select(AuditEvent).where(AuditEvent.action == "account.token.disclosed")).all()
    assert event.actor.startswith("service_token:") and body["access_token"] not in str(event.details)
    assert client.post(f"{PATH}/999999/token", headers=headers).status_code == 404


def test_the_headers_endpoint_serves_an_oauth_account_as_a_bearer_header(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, upstream: StreamUpstream, make_user: UserFactory
) -> None:
    account_id = _connect(app, op, upstream, make_user)
    answer = client.get(f"{PATH}/{account_id}/headers", headers=_token(db, "accounts:headers"))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json() == {
        "headers": {"Authorization": f"Bearer {_access_token(app, db, account_id)}"},
        "query": {},
    }
    [event] = db.scalars(select(AuditEvent).where(AuditEvent.action == "account.headers.disclosed")).all()
    assert event.details["header_names"] == ["Authorization"]
