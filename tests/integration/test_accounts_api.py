"""``/api/account-manager/accounts`` on SQLite and PostgreSQL: scopes, snapshots (never a secret), the
derived statuses, filters and paging, and refresh / revoke / delete for API-key accounts (the Anthropic
stand-in) and OAuth accounts (the real OP)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api import tokens
from app.api.account_snapshots import STATUSES, derive_status
from app.audit import AuditContext
from app.connectors import accounts
from app.extensions import get_cipher, get_settings
from app.models import AuditEvent, ConnectedAccount, ProviderConfig, StoredSecret, utcnow
from app.net import get_client
from app.oauth.connections import load_tokens
from app.providers.registry import entry
from app.providers.templating import render_template_string
from app.providers.validation import effective_values
from app.settings import Settings
from app.vault import Secret
from tests.conftest import UserFactory, make_settings, sign_in
from tests.support.accounts import CTX, make_account, make_config
from tests.support.oauth_app import create_config, follow_callback, generic_values, location
from tests.support.op import OPClient, OpenIDProvider, op_login, running_op
from tests.support.vendors.anthropic import Anthropic

pytest_plugins = ("tests.support.vendor_fixtures",)

PATH = "/api/account-manager/accounts"
BASE = "http://127.0.0.1:5000"
MEMBER = "member@example.com"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        AMI_AUTH_OUTBOUND_TIMEOUT="2",
        AMI_AUTH_OUTBOUND_RETRIES="0",
        AMI_AUTH_CMS_ORIGINS="https://cms.example.com",
    )


def _token(db: Session, *scopes: str) -> dict[str, str]:
    raw = tokens.create_token(db, AuditContext(actor="test"), name="CMS", scopes=list(scopes), created_by=None).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def rw(db: Session) -> dict[str, str]:
    return _token(db, "accounts:read", "accounts:write")


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error: dict[str, Any] = response.get_json()["error"]
    assert error["code"] == code
    return error


def _anthropic(app: Flask, db: Session, vendor: Anthropic, *, label: str = "Claude") -> tuple[ConnectedAccount, str]:
    """An active Anthropic account whose key the stand-in knows."""
    cfg = db.scalars(select(ProviderConfig).where(ProviderConfig.provider_type == "anthropic")).first()
    if cfg is None:
        cfg = make_config(db, get_cipher(app), get_settings(app), "anthropic", {})
    account = make_account(db, cfg, {"base_url": vendor.url}, label=label)
    key = vendor.add_key()
    with app.app_context():
        accounts.save_secrets(
            db, get_cipher(app), get_client(app), get_settings(app), CTX, account, {"api_key": Secret(key)}
        )
    db.commit()
    return account, key


def _secret_rows(db: Session, account_id: int) -> list[StoredSecret]:
    db.expire_all()
    return list(
        db.scalars(
            select(StoredSecret).where(
                StoredSecret.owner_type == "connected_account", StoredSecret.owner_id == account_id
            )
        )
    )


# --- scopes and snapshots ---------------------------------------------------------------------------------


def test_reading_needs_accounts_read_and_actions_accounts_write(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, anthropic_standin: Anthropic
) -> None:
    account, _key = _anthropic(app, db, anthropic_standin)
    reader = _token(db, "accounts:read")
    writer = _token(db, "accounts:write")
    assert client.get(PATH).status_code == 401
    assert client.get(PATH, headers=reader).status_code == 200
    assert "'accounts:read'" in _error(client.get(PATH, headers=writer), 403, "permission_denied")["message"]
    for method, path in (
        ("POST", f"{PATH}/{account.id}/refresh"),
        ("POST", f"{PATH}/{account.id}/revoke"),
        ("DELETE", f"{PATH}/{account.id}"),
    ):
        error = _error(client.open(path, method=method, headers=reader), 403, "permission_denied")
        assert "'accounts:write'" in error["message"]
    make_user(MEMBER)
    sign_in(client, MEMBER)
    _error(client.get(PATH), 403, "permission_denied")
    denied = [e for e in db.scalars(select(AuditEvent)) if e.outcome == "denied"]
    assert denied, "refusals are audited"


def test_a_snapshot_says_what_the_account_is_and_never_holds_a_secret(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str], anthropic_standin: Anthropic
) -> None:
    account, key = _anthropic(app, db, anthropic_standin)
    body = client.get(f"{PATH}/{account.id}", headers=rw).get_json()
    assert body["id"] == account.id and body["provider_type"] == "anthropic" and body["auth_mode"] == "api_key"
    assert body["provider_config"]["name"] == "Anthropic test" and body["provider_config"]["enabled"] is True
    assert body["label"] == "Claude" and body["identifiers"]["base_url"] == anthropic_standin.url
    assert body["status"] == "active" and body["status_reason"] == "ok" and body["last_error"] is None
    assert body["rotated_at"] is not None and body["last_verified_at"] is not None and body["expires_at"] is None
    pages = [
        client.get(PATH, headers=rw).get_data(as_text=True),
        client.get(f"{PATH}/{account.id}", headers=rw).get_data(as_text=True),
        client.post(f"{PATH}/{account.id}/refresh", headers=rw).get_data(as_text=True),
        client.post(f"{PATH}/{account.id}/revoke", headers=rw).get_data(as_text=True),
        client.delete(f"{PATH}/{account.id}", headers=rw).get_data(as_text=True),
    ]
    assert all(key not in page and key[10:40] not in page for page in pages)
    _error(client.get(f"{PATH}/{account.id}", headers=rw), 404, "not_found")
    assert client.get(f"{PATH}/99999999999", headers=rw).status_code == 404


# --- statuses, filters, paging ------------------------------------------------------------------------------


def _states(db: Session) -> dict[str, tuple[str, str]]:
    """One account per kind of row, by label → the (status, status_reason) the CMS must see."""
    now = utcnow()
    on = ProviderConfig(provider_type="generic_oidc", name="On", enabled=True, config={})
    off = ProviderConfig(provider_type="openai", name="Off", enabled=False, config={})
    keys = ProviderConfig(provider_type="openai", name="Keys", enabled=True, config={})
    db.add_all([on, off, keys])
    db.flush()
    rows: dict[str, tuple[ProviderConfig, dict[str, Any], tuple[str, str]]] = {
        "fresh": (on, {"status": "active", "expires_at": now + timedelta(hours=2)}, ("active", "ok")),
        "soon": (on, {"status": "active", "expires_at": now + timedelta(minutes=5)}, ("expiring", "refresh_due")),
        "lapsed": (on, {"status": "active", "expires_at": now - timedelta(minutes=1)}, ("expiring", "refresh_due")),
        "failing-refresh": (
            on,
            {
                "status": "active",
                "expires_at": now - timedelta(minutes=1),
                "last_error_code": "provider_unreachable",
                "last_error_hint": "The provider could not be reached.",
                "last_error_at": now,
            },
            ("error", "refresh_failing"),
        ),
        "retrying": (
            on,
            {"status": "active", "expires_at": now + timedelta(hours=1), "last_error_code": "rate_limited"},
            ("active", "ok"),
        ),
        "refused": (on, {"status": "consent_required"}, ("consent_required", "consent_required")),
        "ran-out": (on, {"status": "expired"}, ("consent_required", "token_expired")),
        "key": (keys, {"status": "active"}, ("active", "ok")),
        "no-key": (keys, {"status": "pending"}, ("disabled", "no_secret")),
        "unchecked-key": (keys, {"status": "unverified"}, ("active", "unverified")),
        "bad-key": (
            keys,
            {"status": "failing", "last_error_code": "invalid_credentials"},
            ("error", "verification_failed"),
        ),
        "config-off": (off, {"status": "active"}, ("disabled", "config_disabled")),
        "odd": (keys, {"status": "something-new"}, ("error", "unknown")),
    }
    for label, (cfg, values, _expected) in rows.items():
        db.add(ConnectedAccount(provider_config_id=cfg.id, label=label, **values))
    db.commit()
    return {label: expected for label, (_cfg, _values, expected) in rows.items()}


def test_statuses_are_derived_the_same_in_snapshots_and_in_the_filter(
    client: FlaskClient, db: Session, rw: dict[str, str], settings: Settings
) -> None:
    expected = _states(db)
    snapshots = client.get(f"{PATH}?limit=100", headers=rw).get_json()["accounts"]
    assert {s["label"]: (s["status"], s["status_reason"]) for s in snapshots} == expected
    failing = next(s for s in snapshots if s["label"] == "failing-refresh")
    assert failing["last_error"]["code"] == "provider_unreachable" and failing["last_error"]["at"] is not None
    for status in STATUSES:
        found = client.get(f"{PATH}?status={status}&limit=100", headers=rw).get_json()["accounts"]
        assert sorted(s["label"] for s in found) == sorted(k for k, v in expected.items() if v[0] == status), status
    # derive_status is the function behind both; the margin is AMI_AUTH_TOKEN_REFRESH_MARGIN_MINUTES.
    margin = timedelta(minutes=settings.token_refresh_margin_minutes)
    soon = db.scalars(select(ConnectedAccount).where(ConnectedAccount.label == "soon")).one()
    assert derive_status(soon, utcnow(), margin) == ("expiring", "refresh_due")
    assert derive_status(soon, utcnow(), timedelta(minutes=1)) == ("active", "ok")


def test_filters_and_keyset_paging(
    client: FlaskClient, db: Session, rw: dict[str, str], make_user: UserFactory
) -> None:
    expected = _states(db)
    owner = make_user(MEMBER)
    db.expire_all()
    mine = db.scalars(select(ConnectedAccount).where(ConnectedAccount.label.in_(["key", "no-key"]))).all()
    for account in mine:
        account.user_id = owner.id
    db.commit()
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = f"{PATH}?limit=5" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(query, headers=rw).get_json()
        pages += 1
        assert len(body["accounts"]) <= 5
        seen += [s["label"] for s in body["accounts"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
    by_type = client.get(f"{PATH}?provider_type=openai&limit=100", headers=rw).get_json()["accounts"]
    assert sorted(s["label"] for s in by_type) == ["bad-key", "config-off", "key", "no-key", "odd", "unchecked-key"]
    keys_id = db.scalars(select(ProviderConfig.id).where(ProviderConfig.name == "Keys")).one()
    by_config = client.get(f"{PATH}?provider_config_id={keys_id}&limit=100", headers=rw).get_json()["accounts"]
    assert sorted(s["label"] for s in by_config) == ["bad-key", "key", "no-key", "odd", "unchecked-key"]
    by_user = client.get(f"{PATH}?user_id={owner.id}", headers=rw).get_json()["accounts"]
    assert sorted(s["label"] for s in by_user) == ["key", "no-key"]
    combined = client.get(f"{PATH}?user_id={owner.id}&status=disabled", headers=rw).get_json()["accounts"]
    assert [s["label"] for s in combined] == ["no-key"]
    assert client.get(f"{PATH}?user_id=424242", headers=rw).get_json() == {"accounts": [], "next_cursor": None}
    assert client.get(f"{PATH}?cursor=9999999999", headers=rw).get_json()["accounts"] == []
    for query in ("status=broken", "limit=0", "limit=101", "limit=", "cursor=abc", "user_id=0", "provider_type=x"):
        field = query.split("=")[0]
        assert field in _error(client.get(f"{PATH}?{query}", headers=rw), 422, "validation_failed")["fields"]


# --- refresh, revoke, delete: API keys --------------------------------------------------------------------


def test_refresh_reverifies_an_api_key_and_records_the_outcome(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str], anthropic_standin: Anthropic
) -> None:
    account, key = _anthropic(app, db, anthropic_standin)
    checks = len(anthropic_standin.requests_to("/v1/models"))
    ok = client.post(f"{PATH}/{account.id}/refresh", headers=rw).get_json()
    assert ok["refresh"] == {"outcome": "verified", "error": None}
    assert ok["account"]["status"] == "active"
    assert len(anthropic_standin.requests_to("/v1/models")) == checks + 1
    anthropic_standin.revoke_key(key)
    failed = client.post(f"{PATH}/{account.id}/refresh", headers=rw)
    assert failed.status_code == 200
    body = failed.get_json()
    assert body["refresh"]["outcome"] == "failed" and body["refresh"]["error"]["code"] == "invalid_credentials"
    assert body["account"]["status"] == "error" and body["account"]["status_reason"] == "verification_failed"
    assert body["account"]["last_error"]["code"] == "invalid_credentials"
    verify_events = db.scalars(select(AuditEvent).where(AuditEvent.action == "account.verify")).all()
    assert [e.outcome for e in verify_events] == ["success", "failure"]
    assert all(e.actor.startswith("service_token:") for e in verify_events)


def test_anthropic_region_maps_to_its_endpoint_and_base_url_overrides_it(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str], anthropic_standin: Anthropic
) -> None:
    provider = entry("anthropic")
    # The region alone: its endpoint (no network here; the catalog renders the URL verification uses).
    values = effective_values(provider, "account", {"region": "global"})
    assert render_template_string(provider.endpoints["models"], account=values) == "https://api.anthropic.com/v1/models"
    # Base URL set: it wins, for verification and for what the CMS reads.
    account, _key = _anthropic(app, db, anthropic_standin)
    before = len(anthropic_standin.requests_to("/v1/models"))
    done = client.post(f"{PATH}/{account.id}/refresh", headers=rw).get_json()
    assert done["refresh"]["outcome"] == "verified"
    assert len(anthropic_standin.requests_to("/v1/models")) == before + 1
    assert done["account"]["identifiers"]["base_url"] == anthropic_standin.url
    assert done["account"]["identifiers"]["region"] == "global"
    # A workspace id an earlier version stored is not a field any more: never shown, never sent.
    account.identifiers = {**(account.identifiers or {}), "workspace_id": "wrkspc_legacy"}
    db.commit()
    again = client.post(f"{PATH}/{account.id}/refresh", headers=rw).get_json()
    assert again["refresh"]["outcome"] == "verified" and "workspace_id" not in again["account"]["identifiers"]
    assert provider.field("account", "workspace_id") is None


def test_refresh_is_refused_when_it_cannot_be_tried(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str], anthropic_standin: Anthropic
) -> None:
    account, _key = _anthropic(app, db, anthropic_standin)
    pending = make_account(db, account.provider_config, {"base_url": anthropic_standin.url}, label="Pending")
    error = _error(client.post(f"{PATH}/{pending.id}/refresh", headers=rw), 409, "conflict")
    assert "no secret" in error["message"] and "replace_secret" in error["hint"]
    cfg = db.get(ProviderConfig, account.provider_config_id)
    assert cfg is not None
    cfg.enabled = False
    db.commit()
    assert "disabled" in _error(client.post(f"{PATH}/{account.id}/refresh", headers=rw), 409, "conflict")["message"]
    _error(client.post(f"{PATH}/9999/refresh", headers=rw), 404, "not_found")
    # The same cause answers the same code and status everywhere: the headers endpoint and the dialogs too.
    headers = _error(
        client.get(f"{PATH}/{account.id}/headers", headers=_token(db, "accounts:headers")), 409, "conflict"
    )
    assert "disabled" in headers["message"]
    dialog = client.post(
        "/api/account-manager/dialogs",
        json={"kind": "replace_secret", "account_id": account.id, "return_to": "https://cms.example.com/"},
        headers=rw,
    )
    assert "disabled" in _error(dialog, 409, "conflict")["message"]


def test_a_provider_outage_is_not_reported_as_a_bad_key(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str], anthropic_standin: Anthropic
) -> None:
    account, _key = _anthropic(app, db, anthropic_standin)
    before = client.get(f"{PATH}/{account.id}", headers=rw).get_json()
    anthropic_standin.fail_next(503, path="/v1/models")
    error = _error(client.post(f"{PATH}/{account.id}/refresh", headers=rw), 502, "provider_unreachable")
    assert "server error" in error["message"]
    after = client.get(f"{PATH}/{account.id}", headers=rw).get_json()
    # Nothing recorded against the key: still active, no last_error, not verified again.
    assert (after["status"], after["status_reason"], after["last_error"]) == ("active", "ok", None)
    assert after["last_verified_at"] == before["last_verified_at"]
    [event] = db.scalars(
        select(AuditEvent).where(AuditEvent.action == "connected_account.refresh").order_by(AuditEvent.id)
    ).all()
    assert event.outcome == "failure" and event.details["code"] == "provider_unreachable"
    assert event.details["recorded"] is False
    # The provider rate-limiting us is no verdict on the key either: 429 with its Retry-After.
    anthropic_standin.rate_limit_next(retry_after=30, path="/v1/models")
    limited = client.post(f"{PATH}/{account.id}/refresh", headers=rw)
    _error(limited, 429, "rate_limited")
    assert limited.headers["Retry-After"] == "30"
    assert client.get(f"{PATH}/{account.id}", headers=rw).get_json()["status"] == "active"


def test_snapshots_carry_the_non_secret_provider_data(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str], huggingface_standin: Any
) -> None:
    huggingface_standin.add_user("ada", orgs=[("acme-research", "write")])
    huggingface_standin.set_rate_limit(remaining=990, reset=120)
    token = huggingface_standin.add_token("ada", role="write")
    cfg = make_config(db, get_cipher(app), get_settings(app), "huggingface", {})
    hub = make_account(db, cfg, {"base_url": huggingface_standin.url}, label="Hub")
    with app.app_context():
        accounts.save_secrets(
            db, get_cipher(app), get_client(app), get_settings(app), CTX, hub, {"api_token": Secret(token)}
        )
    db.commit()
    data = client.get(f"{PATH}/{hub.id}", headers=rw).get_json()["provider_data"]
    assert data["orgs"] == ["acme-research"] and data["user_name"] == "ada" and data["token_role"] == "write"
    assert data["rate_limit"]["remaining"] == 990
    assert token not in json.dumps(data)

    # Entra ID: what the Graph hook kept (app roles, tenant) — never the raw claims.
    azure = ProviderConfig(provider_type="azure_ad", name="Entra", enabled=True, config={})
    smtp = ProviderConfig(provider_type="smtp", name="Mail", enabled=True, config={"host": "smtp.example.com"})
    db.add_all([azure, smtp])
    db.flush()
    signed = ConnectedAccount(
        provider_config_id=azure.id,
        label="ann@corp.example",
        status="active",
        identifiers={"email": "ann@corp.example"},
        provider_data={"userinfo": {"sub": "x", "email": "ann@corp.example"}, "roles": ["AMI.Admin"], "tenant": "t1"},
    )
    mailer = ConnectedAccount(
        provider_config_id=smtp.id,
        label="Mailer",
        status="active",
        identifiers={"from_address": "no-reply@example.com", "daily_send_cap": 500},
        send_day=utcnow().date().isoformat(),
        send_count=42,
    )
    db.add_all([signed, mailer])
    db.commit()
    graph = client.get(f"{PATH}/{signed.id}", headers=rw).get_json()
    assert graph["provider_data"] == {"roles": ["AMI.Admin"], "tenant": "t1"}
    assert graph["identifiers"] == {"email": "ann@corp.example"} and "mail" not in graph
    mail = client.get(f"{PATH}/{mailer.id}", headers=rw).get_json()
    assert mail["mail"] == {"daily_cap": 500, "sent_today": 42}


def test_revoke_forgets_an_api_key_the_provider_cannot_revoke_and_keeps_the_account(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str], anthropic_standin: Anthropic
) -> None:
    account, key = _anthropic(app, db, anthropic_standin)
    # A replaced key is kept for rollback: revoking deletes it too.
    with app.app_context():
        accounts.save_secrets(
            db,
            get_cipher(app),
            get_client(app),
            get_settings(app),
            CTX,
            db.get(ConnectedAccount, account.id),  # type: ignore[arg-type]
            {"api_key": Secret(anthropic_standin.add_key())},
        )
    db.commit()
    assert len(_secret_rows(db, account.id)) == 2
    response = client.post(f"{PATH}/{account.id}/revoke", headers=rw)
    assert response.status_code == 200
    body = response.get_json()
    assert body["revocation"]["outcome"] == "unsupported"
    assert "Anthropic Console" in body["revocation"]["hint"]
    assert body["account"]["status"] == "disabled" and body["account"]["status_reason"] == "no_secret"
    assert _secret_rows(db, account.id) == []
    headers = _token(db, "accounts:headers")
    # No secret stored: 409 conflict, as refresh answers for the same cause.
    assert client.get(f"{PATH}/{account.id}/headers", headers=headers).status_code == 409
    assert client.post(f"{PATH}/{account.id}/refresh", headers=rw).status_code == 409
    again = client.post(f"{PATH}/{account.id}/revoke", headers=rw).get_json()
    assert again["revocation"]["outcome"] == "nothing_stored"
    [event, _again] = db.scalars(select(AuditEvent).where(AuditEvent.action == "connected_account.revoke")).all()
    assert event.details["revoke"] == "unsupported" and event.details["vault_rows_deleted"] == 2
    assert key not in str(event.details)


def test_delete_removes_the_account_and_every_ciphertext(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str], anthropic_standin: Anthropic
) -> None:
    account, key = _anthropic(app, db, anthropic_standin)
    other, _other_key = _anthropic(app, db, anthropic_standin, label="Other")
    account_id = account.id
    assert _secret_rows(db, account_id)
    response = client.delete(f"{PATH}/{account_id}", headers=rw)
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == account_id and body["deleted"] is True
    assert body["revocation"]["outcome"] == "unsupported" and body["revocation"]["hint"]
    db.expire_all()
    assert db.get(ConnectedAccount, account_id) is None
    assert _secret_rows(db, account_id) == []
    assert _secret_rows(db, other.id), "only that account's ciphertext goes"
    ciphertexts = b"".join(r.ciphertext for r in db.scalars(select(StoredSecret)))
    assert key.encode() not in ciphertexts
    [event] = db.scalars(select(AuditEvent).where(AuditEvent.action == "account.delete")).all()
    assert event.actor.startswith("service_token:") and event.details["vault_rows_deleted"] == 1
    _error(client.delete(f"{PATH}/{account_id}", headers=rw), 404, "not_found")
    _error(client.delete(f"{PATH}/{other.id}?force=maybe", headers=rw), 422, "validation_failed")


# --- refresh, revoke, delete: OAuth against the real OP ------------------------------------------------------


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    client = OPClient("ami-auth", "op-secret", extra={"redirect_uris": [f"{BASE}/oauth/{i}/callback" for i in (1, 2)]})
    with running_op(clients=[client], ttl={"AccessToken": 3600}, omitUnchangedRefreshToken=True) as provider:
        yield provider


def _connect(app: Flask, op: OpenIDProvider, make_user: UserFactory) -> int:
    """A member connects an account at the OP through the app's own pages; returns its id."""
    make_user(MEMBER)
    config_id = create_config(app, "generic_oidc", "Corp ID", generic_values(op.issuer, op.client))
    assert config_id in (1, 2), "the OP client knows the callbacks of configs 1 and 2"
    browser = app.test_client()
    sign_in(browser, MEMBER)
    start = browser.get(f"/account/connections/connect/{config_id}")
    done = follow_callback(browser, op_login(location(start), "alice"))
    return int(location(done).rsplit("-", 1)[1])


def test_oauth_refresh_gets_a_new_access_token(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str], op: OpenIDProvider, make_user: UserFactory
) -> None:
    account_id = _connect(app, op, make_user)
    before = load_tokens(db, get_cipher(app), account_id)
    assert before is not None and before.refresh_token
    body = client.post(f"{PATH}/{account_id}/refresh", headers=rw).get_json()
    assert body["refresh"] == {"outcome": "refreshed", "error": None}
    assert body["account"]["status"] == "active" and body["account"]["auth_mode"] == "oidc"
    assert body["account"]["expires_at"] is not None and "openid" in body["account"]["scopes"]
    after = load_tokens(db, get_cipher(app), account_id)
    assert after is not None and after.access_token != before.access_token
    text = client.get(f"{PATH}/{account_id}", headers=rw).get_data(as_text=True)
    assert before.access_token not in text and after.access_token not in text and before.refresh_token not in text
    [event] = db.scalars(select(AuditEvent).where(AuditEvent.action == "connected_account.refresh")).all()
    assert event.outcome == "success" and event.actor.startswith("service_token:")


def test_oauth_revoke_ends_the_grant_and_asks_for_a_reconnect(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str], op: OpenIDProvider, make_user: UserFactory
) -> None:
    account_id = _connect(app, op, make_user)
    body = client.post(f"{PATH}/{account_id}/revoke", headers=rw).get_json()
    assert body["revocation"]["outcome"] == "revoked"
    assert body["account"]["status"] == "consent_required"
    assert _secret_rows(db, account_id) == []
    # Nothing left to refresh with: a refresh now fails and says the user must reconnect.
    failed = client.post(f"{PATH}/{account_id}/refresh", headers=rw).get_json()
    assert failed["refresh"]["outcome"] == "failed"
    assert failed["account"]["status"] == "consent_required"


def test_oauth_delete_revokes_then_removes_and_force_skips_an_unreachable_provider(
    app: Flask, client: FlaskClient, db: Session, rw: dict[str, str], op: OpenIDProvider, make_user: UserFactory
) -> None:
    account_id = _connect(app, op, make_user)
    body = client.delete(f"{PATH}/{account_id}", headers=rw).get_json()
    assert body["revocation"]["outcome"] == "revoked"
    db.expire_all()
    assert db.get(ConnectedAccount, account_id) is None and _secret_rows(db, account_id) == []
    # Another account, whose provider is unreachable when it is deleted: refused, unless forced.
    second = ConnectedAccount(provider_config_id=1, label="unreachable", status="active")
    db.add(second)
    db.commit()
    second_id = second.id
    from app.oauth.connections import save_tokens
    from app.oauth.tokens import TokenSet

    save_tokens(db, get_cipher(app), second.id, TokenSet(access_token="at-unreachable", refresh_token="rt-unreachable"))
    cfg = db.get(ProviderConfig, 1)
    assert cfg is not None
    # Point the config at a closed port: discovery (and so the revocation) cannot be reached.
    cfg.config = {**cfg.config, "issuer": "http://127.0.0.1:9/"}
    db.commit()
    refused = client.delete(f"{PATH}/{second_id}", headers=rw)
    _error(refused, 502, "provider_unreachable")
    db.expire_all()
    assert db.get(ConnectedAccount, second_id) is not None and _secret_rows(db, second_id)
    forced = client.delete(f"{PATH}/{second_id}?force=true", headers=rw).get_json()
    assert forced["revocation"]["outcome"] == "skipped"
    db.expire_all()
    assert db.get(ConnectedAccount, second_id) is None and _secret_rows(db, second_id) == []
