"""``/api/account-manager/provider-configs`` on SQLite and PostgreSQL: scopes, non-secret fields only (a
secret in a body is refused on its field), the console's validation and enable rule, audit, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api import tokens
from app.audit import AuditContext
from app.extensions import get_cipher, get_settings
from app.models import AuditEvent, ConnectedAccount, ProviderConfig, StoredSecret
from app.providers import configs
from app.providers.registry import entry
from app.providers.validation import validate_submission
from app.settings import Settings
from tests.conftest import UserFactory, make_settings, sign_in
from tests.support.op import OPClient, running_op

PATH = "/api/account-manager/provider-configs"
CMS = "https://cms.example.com"
GOOGLE_ID = "1234567890-abcdefghijklmnop.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-very-secret-value-0123456789"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_CMS_ORIGINS=CMS)


def _token(db: Session, *scopes: str) -> dict[str, str]:
    raw = tokens.create_token(db, AuditContext(actor="test"), name="CMS", scopes=list(scopes), created_by=None).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def rw(db: Session) -> dict[str, str]:
    return _token(db, "providers:read", "providers:write")


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error: dict[str, Any] = response.get_json()["error"]
    assert error["code"] == code
    return error


def _configs(db: Session) -> list[ProviderConfig]:
    db.expire_all()
    return list(db.scalars(select(ProviderConfig)))


def _google(client: FlaskClient, auth: dict[str, str], name: str = "Google (staff)") -> dict[str, Any]:
    response = client.post(
        PATH, json={"provider_type": "google", "name": name, "config": {"client_id": GOOGLE_ID}}, headers=auth
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def _set_secret(app: Flask, db: Session, config_id: int, value: str = CLIENT_SECRET) -> None:
    """What the edit_provider_config dialog (or `providers apply`) does: store the secret field."""
    cfg = db.get(ProviderConfig, config_id)
    assert cfg is not None
    provider = entry(cfg.provider_type)
    data = {**cfg.config, "client_secret": value}
    clean, errors = validate_submission(provider, "config", data)
    assert errors == {}
    configs.update_config(db, get_cipher(app), get_settings(app), AuditContext(actor="test"), cfg, cfg.name, clean)
    db.commit()


# --- scopes -----------------------------------------------------------------------------------------------


def test_reading_needs_providers_read_and_changing_providers_write(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    reader = _token(db, "providers:read")
    writer = _token(db, "providers:write")
    assert client.get(PATH).status_code == 401
    assert client.get(PATH, headers=reader).status_code == 200
    error = _error(client.get(PATH, headers=writer), 403, "permission_denied")
    assert "'providers:read'" in error["message"]
    error = _error(
        client.post(PATH, json={"provider_type": "anthropic", "name": "A"}, headers=reader), 403, "permission_denied"
    )
    assert "'providers:write'" in error["message"]
    created = client.post(PATH, json={"provider_type": "anthropic", "name": "A"}, headers=writer)
    assert created.status_code == 201
    config_id = created.get_json()["id"]
    _error(client.patch(f"{PATH}/{config_id}", json={"name": "B"}, headers=reader), 403, "permission_denied")
    _error(client.delete(f"{PATH}/{config_id}", headers=reader), 403, "permission_denied")
    # A member's session has no provider scopes; an admin's has them all (with CSRF for changes).
    make_user("ann@example.com")
    sign_in(client, "ann@example.com")
    _error(client.get(PATH), 403, "permission_denied")
    admin = app.test_client()
    make_user("root@example.com", role="admin")
    sign_in(admin, "root@example.com")
    assert admin.get(f"{PATH}/{config_id}").get_json()["name"] == "A"
    _error(admin.patch(f"{PATH}/{config_id}", json={"name": "B"}), 403, "permission_denied")  # no CSRF token
    csrf = admin.get("/api/auth/session").get_json()["csrf_token"]
    changed = admin.patch(f"{PATH}/{config_id}", json={"name": "B"}, headers={"X-CSRFToken": csrf})
    assert changed.status_code == 200 and changed.get_json()["name"] == "B"


# --- create -----------------------------------------------------------------------------------------------


def test_create_returns_the_non_secret_snapshot_and_audits_the_token(
    client: FlaskClient, db: Session, rw: dict[str, str]
) -> None:
    body = _google(client, rw)
    assert body["provider_type"] == "google" and body["auth_mode"] == "oidc"
    assert body["enabled"] is False and body["config"]["client_id"] == GOOGLE_ID
    # Every secret field of the type is listed, the device-flow client's too (unused while the flow is off).
    assert body["secrets"] == {
        "client_secret": {"set": False, "changed_at": None},
        "device_client_secret": {"set": False, "changed_at": None},
    }
    assert set(body["missing"]) == {"client_secret"}
    assert body["account_count"] == 0
    [event] = db.scalars(select(AuditEvent).where(AuditEvent.action == "provider_config.create")).all()
    assert event.actor.startswith("service_token:") and event.target == f"provider_config:{body['id']}"
    assert event.details["encrypted_fields"] == []


@pytest.mark.parametrize("secret_value", [CLIENT_SECRET, "", None])
def test_a_secret_field_in_the_body_is_refused_on_that_field(
    client: FlaskClient, db: Session, rw: dict[str, str], secret_value: str | None
) -> None:
    response = client.post(
        PATH,
        json={
            "provider_type": "google",
            "name": "G",
            "config": {"client_id": GOOGLE_ID, "client_secret": secret_value},
        },
        headers=rw,
    )
    error = _error(response, 422, "validation_failed")
    assert set(error["fields"]) == {"config.client_secret"}
    assert "secure dialog" in error["hint"] and "ami-auth providers apply" in error["hint"]
    assert "POST /api/account-manager/dialogs" in error["hint"]
    assert _configs(db) == []
    assert CLIENT_SECRET not in response.get_data(as_text=True)
    assert db.scalars(select(StoredSecret)).all() == []


def test_values_are_checked_by_the_catalog_with_the_console_messages(
    client: FlaskClient, db: Session, rw: dict[str, str]
) -> None:
    response = client.post(
        PATH, json={"provider_type": "google", "name": "G", "config": {"client_id": "nope", "x": 1}}, headers=rw
    )
    error = _error(response, 422, "validation_failed")
    _clean, expected = validate_submission(
        entry("google"), "config", {"client_id": "nope", "x": 1}, secrets_set={"client_secret"}
    )
    assert error["fields"] == {f"config.{k}": v for k, v in expected.items()}
    assert "config.x" in error["fields"] and "config.client_id" in error["fields"]
    bad = [
        ({"provider_type": "nope", "name": "X"}, "provider_type"),
        ({"provider_type": "anthropic", "name": "   "}, "name"),
        ({"provider_type": "anthropic", "name": "a\x00b"}, "name"),
        ({"provider_type": "anthropic", "name": "X", "enabled": "yes"}, "enabled"),
        ({"provider_type": "anthropic", "name": "X", "config": []}, "config"),
        ({"provider_type": "anthropic", "name": "X", "extra": 1}, "extra"),
        ({"name": "X"}, "provider_type"),
    ]
    for body, field in bad:
        assert field in _error(client.post(PATH, json=body, headers=rw), 422, "validation_failed")["fields"], body
    _error(client.post(PATH, data="not json", content_type="application/json", headers=rw), 422, "validation_failed")
    # Not sent as JSON at all: the wrong media type (RFC 9110 section 15.5.16).
    _error(client.post(PATH, data="not json", headers=rw), 415, "validation_failed")
    assert _configs(db) == []


def test_names_are_unique_regardless_of_case(client: FlaskClient, rw: dict[str, str]) -> None:
    _google(client, rw, "Google")
    error = _error(
        client.post(PATH, json={"provider_type": "anthropic", "name": "GOOGLE"}, headers=rw), 409, "conflict"
    )
    assert "name" in error["fields"]


def test_enabling_needs_a_complete_config_like_the_console(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str]
) -> None:
    # A type with a required secret cannot be enabled at creation: nothing is created.
    response = client.post(
        PATH,
        json={"provider_type": "google", "name": "G", "enabled": True, "config": {"client_id": GOOGLE_ID}},
        headers=rw,
    )
    error = _error(response, 422, "invalid_config")
    assert set(error["fields"]) == {"config.client_secret"}
    assert "Client secret" in error["hint"] and "secure dialog" in error["hint"]
    assert _configs(db) == []
    # A type without secrets can.
    anthropic = client.post(PATH, json={"provider_type": "anthropic", "name": "A", "enabled": True}, headers=rw)
    assert anthropic.status_code == 201 and anthropic.get_json()["enabled"] is True
    # PATCH is one transaction: a refused enable undoes the rename in the same request.
    config_id = _google(client, rw)["id"]
    refused = client.patch(f"{PATH}/{config_id}", json={"name": "Renamed", "enabled": True}, headers=rw)
    assert set(_error(refused, 422, "invalid_config")["fields"]) == {"config.client_secret"}
    assert client.get(f"{PATH}/{config_id}", headers=rw).get_json()["name"] == "Google (staff)"
    # Once the secret is set (secure dialog / providers apply) the same call enables it.
    _set_secret(app, db, config_id)
    snapshot = client.get(f"{PATH}/{config_id}", headers=rw).get_json()
    assert snapshot["secrets"]["client_secret"]["set"] is True and snapshot["missing"] == {}
    enabled = client.patch(f"{PATH}/{config_id}", json={"enabled": True}, headers=rw)
    assert enabled.status_code == 200 and enabled.get_json()["enabled"] is True
    assert CLIENT_SECRET not in enabled.get_data(as_text=True)
    actions = [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert "provider_config.enable" in actions


def test_patch_merges_values_and_keeps_secrets(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str]
) -> None:
    config_id = _google(client, rw)["id"]
    _set_secret(app, db, config_id)
    changed = client.patch(f"{PATH}/{config_id}", json={"config": {"hosted_domain": "example.com"}}, headers=rw)
    body = changed.get_json()
    assert changed.status_code == 200, body
    assert body["config"]["client_id"] == GOOGLE_ID and body["config"]["hosted_domain"] == "example.com"
    assert body["secrets"]["client_secret"]["set"] is True
    # A secret in a PATCH is refused too, and changes nothing.
    refused = client.patch(f"{PATH}/{config_id}", json={"config": {"client_secret": "x"}, "name": "Y"}, headers=rw)
    assert set(_error(refused, 422, "validation_failed")["fields"]) == {"config.client_secret"}
    cfg = db.get(ProviderConfig, config_id)
    db.refresh(cfg)
    assert cfg is not None and cfg.name == "Google (staff)"
    stored = configs.read_secrets(db, get_cipher(app), entry("google"), cfg)["client_secret"]
    assert stored is not None and stored.reveal() == CLIENT_SECRET
    # Null clears an optional field.
    cleared = client.patch(f"{PATH}/{config_id}", json={"config": {"hosted_domain": None}}, headers=rw)
    assert cleared.get_json()["config"].get("hosted_domain") is None
    _error(client.patch(f"{PATH}/9999", json={"name": "Z"}, headers=rw), 404, "not_found")


def test_list_filters(client: FlaskClient, rw: dict[str, str]) -> None:
    _google(client, rw)
    client.post(PATH, json={"provider_type": "anthropic", "name": "A", "enabled": True}, headers=rw)
    names = [c["name"] for c in client.get(PATH, headers=rw).get_json()["provider_configs"]]
    assert sorted(names) == ["A", "Google (staff)"]
    only = client.get(f"{PATH}?provider_type=anthropic", headers=rw).get_json()["provider_configs"]
    assert [c["name"] for c in only] == ["A"]
    enabled = client.get(f"{PATH}?enabled=true", headers=rw).get_json()["provider_configs"]
    assert [c["name"] for c in enabled] == ["A"]
    disabled = client.get(f"{PATH}?enabled=false", headers=rw).get_json()["provider_configs"]
    assert [c["name"] for c in disabled] == ["Google (staff)"]
    for query in ("provider_type=nope", "enabled=1", "enabled="):
        _error(client.get(f"{PATH}?{query}", headers=rw), 422, "validation_failed")


def test_delete_removes_the_config_and_its_secrets_but_not_while_accounts_use_it(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str]
) -> None:
    config_id = _google(client, rw)["id"]
    _set_secret(app, db, config_id)
    _set_secret(app, db, config_id, "a-second-value-replacing-the-first")  # a retired value too
    assert len(db.scalars(select(StoredSecret).where(StoredSecret.owner_id == config_id)).all()) == 2
    account = ConnectedAccount(provider_config_id=config_id, label="someone")
    db.add(account)
    db.commit()
    error = _error(client.delete(f"{PATH}/{config_id}", headers=rw), 409, "conflict")
    assert "connected account" in error["message"]
    db.delete(account)
    db.commit()
    assert client.delete(f"{PATH}/{config_id}", headers=rw).status_code == 204
    assert _configs(db) == []
    assert db.scalars(select(StoredSecret).where(StoredSecret.owner_type == "provider_config")).all() == []
    _error(client.delete(f"{PATH}/{config_id}", headers=rw), 404, "not_found")
    _error(client.get(f"{PATH}/{config_id}", headers=rw), 404, "not_found")


def test_a_config_snapshot_never_contains_a_stored_secret(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str]
) -> None:
    config_id = _google(client, rw)["id"]
    _set_secret(app, db, config_id)
    client.patch(f"{PATH}/{config_id}", json={"enabled": True}, headers=rw)
    bodies = [
        client.get(PATH, headers=rw).get_data(as_text=True),
        client.get(f"{PATH}/{config_id}", headers=rw).get_data(as_text=True),
        client.patch(f"{PATH}/{config_id}", json={"name": "N"}, headers=rw).get_data(as_text=True),
    ]
    assert all(CLIENT_SECRET not in body for body in bodies)


# --- connection test ----------------------------------------------------------------------------------------


def test_connection_test_fetches_discovery_at_the_real_op_and_names_the_field_when_down(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str]
) -> None:
    with running_op(clients=[OPClient("ami-auth", "op-secret")]) as op:
        body = {
            "provider_type": "generic_oidc",
            "name": "Corp ID",
            "config": {"issuer": op.issuer, "client_id": "ami-auth"},
        }
        created = client.post(PATH, json=body, headers=rw)
        assert created.status_code == 201, created.get_data(as_text=True)
        config_id = created.get_json()["id"]
        _set_secret(app, db, config_id, "op-secret")
        tested = client.post(f"{PATH}/{config_id}/test", headers=rw)
        assert tested.status_code == 200, tested.get_data(as_text=True)
        result = tested.get_json()
        assert result["status"] == "ok" and result["code"] is None
        assert result["learned"]["Issuer"] == op.issuer and "signing key(s)" in result["learned"]["JWKS"]
        assert "op-secret" not in tested.get_data(as_text=True)
    # The provider is gone: 200 with the failure, its code and the field to blame.
    down = client.post(f"{PATH}/{config_id}/test", headers=rw).get_json()
    assert down["status"] == "failed" and down["code"] == "provider_unreachable" and down["field"] == "issuer", down
    # Reading is not enough to make outbound calls; API-key types have nothing to test on the config.
    assert client.post(f"{PATH}/{config_id}/test", headers=_token(db, "providers:read")).status_code == 403
    openai = client.post(PATH, json={"provider_type": "openai", "name": "OpenAI", "config": {}}, headers=rw).get_json()
    assert client.post(f"{PATH}/{openai['id']}/test", headers=rw).get_json()["status"] == "unavailable"
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "provider_config.test")).all()
    assert [(e.outcome, e.details["status"]) for e in events] == [
        ("success", "ok"),
        ("failure", "failed"),
        ("untested", "unavailable"),  # nothing was tested: not a success
    ]
    assert client.post(f"{PATH}/424242/test", headers=rw).status_code == 404
