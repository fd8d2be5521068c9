"""Generic OpenID Connect through the whole app (console form → "Continue with …" → the real OP → callback),
for the settings the core unit tests cover only below the app: manual endpoints without discovery, an
``audience``, PKCE off, and "Test connection" on a config that is not saved yet. (The groups claim through
the app is tests/integration/test_role_mapping.py and test_oauth_signin.py.) SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import AuditEvent, OAuthIdentity, ProviderConfig
from tests.conftest import UserFactory, csrf_token, sign_in
from tests.support.oauth_app import create_config, follow_callback, generic_values, location
from tests.support.op import OPClient, OpenIDProvider, op_login, running_op

BASE = "http://127.0.0.1:5000"  # the test settings' AMI_AUTH_BASE_URL
ADMIN = "root@example.com"
CLIENT = OPClient(
    "ami-auth",
    "op-secret:generic",
    extra={"redirect_uris": [f"{BASE}/oauth/{i}/callback" for i in range(1, 4)]},
)


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    with running_op(clients=[CLIENT]) as provider:
        yield provider


@pytest.fixture(scope="module")
def lax_op() -> Iterator[OpenIDProvider]:
    """A provider that accepts an authorization code without PKCE (the case the app's "PKCE off" is for)."""
    with running_op(clients=[CLIENT], pkceRequired=False) as provider:
        yield provider


def _sign_in(client: FlaskClient, config_id: int, login: str = "alice") -> tuple[dict[str, list[str]], str]:
    """ "Continue with …" → the OP → the callback; returns the authorization request's query and where the
    callback sent the browser."""
    start = client.get(f"/oauth/{config_id}/login?next=/account/")
    assert start.status_code == 302, start.get_data(as_text=True)[:400]
    query = parse_qs(urlsplit(location(start)).query)
    done = follow_callback(client, op_login(location(start), login))
    return query, location(done)


def _identities(db: Session) -> list[OAuthIdentity]:
    db.expire_all()
    return list(db.scalars(select(OAuthIdentity)))


def test_manual_endpoints_sign_in_without_ever_fetching_discovery(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider
) -> None:
    values = generic_values(
        op.issuer,
        op.client,
        endpoint_source="manual",
        authorization_url=f"{op.issuer}/auth",
        token_url=f"{op.issuer}/token",
        userinfo_url=f"{op.issuer}/me",
        jwks_uri=f"{op.issuer}/jwks",
        jit=True,
        trust_email=True,
    )
    config_id = create_config(app, "generic_oidc", "Corp ID (manual)", values)
    op.reset_counts()
    query, landed = _sign_in(client, config_id)
    assert landed == "/account/"
    assert "alice@example.test" in client.get("/account/").get_data(as_text=True)
    [identity] = _identities(db)
    assert identity.subject == "alice"
    # The ID token was checked against the manual JWKS URI; discovery was never asked for.
    assert op.request_count("GET", "/.well-known/openid-configuration") == 0
    assert op.request_count("GET", "/jwks") >= 1 and op.grant_count("authorization_code") == 1
    assert query["code_challenge_method"] == ["S256"] and "nonce" in query


def test_audience_is_sent_and_pkce_off_signs_in_without_a_code_challenge(
    app: Flask, client: FlaskClient, db: Session, lax_op: OpenIDProvider
) -> None:
    audience = "https://api.corp.example"
    values = generic_values(lax_op.issuer, lax_op.client, pkce=False, audience=audience, jit=True, trust_email=True)
    config_id = create_config(app, "generic_oidc", "Corp ID (no PKCE)", values)
    lax_op.reset_counts()
    query, landed = _sign_in(client, config_id)
    assert landed == "/account/"
    # What the provider received: the audience, and no PKCE parameters at all.
    received = lax_op.last_authorize()
    assert received is not None and received["audience"] == audience
    assert "code_challenge" not in received and "code_challenge_method" not in received
    assert query["audience"] == [audience] and "code_challenge" not in query
    assert lax_op.grant_count("authorization_code") == 1
    assert [i.subject for i in _identities(db)] == ["alice"]


def test_pkce_on_is_what_a_strict_provider_gets(app: Flask, client: FlaskClient, op: OpenIDProvider) -> None:
    """The default keeps PKCE (S256); a provider that requires it signs the user in."""
    config_id = create_config(app, "generic_oidc", "Corp ID", generic_values(op.issuer, op.client, jit=True))
    op.reset_counts()
    _query, landed = _sign_in(client, config_id)
    received = op.last_authorize()
    assert received is not None and received["code_challenge_method"] == "S256" and received["code_challenge"]
    assert "audience" not in received
    assert landed == "/account/"


def _form(op: OpenIDProvider, **changes: str) -> dict[str, str]:
    return {
        "name": "Corp ID",
        "endpoint_source": "discovery",
        "issuer": op.issuer,
        "client_id": op.client.client_id,
        "token_auth_method": op.client.auth_method,
        "client_secret": op.client.client_secret,
        "scopes": "openid email profile",
        "pkce": "y",
        **changes,
    }


def _test_events(db: Session) -> list[AuditEvent]:
    db.expire_all()
    return list(db.scalars(select(AuditEvent).where(AuditEvent.action == "provider_config.test")))


def test_test_connection_before_saving_a_new_config(
    client: FlaskClient, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    make_user(ADMIN, role="admin")
    sign_in(client, ADMIN)
    path = "/admin/providers/new/generic_oidc"
    page = client.get(path).get_data(as_text=True)
    assert 'name="action" value="test"' in page and "Test connection" in page

    tested = client.post(path, data={**_form(op), "action": "test", "csrf_token": csrf_token(client, path)})
    html = unescape(tested.get_data(as_text=True))
    assert tested.status_code == 200, html[:2000]
    assert "Test connection: ok" in html and "Nothing was saved yet." in html
    assert f"{op.issuer}/jwks" in html and f"{op.issuer}/auth" in html
    # Nothing saved, the typed secret not rendered back (the page asks for it again).
    assert db.scalar(select(func.count()).select_from(ProviderConfig)) == 0
    assert op.client.client_secret not in html and "Enter Client secret again" in html
    [event] = _test_events(db)
    assert event.outcome == "success" and event.target == "provider_type:generic_oidc"
    assert event.details["saved"] is False

    # A wrong issuer: failed, with the code and the field to look at; still nothing saved.
    wrong = f"http://127.0.0.1:{urlsplit(op.issuer).port}/realms/nope"
    failed = client.post(
        path, data={**_form(op, issuer=wrong), "action": "test", "csrf_token": csrf_token(client, path)}
    )
    text = unescape(failed.get_data(as_text=True))
    assert failed.status_code == 422 and "Test connection: failed" in text
    assert 'id="issuer-error"' in text
    assert db.scalar(select(func.count()).select_from(ProviderConfig)) == 0
    assert [e.outcome for e in _test_events(db)] == ["success", "failure"]

    # Save is still the other button.
    saved = client.post(path, data={**_form(op), "csrf_token": csrf_token(client, path)})
    assert saved.status_code == 302
    assert db.scalar(select(func.count()).select_from(ProviderConfig)) == 1


def test_test_connection_on_an_edit_tests_the_typed_values_and_keeps_the_stored(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    config_id = create_config(app, "generic_oidc", "Corp ID", generic_values(op.issuer, op.client))
    make_user(ADMIN, role="admin")
    sign_in(client, ADMIN)
    path = f"/admin/providers/{config_id}"
    # The secret field left blank: the stored secret is used for the test and kept.
    wrong = f"{op.issuer}/elsewhere"
    data = {**_form(op, issuer=wrong, client_secret=""), "action": "test", "csrf_token": csrf_token(client, path)}
    failed = client.post(path, data=data)
    assert failed.status_code == 422 and 'id="issuer-error"' in failed.get_data(as_text=True)
    db.expire_all()
    cfg = db.get(ProviderConfig, config_id)
    assert cfg is not None and cfg.config["issuer"] == op.issuer
    data = {**_form(op, client_secret=""), "action": "test", "csrf_token": csrf_token(client, path)}
    ok = client.post(path, data=data)
    assert ok.status_code == 200 and "Test connection: ok" in ok.get_data(as_text=True)
    assert [(e.outcome, e.target) for e in _test_events(db)] == [
        ("failure", f"provider_config:{config_id}"),
        ("success", f"provider_config:{config_id}"),
    ]
