"""End users connect their own OAuth account through a CMS connect link, against the real OpenID Provider
(tests/peers/op.mjs): the CMS asks for a link for one user on an OIDC config that allows it; that user's own
session opens AMI Auth's page, goes through the provider's consent screen (the same authorization as Account →
Connections), and comes back to the CMS with ``status=saved&account=<id>``; the token set is stored encrypted,
the account is the link's user's, and the platform hears of it (webhook ``account.connected``). A denied consent
goes back with ``status=failed&error=consent_required`` and stores nothing; a reused, expired or foreign callback
gets an error page, never a redirect and never a 5xx."""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.api import tokens
from app.audit import AuditContext
from app.extensions import get_cipher, get_database
from app.models import AuditEvent, ConnectedAccount, DialogToken, StoredSecret, User, UserSession, utcnow
from app.models.webhooks import WebhookEvent
from app.oauth.connections import load_tokens
from app.settings import Settings
from tests.conftest import UserFactory, make_settings, sign_in
from tests.support.hold import connections_while_held
from tests.support.live import free_port
from tests.support.oauth_app import create_config, follow_callback, generic_values, location, page_csrf
from tests.support.op import OPClient, OpenIDProvider, op_login, running_op

PATH = "/api/account-manager/connect-links"
CMS = "https://cms.example.com"
RETURN_TO = f"{CMS}/me/connections?tab=oauth"
BASE = "http://127.0.0.1:5000"
MEMBER = "ann@example.com"
OTHER = "bob@example.com"


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    client = OPClient("ami-auth", "op-secret", extra={"redirect_uris": [f"{BASE}/oauth/{i}/callback" for i in (1, 2)]})
    with running_op(clients=[client]) as provider:
        yield provider


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_CMS_ORIGINS=CMS)


@pytest.fixture
def cms(db: Session) -> dict[str, str]:
    raw = tokens.create_token(
        db, AuditContext(actor="test"), name="CMS", scopes=["accounts:write"], created_by=None
    ).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def users(make_user: UserFactory) -> tuple[User, User]:
    return make_user(MEMBER), make_user(OTHER)


def _config(app: Flask, op: OpenIDProvider, *, allowed: bool = True, enabled: bool = True) -> int:
    values = generic_values(op.issuer, op.client, scopes="openid email profile", end_users_connect=allowed)
    return create_config(app, "generic_oidc", f"Corp ID {allowed} {enabled}", values, enabled=enabled)


def _link(client: FlaskClient, cms: dict[str, str], config_id: int, user_id: int) -> str:
    created = client.post(
        PATH, json={"provider_config_id": config_id, "user_id": user_id, "return_to": RETURN_TO}, headers=cms
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    url = urlsplit(created.get_json()["url"])
    return f"{url.path}?{url.query}"


def _browser(app: Flask, email: str) -> FlaskClient:
    browser = app.test_client()
    assert sign_in(browser, email).status_code == 302
    return browser


def _continue(browser: FlaskClient, link: str, op: OpenIDProvider) -> str:
    """Open the link's page, then follow "Continue to …" to the provider's authorization URL."""
    page = browser.get(link)
    assert page.status_code == 200, page.get_data(as_text=True)[:600]
    html = page.get_data(as_text=True)
    assert "Connect your account" in html and "Continue to OpenID Connect (any provider)" in html
    assert 'name="api_key"' not in html  # nothing to type
    match = re.search(r'id="dialog-continue"[^>]*href="([^"]+)"', html)
    assert match, html[:800]
    start = browser.get(html_lib.unescape(match.group(1)))
    url = location(start)
    assert url.startswith(op.issuer)
    # A refresh token needs offline_access *and* prompt=consent (TESTING.md §1), as on Account → Connections.
    assert "offline_access" in url and "prompt=consent" in url
    return url


def _back(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 303, response.get_data(as_text=True)[:600]
    target = location(response)
    assert target.startswith(f"{CMS}/me/connections?")
    return parse_qs(urlsplit(target).query)


def _unavailable(response: Any, status: int, title: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)[:600]
    assert "Location" not in response.headers
    assert title in response.get_data(as_text=True)


def _accounts(db: Session) -> list[ConnectedAccount]:
    db.expire_all()
    return list(db.scalars(select(ConnectedAccount)))


def _events(db: Session, event_type: str) -> list[WebhookEvent]:
    return list(db.scalars(select(WebhookEvent).where(WebhookEvent.type == event_type)))


def test_a_member_connects_their_oauth_account_and_goes_back_to_the_cms(
    app: Flask,
    client: FlaskClient,
    db: Session,
    cms: dict[str, str],
    users: tuple[User, User],
    op: OpenIDProvider,
) -> None:
    member, _ = users
    config_id = _config(app, op)
    link = _link(client, cms, config_id, member.id)
    # Signed out, the page offers sign-in; another user's session cannot open it.
    assert app.test_client().get(link).status_code == 401
    other = _browser(app, OTHER).get(link)
    assert other.status_code == 403 and "made for another user" in other.get_data(as_text=True)

    browser = _browser(app, MEMBER)
    callback = op_login(_continue(browser, link, op), "alice")
    assert callback.startswith(f"{BASE}/oauth/{config_id}/callback?")
    # Nothing to type, so nothing to test: the dialog's test endpoint says so (and spends nothing).
    csrf = page_csrf(browser.get(link).get_data(as_text=True))
    tested = browser.post(link.replace("/dialogs/cms?", "/dialogs/cms/test?"), data={"csrf_token": csrf})
    assert tested.status_code == 404 and "nothing to test" in tested.get_data(as_text=True)
    query = _back(follow_callback(browser, callback))
    # The same return parameters as the API-key path; the CMS's own query is kept.
    assert query["status"] == ["saved"] and query["tab"] == ["oauth"] and "error" not in query
    [account] = _accounts(db)
    assert account.id == int(query["account"][0])
    assert (account.user_id, account.subject, account.label, account.status) == (
        member.id,
        "alice",
        "alice@example.test",
        "active",
    )
    stored = load_tokens(db, get_cipher(app), account.id)
    assert stored is not None and stored.refresh_token and stored.access_token
    ciphertext = db.scalars(
        select(StoredSecret.ciphertext).where(
            StoredSecret.owner_type == "connected_account", StoredSecret.owner_id == account.id
        )
    ).one()
    assert stored.access_token.encode() not in ciphertext and stored.refresh_token.encode() not in ciphertext
    # Audited, and the platform is told through the outbox.
    actions = db.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert "connected_account.connect" in actions and "dialog.saved" in actions
    assert [e.subject for e in _events(db, "account.connected")] == [f"connected_account:{account.id}"]
    # The member sees it on Account → Connections too.
    assert "alice@example.test" in browser.get("/account/connections/").get_data(as_text=True)

    # The link is spent, and the provider's answer cannot be replayed.
    _unavailable(browser.get(link), 410, "This dialog link has already been used.")
    replay = follow_callback(browser, callback)
    assert replay.status_code == 422 and "Location" not in replay.headers
    assert len(_accounts(db)) == 1


def test_a_connect_waiting_on_the_provider_holds_no_database_connection(
    app: Flask, client: FlaskClient, cms: dict[str, str], users: tuple[User, User], op: OpenIDProvider
) -> None:
    """End users connecting through a slow provider must not tie up the worker's database connections while it
    answers (its token endpoint, keys and userinfo, up to the outbound timeout each)."""
    member, _ = users
    config_id = _config(app, op)
    browser = _browser(app, MEMBER)
    callback = op_login(_continue(browser, _link(client, cms, config_id, member.id), op), "alice")
    idle, held, done = connections_while_held(
        get_database(app).engine, op.held(), lambda: follow_callback(browser, callback)
    )
    assert held == idle
    assert _back(done)["status"] == ["saved"]  # connected once the provider answered


def test_a_denied_consent_goes_back_with_failed_and_stores_nothing(
    app: Flask,
    client: FlaskClient,
    db: Session,
    cms: dict[str, str],
    users: tuple[User, User],
    op: OpenIDProvider,
) -> None:
    member, _ = users
    config_id = _config(app, op)
    link = _link(client, cms, config_id, member.id)
    browser = _browser(app, MEMBER)
    callback = op_login(_continue(browser, link, op), "alice", approve=False)
    query = _back(follow_callback(browser, callback))
    assert query["status"] == ["failed"] and query["error"] == ["consent_required"] and "account" not in query
    assert _accounts(db) == [] and _events(db, "account.connected") == []
    owned = select(func.count()).select_from(StoredSecret).where(StoredSecret.owner_type == "connected_account")
    assert db.scalar(owned) == 0
    failure = db.scalars(
        select(AuditEvent).where(AuditEvent.action == "connected_account.connect", AuditEvent.outcome == "failure")
    ).one()
    assert failure.details["code"] == "consent_required"
    _unavailable(browser.get(link), 410, "This dialog link has already been used.")


def test_the_callback_needs_the_session_that_opened_the_link_and_an_unexpired_link(
    app: Flask,
    client: FlaskClient,
    db: Session,
    cms: dict[str, str],
    users: tuple[User, User],
    op: OpenIDProvider,
) -> None:
    member, _ = users
    config_id = _config(app, op)

    # The provider's answer reaching another browser (another user's session) stores nothing and spends nothing.
    link = _link(client, cms, config_id, member.id)
    browser = _browser(app, MEMBER)
    callback = op_login(_continue(browser, link, op), "alice")
    stranger = follow_callback(_browser(app, OTHER), callback)
    assert stranger.status_code == 422 and "Location" not in stranger.headers
    assert _accounts(db) == []

    # The link expires while the user is at the provider: an error page, nothing stored, no redirect.
    db.execute(update(DialogToken).values(expires_at=utcnow() - timedelta(seconds=1)))  # the only link so far
    db.commit()
    _unavailable(follow_callback(browser, callback), 410, "This dialog link has expired.")
    assert _accounts(db) == [] and _events(db, "account.connected") == []
    refused = db.scalars(select(AuditEvent).where(AuditEvent.action == "dialog.refused")).all()
    assert [e.details["reason"] for e in refused] == ["expired"]

    # A new link works for the same user once more (each link once).
    link = _link(client, cms, config_id, member.id)
    query = _back(follow_callback(browser, op_login(_continue(browser, link, op), "alice")))
    assert query["status"] == ["saved"]
    [account] = _accounts(db)
    assert account.user_id == member.id

    # The session that opened a link ends while the user is at the provider: nothing changes for anyone.
    link = _link(client, cms, config_id, member.id)
    callback = op_login(_continue(browser, link, op), "carol")
    db.execute(update(UserSession).where(UserSession.user_id == member.id).values(revoked_at=utcnow()))
    db.commit()
    _unavailable(follow_callback(browser, callback), 401, "Your sign-in session ended before the provider answered.")
    assert [(a.id, a.subject) for a in _accounts(db)] == [(account.id, "alice")]


def test_the_config_must_be_an_enabled_oauth_config_that_allows_it(
    app: Flask, client: FlaskClient, cms: dict[str, str], users: tuple[User, User], op: OpenIDProvider
) -> None:
    member, _ = users
    off = _config(app, op, allowed=False)
    answer = client.post(
        PATH, json={"provider_config_id": off, "user_id": member.id, "return_to": RETURN_TO}, headers=cms
    )
    assert answer.status_code == 409, answer.get_data(as_text=True)
    assert answer.get_json()["error"]["code"] == "conflict"
    assert "end_users_connect" in answer.get_json()["error"]["hint"]
    disabled = _config(app, op, enabled=False)
    answer = client.post(
        PATH, json={"provider_config_id": disabled, "user_id": member.id, "return_to": RETURN_TO}, headers=cms
    )
    assert answer.status_code == 409 and "disabled" in answer.get_json()["error"]["message"]
    # An admin's add_account dialog still refuses OAuth configs: there is nothing to type.
    answer = client.post(
        "/api/account-manager/dialogs",
        json={"kind": "add_account", "provider_config_id": off, "return_to": RETURN_TO},
        headers=cms,
    )
    assert answer.status_code == 409 and "consent screen" in answer.get_json()["error"]["message"]


def test_a_provider_that_cannot_be_reached_at_the_start_sends_the_user_back_with_failed(
    app: Flask,
    client: FlaskClient,
    db: Session,
    cms: dict[str, str],
    users: tuple[User, User],
    op: OpenIDProvider,
) -> None:
    member, _ = users
    # An issuer nobody listens on: discovery fails when the authorization starts.
    values = generic_values(f"http://127.0.0.1:{free_port()}", op.client, end_users_connect=True)
    config_id = create_config(app, "generic_oidc", "Down ID", values)
    link = _link(client, cms, config_id, member.id)
    browser = _browser(app, MEMBER)
    page = browser.get(link)
    match = re.search(r'id="dialog-continue"[^>]*href="([^"]+)"', page.get_data(as_text=True))
    assert match
    query = _back(browser.get(html_lib.unescape(match.group(1))))
    assert query["status"] == ["failed"] and query["error"] == ["provider_unreachable"]
    assert _accounts(db) == []
    _unavailable(browser.get(link), 410, "This dialog link has already been used.")
