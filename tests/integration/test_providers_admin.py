"""The provider console: list, create, edit, enable/disable, delete, guards and audit — SQLite and PostgreSQL."""

from __future__ import annotations

import re
from html import unescape

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.extensions import get_cipher
from app.models import AuditEvent, ConnectedAccount, ProviderConfig, StoredSecret
from app.providers import configs
from app.vault import get_secret
from tests.conftest import UserFactory, csrf_token, sign_in

ADMIN = "root@example.com"
SECRET = "GOCSPX-console-0c9f31"
GOOGLE = {
    "client_id": "1234567890-console.apps.googleusercontent.com",
    "client_secret": SECRET,
    "scopes": "openid email profile",
    "access_type": "offline",
    "trust_email": "y",
    "issuer": "https://accounts.google.com",
}


def _admin(client: FlaskClient, make_user: UserFactory) -> None:
    make_user(ADMIN, role="admin")
    sign_in(client, ADMIN)


def _create_google(client: FlaskClient, name: str = "Google (staff)", **changes: str) -> str:
    path = "/admin/providers/new/google"
    response = client.post(path, data={**GOOGLE, "name": name, **changes, "csrf_token": csrf_token(client, path)})
    assert response.status_code == 302, response.get_data(as_text=True)
    return str(response.headers["Location"])


def _action(client: FlaskClient, path: str, page: str) -> tuple[int, str]:
    response = client.post(path, data={"csrf_token": csrf_token(client, page)})
    return response.status_code, response.get_data(as_text=True)


def _audit(db: Session, action: str) -> list[AuditEvent]:
    db.expire_all()
    return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_providers_in_the_console_nav_and_list(client: FlaskClient, make_user: UserFactory) -> None:
    _admin(client, make_user)
    html = client.get("/admin/").get_data(as_text=True)
    assert '<a href="/admin/providers/"' in html and ">Providers</a>" in html
    empty = client.get("/admin/providers/").get_data(as_text=True)
    assert "No providers yet." in empty
    _create_google(client)
    listing = unescape(client.get("/admin/providers/").get_data(as_text=True))
    row = re.search(r'<tr data-config-id="\d+">(.*?)</tr>', listing, re.S)
    assert row is not None
    cells = row.group(1)
    assert "Google (staff)" in cells and "Google" in cells and "disabled" in cells and "all set" in cells


def test_type_picker_lists_every_catalog_entry(client: FlaskClient, make_user: UserFactory) -> None:
    _admin(client, make_user)
    html = client.get("/admin/providers/new").get_data(as_text=True)
    for provider_id in ("google", "github", "azure_ad", "generic_oidc", "openai", "smtp", "ami_credentials"):
        assert f'href="/admin/providers/new/{provider_id}"' in html
    assert client.get("/admin/providers/new/fax").status_code == 404


def test_create_audits_without_values_and_starts_disabled(
    client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    _admin(client, make_user)
    location = _create_google(client)
    page = client.get(location).get_data(as_text=True)
    assert "It stays disabled until you enable it." in unescape(page)
    cfg = db.scalars(select(ProviderConfig)).one()
    assert not cfg.enabled and "client_secret" not in cfg.config
    assert cfg.config["scopes"] == ["openid", "email", "profile"] and cfg.config["trust_email"] is True
    (event,) = _audit(db, "provider_config.create")
    assert event.actor == ADMIN and event.target == f"provider_config:{cfg.id}"
    assert event.details["encrypted_fields"] == ["client_secret"] and event.details["type"] == "google"
    assert SECRET not in str(event.details)


def test_edit_replaces_a_secret_and_keeps_the_old_one_for_rollback(
    app: Flask, client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    _admin(client, make_user)
    location = _create_google(client)
    cfg = db.scalars(select(ProviderConfig)).one()
    token = csrf_token(client, location)
    response = client.post(
        location,
        data={
            **GOOGLE,
            "name": "Google (staff)",
            "client_secret": "GOCSPX-replaced",
            "hosted_domain": "example.com",
            "csrf_token": token,
        },
    )
    assert response.status_code == 302
    assert get_secret(db, get_cipher(app), configs.OWNER, cfg.id, "client_secret").reveal() == "GOCSPX-replaced"  # type: ignore[union-attr]
    rows = db.scalars(select(StoredSecret).where(StoredSecret.owner_id == cfg.id)).all()
    assert len(rows) == 2 and sum(1 for r in rows if r.retired_at is not None) == 1
    (event,) = _audit(db, "provider_config.update")
    assert event.details["encrypted_fields_replaced"] == ["client_secret"]
    assert event.details["fields"] == ["hosted_domain"]
    html = client.get(location).get_data(as_text=True)
    assert "GOCSPX-replaced" not in html and SECRET not in html


def test_duplicate_name_is_an_error_on_the_name_field(client: FlaskClient, make_user: UserFactory) -> None:
    _admin(client, make_user)
    _create_google(client)
    path = "/admin/providers/new/google"
    response = client.post(path, data={**GOOGLE, "name": "GOOGLE (STAFF)", "csrf_token": csrf_token(client, path)})
    html = response.get_data(as_text=True)
    assert response.status_code == 409
    assert 'id="name-error"' in html and "Another provider config already has this name." in html
    assert SECRET not in html and "Enter Client secret again" in html


def test_enable_is_refused_until_complete_then_works(client: FlaskClient, make_user: UserFactory, db: Session) -> None:
    _admin(client, make_user)
    cfg = ProviderConfig(provider_type="generic_api_key", name="Weather", config={"auth_type": "header"})
    db.add(cfg)
    db.commit()
    page = f"/admin/providers/{cfg.id}"
    assert "To enable it, set: Base URL, Header name." in unescape(client.get(page).get_data(as_text=True))
    status, html = _action(client, f"/admin/providers/{cfg.id}/enable", page)
    assert status == 422
    text = unescape(html)
    assert "cannot be enabled until its required settings are set and valid" in text
    assert "Missing or invalid: Base URL, Header name." in text
    assert re.search(r'id="base_url-error"[^>]*>This field is required\.', html)
    (refused,) = _audit(db, "provider_config.enable")
    assert refused.outcome == "failure" and refused.details["missing"] == ["base_url", "header_name"]
    # Fill it in through the form, then enabling works and is audited.
    token = csrf_token(client, page)
    data = {"name": "Weather", "base_url": "https://api.weather.example", "auth_type": "header", "header_name": "X-Key"}
    assert client.post(page, data={**data, "rotation_days": "90", "csrf_token": token}).status_code == 302
    status, _ = _action(client, f"/admin/providers/{cfg.id}/enable", page)
    assert status == 302
    db.expire_all()
    assert db.get(ProviderConfig, cfg.id).enabled  # type: ignore[union-attr]
    assert [e.outcome for e in _audit(db, "provider_config.enable")] == ["failure", "success"]
    status, _ = _action(client, f"/admin/providers/{cfg.id}/disable", page)
    assert status == 302 and len(_audit(db, "provider_config.disable")) == 1


def test_delete_asks_then_removes_the_config_and_its_secrets(
    client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    _admin(client, make_user)
    location = _create_google(client)
    cfg = db.scalars(select(ProviderConfig)).one()
    # Replace once so a retired value exists too: delete removes both.
    token = csrf_token(client, location)
    client.post(location, data={**GOOGLE, "name": "Google (staff)", "client_secret": "GOCSPX-two", "csrf_token": token})
    confirm = client.get(f"/admin/providers/{cfg.id}/delete").get_data(as_text=True)
    assert "Delete “Google (staff)”?" in confirm and "1 stored secret" in confirm
    status, _ = _action(client, f"/admin/providers/{cfg.id}/delete", f"/admin/providers/{cfg.id}/delete")
    assert status == 302
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(ProviderConfig)) == 0
    assert db.scalar(select(func.count()).select_from(StoredSecret)) == 0
    (event,) = _audit(db, "provider_config.delete")
    assert event.details["vault_rows_deleted"] == 2


def test_delete_is_refused_while_accounts_use_it(client: FlaskClient, make_user: UserFactory, db: Session) -> None:
    _admin(client, make_user)
    _create_google(client)
    cfg = db.scalars(select(ProviderConfig)).one()
    db.add(ConnectedAccount(provider_config_id=cfg.id, label="someone"))
    db.commit()
    page = f"/admin/providers/{cfg.id}/delete"
    status, html = _action(client, page, page)
    assert status == 409 and "1 connected account(s) use this provider config." in html
    assert db.get(ProviderConfig, cfg.id) is not None


def test_members_and_strangers_are_kept_out(client: FlaskClient, make_user: UserFactory, db: Session) -> None:
    assert client.get("/admin/providers/").status_code == 302
    anonymous = client.get("/api/account-manager/providers/schema")
    assert anonymous.status_code == 401 and anonymous.get_json()["error"]["code"] == "not_authenticated"
    make_user("member@example.com")
    sign_in(client, "member@example.com")
    assert client.get("/admin/providers/new/google").status_code == 403
    denied = client.get("/api/account-manager/providers/schema")
    assert denied.status_code == 403 and denied.get_json()["error"]["code"] == "permission_denied"
    path = "/admin/providers/new/google"
    response = client.post(path, data={**GOOGLE, "name": "x", "csrf_token": csrf_token(client, "/account/")})
    assert response.status_code == 403
    assert db.scalar(select(func.count()).select_from(ProviderConfig)) == 0


def test_posts_without_csrf_are_refused(client: FlaskClient, make_user: UserFactory, db: Session) -> None:
    _admin(client, make_user)
    _create_google(client)
    cfg = db.scalars(select(ProviderConfig)).one()
    assert client.post(f"/admin/providers/{cfg.id}/delete").status_code == 400
    assert client.post("/admin/providers/new/google", data={**GOOGLE, "name": "x"}).status_code == 400
    assert db.scalar(select(func.count()).select_from(ProviderConfig)) == 1
