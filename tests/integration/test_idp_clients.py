"""Registering the OpenID Provider's apps — console, `ami-auth oidc clients apply` YAML, JSON API — and the apps a
user authorized, on their account page and on the admin's user page. SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app.api import tokens as api_tokens
from app.audit import AuditContext
from app.idp import client_throttle, clients, consents
from app.models import AuditEvent, OidcClient, OidcToken, utcnow
from tests.conftest import UserFactory, csrf_token, sign_in

CTX = AuditContext(actor="test")
CMS = {
    "name": "CMS",
    "redirect_uris": ["https://cms.example.com/api/auth/callback/ami"],
    "post_logout_redirect_uris": ["https://cms.example.com/"],
}


def _actions(db: Session, prefix: str) -> list[str]:
    db.expire_all()
    return [a for a in db.scalars(select(AuditEvent.action).order_by(AuditEvent.id)) if a.startswith(prefix)]


def _errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'<p class="error" id="[^"]+" data-field="([^"]+)">([^<]+)</p>', html))


def _secret_on(html: str) -> str:
    match = re.search(r'id="client-secret-value"[^>]*value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def test_an_admin_registers_edits_rotates_and_deletes_an_app_in_the_console(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("root@example.com", role="admin")
    sign_in(client, "root@example.com")
    assert "Apps" in client.get("/admin/").get_data(as_text=True)
    form = {
        "csrf_token": csrf_token(client, "/admin/clients/new"),
        "name": "CMS",
        "client_type": "confidential",
        "auth_method": "client_secret_basic",
        "redirect_uris": "https://cms.example.com/api/auth/callback/ami",
        "post_logout_redirect_uris": "https://cms.example.com/",
        "backchannel_logout_uri": "https://cms.example.com/api/auth/backchannel-logout",
        "grant_types": ["authorization_code", "refresh_token"],
        "scopes": "openid profile email offline_access",
        "audiences": "https://cms.example.com/api",
        "require_pkce": "y",
        "first_party": "y",
        "id_token_alg": "ES256",
        "access_token_ttl": "600",
        "refresh_token_ttl": "2592000",
        "id_token_ttl": "3600",
        "enabled": "y",
    }
    # A fragment in a redirect URI: refused on that field, nothing registered.
    bad = client.post("/admin/clients/new", data={**form, "redirect_uris": "https://cms.example.com/cb#x"})
    assert bad.status_code == 422
    assert "#fragment" in _errors(bad.get_data(as_text=True))["redirect_uris"]
    assert db.scalars(select(OidcClient)).all() == []
    # private_key_jwt without the client's keys: blamed on jwks_uri.
    no_keys = client.post("/admin/clients/new", data={**form, "auth_method": "private_key_jwt"})
    assert no_keys.status_code == 422 and "JWKS" in _errors(no_keys.get_data(as_text=True))["jwks_uri"]

    created = client.post("/admin/clients/new", data=form)
    assert created.status_code == 200
    html = created.get_data(as_text=True)
    secret = _secret_on(html)
    row = db.scalars(select(OidcClient)).one()
    assert row.client_id in html and row.first_party and row.scopes[-1] == "offline_access"
    assert row.secret_hash == clients.hash_secret(secret)
    # Shown once: the edit page and the list never carry it.
    page = client.get(f"/admin/clients/{row.client_id}").get_data(as_text=True)
    assert secret not in page and "set (stored hashed)" in page
    assert row.client_id in client.get("/admin/clients/").get_data(as_text=True)

    edit = {**form, "csrf_token": csrf_token(client, f"/admin/clients/{row.client_id}")}
    refused = client.post(f"/admin/clients/{row.client_id}", data={**edit, "access_token_ttl": "5"})
    assert refused.status_code == 422
    assert "between 60 and" in _errors(refused.get_data(as_text=True))["access_token_ttl"]
    saved = client.post(f"/admin/clients/{row.client_id}", data={**edit, "first_party": ""})
    assert saved.status_code == 302
    db.expire_all()
    assert not db.get(OidcClient, row.id).first_party  # type: ignore[union-attr]

    rotated = client.post(f"/admin/clients/{row.client_id}/rotate", data={"csrf_token": edit["csrf_token"]})
    new_secret = _secret_on(rotated.get_data(as_text=True))
    db.expire_all()
    assert new_secret != secret and db.get(OidcClient, row.id).secret_hash == clients.hash_secret(new_secret)  # type: ignore[union-attr]

    gone = client.post(f"/admin/clients/{row.client_id}/delete", data={"csrf_token": edit["csrf_token"]})
    assert gone.status_code == 302
    assert db.scalars(select(OidcClient)).all() == []
    assert _actions(db, "oidc.client.") == [
        "oidc.client.create",
        "oidc.client.update",
        "oidc.client.secret_rotate",
        "oidc.client.delete",
    ]


def test_members_cannot_reach_the_clients_console(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("ann@example.com")
    sign_in(client, "ann@example.com")
    assert client.get("/admin/clients/").status_code in (403, 404)


def test_clients_as_yaml_create_then_update_and_a_bad_file_writes_nothing(
    app: Flask, db: Session, tmp_path: Path
) -> None:
    cli = app.test_cli_runner()
    path = tmp_path / "clients.yaml"
    path.write_text(
        """
clients:
  - name: CMS
    redirect_uris: [https://cms.example.com/api/auth/callback/ami]
    scopes: [openid, profile, email, offline_access]
    first_party: true
  - name: Reports
    client_type: public
    redirect_uris: [http://127.0.0.1:9000/cb]
"""
    )
    dry = cli.invoke(args=["oidc", "clients", "apply", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "create client 'CMS'" in dry.output and "nothing was written" in dry.output
    assert db.scalars(select(OidcClient)).all() == []

    done = cli.invoke(args=["oidc", "clients", "apply", str(path)])
    assert done.exit_code == 0, done.output
    secret = done.output.split("client_secret: ")[1].split()[0]
    assert done.output.count("client_secret:") == 1  # the public client has none
    cms = db.scalars(select(OidcClient).where(OidcClient.name == "CMS")).one()
    assert cms.secret_hash == clients.hash_secret(secret) and cms.first_party
    assert "applied: 2 created, 0 updated, 0 unchanged" in done.output

    path.write_text(path.read_text().replace("first_party: true", "first_party: false"))
    again = cli.invoke(args=["oidc", "clients", "apply", str(path)])
    assert again.exit_code == 0, again.output
    assert "update client 'CMS': first_party" in again.output and "client_secret" not in again.output
    assert "applied: 0 created, 1 updated, 1 unchanged" in again.output

    path.write_text(
        """
clients:
  - name: CMS
    first_party: true
  - name: Broken
    client_type: public
    grant_types: [client_credentials]
"""
    )
    bad = cli.invoke(args=["oidc", "clients", "apply", str(path)])
    assert bad.exit_code == 1
    assert f"{path}: client 'Broken': grant_types: client_credentials is for confidential clients" in bad.output
    assert "nothing was written" in bad.output
    db.expire_all()
    assert not db.scalars(select(OidcClient).where(OidcClient.name == "CMS")).one().first_party
    assert db.scalars(select(OidcClient).where(OidcClient.name == "Broken")).first() is None


def _token(db: Session, *scopes: str) -> dict[str, str]:
    raw = api_tokens.create_token(db, CTX, name="deploy", scopes=list(scopes), created_by=None).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


def test_clients_through_the_json_api(client: FlaskClient, db: Session) -> None:
    writer = _token(db, "clients:read", "clients:write")
    reader = _token(db, "clients:read")
    base = "/api/account-manager/oidc-clients"

    assert client.post(base, json=CMS, headers=reader).status_code == 403
    bad = client.post(base, json={**CMS, "auth_method": "private_key_jwt"}, headers=writer)
    assert bad.status_code == 422
    assert bad.get_json()["error"]["code"] == "validation_failed" and "jwks_uri" in bad.get_json()["error"]["fields"]
    unknown = client.post(base, json={**CMS, "client_secret": "mine"}, headers=writer)
    assert unknown.status_code == 422 and "client_secret" in unknown.get_json()["error"]["fields"]

    created = client.post(base, json=CMS, headers=writer)
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    client_id, secret = body["client"]["client_id"], body["client_secret"]
    assert secret.startswith("amic_") and body["client"]["has_secret"] is True
    assert created.headers["Location"] == f"{base}/{client_id}"
    row = db.scalars(select(OidcClient)).one()
    assert row.secret_hash == clients.hash_secret(secret)

    shown = client.get(f"{base}/{client_id}", headers=reader)
    assert shown.status_code == 200 and secret not in shown.get_data(as_text=True)
    assert shown.get_json()["redirect_uris"] == CMS["redirect_uris"]
    listed = client.get(base, headers=reader).get_json()["clients"]
    assert [c["client_id"] for c in listed] == [client_id]

    patch = client.patch(f"{base}/{client_id}", json={"redirect_uris": ["ftp://x"]}, headers=writer)
    assert patch.status_code == 422 and "redirect_uris" in patch.get_json()["error"]["fields"]
    patched = client.patch(f"{base}/{client_id}", json={"first_party": True}, headers=writer)
    assert patched.status_code == 200
    assert patched.get_json()["client"]["first_party"] is True and patched.get_json()["client_secret"] is None

    rotated = client.post(f"{base}/{client_id}/secret", headers=writer).get_json()
    assert rotated["client_secret"] not in (None, secret)
    public = client.post(
        base,
        json={**CMS, "name": "SPA", "client_type": "public", "redirect_uris": ["http://localhost:3000/cb"]},
        headers=writer,
    ).get_json()
    assert public["client_secret"] is None
    no_secret = client.post(f"{base}/{public['client']['client_id']}/secret", headers=writer)
    assert no_secret.status_code == 422 and "auth_method" in no_secret.get_json()["error"]["fields"]

    assert client.delete(f"{base}/{client_id}", headers=writer).status_code == 204
    assert client.get(f"{base}/{client_id}", headers=reader).status_code == 404
    assert _actions(db, "oidc.client.") == [
        "oidc.client.create",
        "oidc.client.update",
        "oidc.client.secret_rotate",
        "oidc.client.create",
        "oidc.client.delete",
    ]


def test_users_see_and_remove_apps_and_admins_see_them_per_user(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    ann = make_user("ann@example.com")
    make_user("root@example.com", role="admin")
    cms = clients.create_client(db, CTX, CMS).client
    wiki = clients.create_client(db, CTX, {**CMS, "name": "Wiki"}).client
    consents.grant(db, CTX, ann.id, cms, ["openid", "email"])
    consents.grant(db, CTX, ann.id, wiki, ["openid"])
    db.add(
        OidcToken(
            client_id=cms.id,
            user_id=ann.id,
            family="f1",
            scope="openid email",
            jti="j1",
            audience=[],
            access_expires_at=utcnow() + timedelta(minutes=10),
        )
    )
    db.commit()

    sign_in(client, "ann@example.com")
    page = client.get("/account/").get_data(as_text=True)
    assert "Apps you signed in to" in page and f'data-app="{cms.client_id}"' in page and "Wiki" in page
    token = csrf_token(client, "/account/")
    done = client.post(f"/account/apps/{cms.client_id}/revoke", data={"csrf_token": token})
    assert done.status_code == 302
    page = client.get("/account/").get_data(as_text=True)
    assert f'data-app="{cms.client_id}"' not in page and "no longer has access" in page
    db.expire_all()
    assert db.scalars(select(OidcToken)).one().revoked_at is not None

    admin = app.test_client()
    sign_in(admin, "root@example.com")
    detail = admin.get(f"/admin/users/{ann.id}").get_data(as_text=True)
    assert "Apps this user authorized" in detail and f'data-app="{wiki.client_id}"' in detail
    token = csrf_token(admin, f"/admin/users/{ann.id}")
    admin.post(f"/admin/users/{ann.id}/apps/{wiki.client_id}/revoke", data={"csrf_token": token})
    assert consents.authorized_apps(db, ann.id) == []
    assert _actions(db, "oidc.grant.revoke") == ["oidc.grant.revoke", "oidc.grant.revoke"]


def test_failed_client_authentication_is_throttled_per_client_and_network(client: FlaskClient, db: Session) -> None:
    cms = clients.create_client(db, CTX, CMS)
    other = clients.create_client(db, CTX, {**CMS, "name": "Wiki"})
    db.commit()
    assert cms.secret is not None and other.secret is not None
    form = {"grant_type": "refresh_token", "refresh_token": "not-a-token"}

    def token(client_id: str, secret: str) -> TestResponse:
        return client.post("/oauth2/token", data=form, auth=(client_id, secret))

    for _ in range(client_throttle.FAILURES_PER_CLIENT_NETWORK):
        wrong = token(cms.client.client_id, "amic_wrong")
        assert wrong.status_code == 401 and wrong.get_json()["error"] == "invalid_client"
    # Now even the right secret is not checked: 429 with Retry-After, in the token endpoint's error shape.
    held = token(cms.client.client_id, cms.secret)
    assert held.status_code == 429 and held.get_json()["error"] == "invalid_client"
    assert 1 <= int(held.headers["Retry-After"]) <= 60
    introspect = client.post("/oauth2/introspect", data={"token": "x"}, auth=(cms.client.client_id, cms.secret))
    assert introspect.status_code == 429
    # Another app from the same network is not locked out by these failures (its secret is still checked).
    assert token(other.client.client_id, other.secret).get_json()["error"] == "invalid_grant"
