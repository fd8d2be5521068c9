"""Service tokens in the console and the CLI: shown once, stored hashed, scoped, revocable, audited."""

from __future__ import annotations

import hashlib
import json
import re

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import AuditEvent, ServiceToken
from tests.conftest import UserFactory, csrf_token, sign_in

TOKEN_FIELD = re.compile(r'id="new-token-value"[^>]*value="(amis_[A-Za-z0-9_-]{43})"')


def _admin(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("root@example.com", role="admin")
    assert sign_in(client, "root@example.com").status_code == 302


def _create(client: FlaskClient, **data: object) -> tuple[int, str]:
    form = {"csrf_token": csrf_token(client, "/admin/tokens/"), **data}
    response = client.post("/admin/tokens/", data=form)
    return response.status_code, response.get_data(as_text=True)


def _row_values(row: ServiceToken) -> str:
    return json.dumps({c.name: str(getattr(row, c.name)) for c in ServiceToken.__table__.columns})


def test_admin_creates_a_token_that_is_shown_once_and_stored_hashed(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    _admin(client, make_user)
    page = client.get("/admin/tokens/").get_data(as_text=True)
    assert "Service tokens" in page and "No service tokens yet." in page

    status, html = _create(
        client, name="CMS production", scopes=["sessions:read", "compliance:read"], expires_days="30"
    )
    assert status == 200
    match = TOKEN_FIELD.search(html)
    assert match, html
    raw = match.group(1)
    assert "readonly" in html and "cannot be shown again" in html

    row = db.scalar(select(ServiceToken))
    assert row is not None
    assert row.token_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert row.prefix == raw[:11] and row.scopes == ["sessions:read", "compliance:read"]
    assert row.expires_at is not None and 29 <= (row.expires_at - row.created_at).days <= 30
    assert raw not in _row_values(row) and raw[5:] not in _row_values(row)

    listing = client.get("/admin/tokens/").get_data(as_text=True)
    assert raw not in listing and raw[11:20] not in listing
    assert f"{row.prefix}…" in listing and "CMS production" in listing and "root@example.com" in listing
    assert "compliance:read" in listing and ">active<" in listing

    # It works on the API with exactly its scopes.
    api = client.application.test_client()
    assert api.get("/api/compliance/report", headers={"Authorization": f"Bearer {raw}"}).status_code == 200

    [created] = db.scalars(select(AuditEvent).where(AuditEvent.action == "service_token.create")).all()
    assert created.target == f"service_token:{row.id}" and created.actor == "root@example.com"
    assert created.details["scopes"] == ["sessions:read", "compliance:read"]
    everything = json.dumps([[e.target, e.details] for e in db.scalars(select(AuditEvent))])
    assert raw not in everything


def test_create_form_puts_each_problem_on_its_field(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    _admin(client, make_user)
    status, html = _create(client, name="  ", expires_days="0")
    assert status == 422
    assert re.search(r'id="name-error"[^>]*>Give the token a name', html)
    assert re.search(r'id="expires_days-error"[^>]*>Use a number of days from 1 to 3650', html)
    status, html = _create(client, name="x", scopes=["root:all"])
    assert status == 422
    assert re.search(r'id="scopes-error"[^>]*>', html)
    status, html = _create(client, name="x")
    assert status == 422
    assert re.search(r'id="scopes-error"[^>]*>Choose at least one scope', html)
    status, html = _create(client, name="n" * 101, scopes=["sessions:read"])
    assert status == 422 and 'id="name-error"' in html
    assert db.scalar(select(ServiceToken)) is None
    assert not TOKEN_FIELD.search(html)


def test_create_without_csrf_is_refused(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    _admin(client, make_user)
    response = client.post("/admin/tokens/", data={"name": "x", "scopes": ["sessions:read"]})
    assert response.status_code == 400
    assert db.scalar(select(ServiceToken)) is None


def test_revoke_from_the_console(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    _admin(client, make_user)
    _, html = _create(client, name="CMS", scopes=["compliance:read"])
    match = TOKEN_FIELD.search(html)
    assert match
    raw = match.group(1)
    row = db.scalar(select(ServiceToken))
    assert row is not None
    assert client.post(f"/admin/tokens/{row.id}/revoke").status_code == 400  # no CSRF token

    token = csrf_token(client, "/admin/tokens/")
    response = client.post(f"/admin/tokens/{row.id}/revoke", data={"csrf_token": token}, follow_redirects=True)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "Revoked the token" in html and ">revoked<" in html
    api = client.application.test_client()
    assert api.get("/api/compliance/report", headers={"Authorization": f"Bearer {raw}"}).status_code == 401
    [event] = db.scalars(select(AuditEvent).where(AuditEvent.action == "service_token.revoke")).all()
    assert event.target == f"service_token:{row.id}" and event.actor == "root@example.com"
    missing = client.post("/admin/tokens/9999/revoke", data={"csrf_token": token})
    assert missing.status_code == 404


def test_members_cannot_see_the_tokens_page(app: Flask, client: FlaskClient, make_user: UserFactory) -> None:
    make_user("ann@example.com")
    sign_in(client, "ann@example.com")
    assert client.get("/admin/tokens/").status_code == 403
    assert app.test_client().get("/admin/tokens/").status_code == 302  # anonymous: to sign-in


def test_cli_create_list_revoke(app: Flask, db: Session) -> None:
    runner = app.test_cli_runner()
    scopes = ["--scope", "sessions:read", "--scope", "sessions:write"]
    result = runner.invoke(args=["tokens", "create", "CMS staging", *scopes, "--expires-days", "7"])
    assert result.exit_code == 0, result.output
    raw = result.stdout.strip()
    assert re.fullmatch(r"amis_[A-Za-z0-9_-]{43}", raw)
    assert "cannot be shown again" in result.stderr
    row = db.scalar(select(ServiceToken))
    assert row is not None and row.token_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert row.scopes == ["sessions:read", "sessions:write"] and row.expires_at is not None

    listing = runner.invoke(args=["tokens", "list"])
    assert listing.exit_code == 0
    assert f"{row.prefix}…" in listing.output and "active" in listing.output and raw not in listing.output

    bad = runner.invoke(args=["tokens", "create", "x", "--scope", "root:all"])
    assert bad.exit_code == 2 and "root:all" in bad.output
    assert runner.invoke(args=["tokens", "create", "x"]).exit_code == 2  # --scope is required

    revoked = runner.invoke(args=["tokens", "revoke", str(row.id)])
    assert revoked.exit_code == 0 and "revoked token" in revoked.output
    assert "revoked" in runner.invoke(args=["tokens", "list"]).output
    missing = runner.invoke(args=["tokens", "revoke", "9999"])
    assert missing.exit_code == 1 and "no service token with id 9999" in missing.output

    db.expire_all()
    actions = [(e.action, e.actor, e.target) for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions == [
        ("service_token.create", "cli", f"service_token:{row.id}"),
        ("service_token.revoke", "cli", f"service_token:{row.id}"),
    ]


def test_a_token_can_be_limited_to_some_accounts_and_provider_types(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    _admin(client, make_user)
    status, html = _create(client, name="x", scopes=["accounts:proxy"], account_ids="12, abc", provider_types="nope")
    assert status == 422
    assert re.search(r'id="account_ids-error"[^>]*>“abc” is not an account id', html)
    assert re.search(r"id=\"provider_types-error\"[^>]*>Unknown provider type &#39;nope&#39;", html)
    assert db.scalar(select(ServiceToken)) is None

    status, html = _create(
        client, name="CMS chat", scopes=["accounts:proxy"], account_ids="12, 15", provider_types="openai"
    )
    assert status == 200 and TOKEN_FIELD.search(html)
    row = db.scalar(select(ServiceToken))
    assert row is not None and row.account_limits == {"account_ids": [12, 15], "provider_types": ["openai"]}
    assert "only accounts 12, 15 openai" in client.get("/admin/tokens/").get_data(as_text=True)

    cli = app.test_cli_runner().invoke(
        args=[
            "tokens",
            "create",
            "CLI chat",
            "--scope",
            "accounts:token",
            "--account",
            "7",
            "--provider-type",
            "google",
        ]
    )
    assert cli.exit_code == 0, cli.output
    db.expire_all()
    latest = db.scalars(select(ServiceToken).order_by(ServiceToken.id.desc())).first()
    assert latest is not None and latest.account_limits == {"account_ids": [7], "provider_types": ["google"]}
