"""Connected accounts beyond the per-provider contract: header bookkeeping (last_used_at, audit), Hugging
Face specifics, rotation (replace, roll back, purge), deletion (revocation, no ciphertext left), the rotation
policy and reminders, the SMTP mailer features (system mailer, daily cap, test mail), and the CLI."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api import tokens
from app.connectors import accounts, headers, smtp
from app.connectors.headers import OWNER, clear_cache, get_headers, request_auth
from app.connectors.verify import connectivity_test, wait_seconds
from app.errors import AppError
from app.extensions import get_cipher, get_database
from app.jobs.reminders import send_reminders
from app.jobs.secrets import purge_secrets
from app.mailer import Mailer
from app.models import AuditEvent, ConnectedAccount, ProviderConfig, StoredSecret
from app.models.base import utcnow
from app.net import Response, get_client
from app.providers.entries import RevokeSpec
from app.providers.registry import entry
from app.providers.validation import effective_values
from app.settings import Settings
from app.vault import Secret, get_secret
from tests.conftest import PASSWORD, UserFactory, make_settings, sign_in
from tests.support.accounts import (
    CTX,
    blamed_fields,
    csrf_of,
    field_error,
    headers_token,
    make_account,
    make_config,
    post_dialog,
    reload,
    result_code,
)
from tests.support.hold import connections_while_held
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, SmtpServer, TlsFiles
from tests.support.vendors.base import StartVendor
from tests.support.vendors.generic import GenericApi
from tests.support.vendors.huggingface import HuggingFace
from tests.support.vendors.openai import OpenAI

pytest_plugins = ("tests.support.vendor_fixtures",)

ADMIN = "admin@example.com"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, smtp_tls_files: TlsFiles) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        AMI_AUTH_OUTBOUND_TIMEOUT="2",
        AMI_AUTH_OUTBOUND_RETRIES="0",
        AMI_AUTH_SMTP_CA_FILE=str(smtp_tls_files.ca_file),
        AMI_AUTH_SECRET_GRACE_DAYS="7",
    )


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


def _admin(client: FlaskClient, make_user: UserFactory) -> None:
    make_user(ADMIN, role="admin")
    assert sign_in(client, ADMIN).status_code == 302


def _openai(app: Flask, db: Session, vendor: OpenAI, **account: Any) -> tuple[ConnectedAccount, str]:
    """An active OpenAI account whose key the stand-in knows, saved through the logic layer."""
    cfg = db.scalars(select(ProviderConfig).where(ProviderConfig.provider_type == "openai")).first()
    if cfg is None:
        cfg = make_config(db, get_cipher(app), app.extensions["ami_settings"], "openai", {"rotation_days": 30})
    created = make_account(db, cfg, {"base_url": vendor.url, **account}, label="OpenAI prod")
    key = vendor.add_key(organization=account.get("organization_id"))
    with app.app_context():
        accounts.save_secrets(
            db, get_cipher(app), get_client(app), app.extensions["ami_settings"], CTX, created, {"api_key": Secret(key)}
        )
    db.commit()
    return created, key


def _events(db: Session, action: str) -> list[AuditEvent]:
    return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


# ------------------------------------------------------------------------------------------- headers


def test_get_headers_writes_last_used_at_at_most_once_a_minute_and_audits_in_aggregate(
    app: Flask, db: Session, openai_standin: OpenAI
) -> None:
    account, key = _openai(app, db, openai_standin)
    cipher = get_cipher(app)
    start = utcnow()
    for _ in range(50):
        assert get_headers(db, cipher, account) == {"Authorization": f"Bearer {key}"}
    db.commit()
    assert reload(app, db, account.id).last_used_at is not None
    first = reload(app, db, account.id).last_used_at
    used = _events(db, "account.headers.used")
    assert [e.details["calls"] for e in used] == [1]  # the first call is recorded at once
    # Within the minute: counted, not written.
    later = start + timedelta(seconds=30)
    request_auth(db, cipher, account, now=later)
    db.commit()
    assert reload(app, db, account.id).last_used_at == first
    # A minute on: one write, and one event carrying every call since the last one.
    request_auth(db, cipher, account, now=start + timedelta(seconds=61))
    db.commit()
    assert reload(app, db, account.id).last_used_at == start + timedelta(seconds=61)
    used = _events(db, "account.headers.used")
    assert [e.details["calls"] for e in used] == [1, 51]  # 49 more in the loop, then the two above
    # Another worker (another process: simulated by a fresh per-process state) cannot write it again
    # within the minute either: the UPDATE itself only matches an older timestamp.
    clear_cache()
    request_auth(db, cipher, account, now=start + timedelta(seconds=90))
    db.commit()
    assert reload(app, db, account.id).last_used_at == start + timedelta(seconds=61)
    # Bookkeeping never changes updated_at (which keys the header cache).
    assert reload(app, db, account.id).updated_at == account.updated_at


def test_headers_follow_a_replaced_secret_and_refuse_unusable_accounts(
    app: Flask, db: Session, openai_standin: OpenAI
) -> None:
    account, key = _openai(app, db, openai_standin)
    cipher = get_cipher(app)
    assert get_headers(db, cipher, account)["Authorization"] == f"Bearer {key}"
    new_key = openai_standin.add_key()
    with app.app_context():
        accounts.save_secrets(
            db, cipher, get_client(app), app.extensions["ami_settings"], CTX, account, {"api_key": Secret(new_key)}
        )
    db.commit()
    # The row changed, so the cached result no longer matches it.
    assert get_headers(db, cipher, reload(app, db, account.id))["Authorization"] == f"Bearer {new_key}"
    account.provider_config.enabled = False
    db.commit()
    with pytest.raises(AppError) as refused:
        get_headers(db, cipher, reload(app, db, account.id))
    assert refused.value.code == "conflict" and "disabled" in refused.value.text


def test_query_auth_is_refused_by_get_headers_and_returned_by_request_auth(
    app: Flask, db: Session, start_vendor: StartVendor
) -> None:
    vendor = start_vendor(GenericApi(auth_type="query", query_param="key"))
    settings = app.extensions["ami_settings"]
    cipher = get_cipher(app)
    cfg = make_config(
        db, cipher, settings, "generic_api_key", {"base_url": vendor.url, "auth_type": "query", "query_param": "key"}
    )
    account = make_account(db, cfg, {"label": "Query API"})
    key = vendor.add_key()
    with app.app_context():
        accounts.save_secrets(db, cipher, get_client(app), settings, CTX, account, {"api_key": Secret(key)})
    db.commit()
    assert reload(app, db, account.id).last_verified_at is None  # no verify path: saved untested, and says so
    with pytest.raises(AppError) as refused:
        get_headers(db, cipher, account)
    assert "query parameter" in refused.value.text
    assert dict(request_auth(db, cipher, account).query) == {"key": key}


def test_headers_endpoint_audits_every_call_and_answers_only_service_tokens(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, openai_standin: OpenAI
) -> None:
    account, key = _openai(app, db, openai_standin, organization_id="org-Abc123")
    path = f"/api/account-manager/accounts/{account.id}/headers"
    assert client.get(path).status_code == 401
    # Not even an admin's browser session: a credential has no business in a browser (a valid credential of the
    # wrong kind: 403, not 401).
    _admin(client, make_user)
    assert client.get(path).status_code == 403
    token = headers_token(db)
    for _ in range(3):
        response = client.get(path, headers=token)
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert response.get_json() == {
            "headers": {"Authorization": f"Bearer {key}", "OpenAI-Organization": "org-Abc123"},
            "query": {},
        }
    disclosed = _events(db, "account.headers.disclosed")
    assert len(disclosed) == 3
    assert disclosed[0].actor.startswith("service_token:") and disclosed[0].details["header_names"] == [
        "Authorization",
        "OpenAI-Organization",
    ]
    assert all(key not in str(e.details) for e in disclosed)
    # The disclosure is the token's use record: one audit event per call, not a second service_token.use.
    assert _events(db, "service_token.use") == []
    assert reload(app, db, account.id).last_used_at is not None
    missing = client.get("/api/account-manager/accounts/999/headers", headers=token)
    assert missing.get_json()["error"]["code"] == "not_found"
    # Ids beyond the database's integer range match no route, as on every other /api path (the input guard's
    # id converter): unknown, never a database error on PostgreSQL.
    assert client.get("/api/account-manager/accounts/9999999999/headers", headers=token).status_code == 404
    refused = _events(db, "account.headers.refused")
    assert [(e.target, e.outcome, e.details["code"]) for e in refused] == [
        ("connected_account:999", "failure", "not_found"),
    ]
    assert all(e.actor == disclosed[0].actor for e in refused)
    # Answers come from a per-process cache, but an edit or a disabled config is seen on the next call.
    row = reload(app, db, account.id)
    row.identifiers = {**row.identifiers, "organization_id": "org-Next456"}
    db.commit()
    assert client.get(path, headers=token).get_json()["headers"]["OpenAI-Organization"] == "org-Next456"
    row.provider_config.enabled = False
    db.commit()
    off = client.get(path, headers=token)
    # 409 conflict, as refresh and the dialogs answer a disabled config.
    assert off.status_code == 409 and "disabled" in off.get_json()["error"]["message"]
    assert client.get("/admin/accounts/99999999999").status_code == 404


def test_a_pending_account_has_no_headers(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, openai_standin: OpenAI
) -> None:
    cfg = make_config(db, get_cipher(app), app.extensions["ami_settings"], "openai", {})
    account = make_account(db, cfg, {"base_url": openai_standin.url})
    response = client.get(f"/api/account-manager/accounts/{account.id}/headers", headers=headers_token(db))
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "conflict"
    assert "no secret yet" in response.get_json()["error"]["message"]


# ----------------------------------------------------------------------------------------- Hugging Face


def _hf(app: Flask, db: Session, vendor: HuggingFace, role: str) -> ConnectedAccount:
    cfg = make_config(db, get_cipher(app), app.extensions["ami_settings"], "huggingface", {})
    return make_account(db, cfg, {"base_url": vendor.url, "required_role": role}, label="Hub")


def test_huggingface_learns_the_user_and_refuses_a_token_below_the_required_role(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, huggingface_standin: HuggingFace
) -> None:
    vendor = huggingface_standin
    vendor.add_user("alice", fullname="Alice Example", orgs=[("acme-research", "write"), ("acme-labs", "read")])
    vendor.set_rate_limit(remaining=998, reset=240)
    read_token = vendor.add_token("alice", role="read", display_name="cms-read")
    write_token = vendor.add_token("alice", role="write", display_name="cms-write")
    account = _hf(app, db, vendor, "write")
    _admin(client, make_user)
    _status, panel = post_dialog(client, account.id, {"api_token": read_token}, test=True, htmx=True)
    assert result_code(panel) == "permission_denied"
    assert "role is read; this account requires write" in blamed_fields(panel)["api_token"]
    _status, panel = post_dialog(client, account.id, {"api_token": write_token}, test=True, htmx=True)
    assert result_code(panel) == "ok"
    for shown in ("alice", "Alice Example", "acme-research, acme-labs", "write", "cms-write"):
        assert shown in panel
    assert post_dialog(client, account.id, {"api_token": write_token})[0] == 302
    data = reload(app, db, account.id).provider_data
    assert data["user_name"] == "alice" and data["token_role"] == "write" and data["display_name"] == "Alice Example"
    assert data["orgs"] == ["acme-research", "acme-labs"] and data["token_name"] == "cms-write"
    assert data["rate_limit"]["remaining"] == 998 and data["rate_limit"]["reset_seconds"] == 240


def test_huggingface_checks_org_repos_and_permissions_against_whoami_v2(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, huggingface_standin: HuggingFace
) -> None:
    vendor = huggingface_standin
    vendor.add_user("alice", orgs=[("acme-research", "write"), ("acme-labs", "read")])
    vendor.set_rate_limit(remaining=640, reset=120)
    cfg = make_config(db, get_cipher(app), app.extensions["ami_settings"], "huggingface", {})
    wants = {
        "base_url": vendor.url,
        "required_role": "write",
        "organization": "acme-research",
        "default_repo": "acme-research/summarizer",
        "space": "acme-research/demo",
        "required_permissions": "inference.serverless.write",
    }
    account = make_account(db, cfg, wants, label="Hub")
    _admin(client, make_user)
    # Fine-grained, but only for the one model: the org, the Space and the inference permission are missing.
    narrow = vendor.add_token(
        "alice",
        role="fineGrained",
        fine_grained={
            "canReadGatedRepos": False,
            "global": [],
            "scoped": [
                {
                    "entity": {"_id": "m1", "type": "model", "name": "acme-research/summarizer"},
                    "permissions": ["repo.content.read", "repo.write"],
                }
            ],
        },
    )
    _status, panel = post_dialog(client, account.id, {"api_token": narrow}, test=True, htmx=True)
    assert result_code(panel) == "permission_denied"
    blamed = blamed_fields(panel)
    assert set(blamed) == {"organization", "space", "required_permissions"}
    assert "no repo.write permission on acme-research/demo" in blamed["space"]
    assert "inference.serverless.write" in blamed["required_permissions"]
    # Scoped to the organization: covers its repositories and the permission.
    wide = vendor.add_token(
        "alice",
        role="fineGrained",
        display_name="cms-fine",
        fine_grained={
            "canReadGatedRepos": True,
            "global": [],
            "scoped": [
                {
                    "entity": {"_id": "o1", "type": "org", "name": "acme-research"},
                    "permissions": ["repo.content.read", "repo.write", "inference.serverless.write"],
                }
            ],
        },
    )
    assert post_dialog(client, account.id, {"api_token": wide})[0] == 302
    data = reload(app, db, account.id).provider_data
    assert data["token_role"] == "fineGrained"
    assert data["token_permissions"] == ["inference.serverless.write", "repo.content.read", "repo.write"]
    # The console shows the rate-limit metadata the Hub sent with whoami-v2.
    page = client.get(f"/admin/accounts/{account.id}").get_data(as_text=True)
    assert "rate limit" in page and "remaining 640" in page and "reset seconds 120" in page

    # A classic write token: the user's role in the org decides; a stranger's org is refused on its field.
    for org, message in (("acme-labs", "role in acme-labs is read"), ("elsewhere", "not a member of elsewhere")):
        other = make_account(
            db, cfg, {"base_url": vendor.url, "required_role": "write", "organization": org}, label=f"Hub {org}"
        )
        token = vendor.add_token("alice", role="write")
        _status, panel = post_dialog(client, other.id, {"api_token": token}, test=True, htmx=True)
        assert result_code(panel) == "permission_denied" and list(blamed_fields(panel)) == ["organization"]
        assert message in blamed_fields(panel)["organization"]
    # A read token cannot promise a write permission.
    reader = make_account(
        db, cfg, {"base_url": vendor.url, "required_permissions": "repo.content.read discussion.write"}, label="R"
    )
    _status, panel = post_dialog(client, reader.id, {"api_token": vendor.add_token("alice")}, test=True, htmx=True)
    assert "lacks discussion.write" in blamed_fields(panel)["required_permissions"]


def test_huggingface_429_reports_the_wait_from_the_ratelimit_header(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, huggingface_standin: HuggingFace
) -> None:
    token = huggingface_standin.add_token("alice", role="read")
    account = _hf(app, db, huggingface_standin, "read")
    _admin(client, make_user)
    huggingface_standin.rate_limit_next(retry_after=75, path="/api/whoami-v2")
    _status, panel = post_dialog(client, account.id, {"api_token": token}, test=True, htmx=True)
    assert result_code(panel) == "rate_limited" and 'data-retry-after="75"' in panel
    assert list(blamed_fields(panel)) == []  # nothing typed is wrong


def test_wait_comes_from_retry_after_else_from_the_ratelimit_header() -> None:
    # Retry-After (RFC 9110 §10.2.3) wins; without it, the IETF RateLimit draft's `t` the Hub sends.
    assert wait_seconds(Response(429, headers={"Retry-After": "12", "RateLimit": '"api";r=0;t=300'})) == 12
    assert wait_seconds(Response(429, headers={"RateLimit": '"api";r=0;t=300'})) == 300
    assert wait_seconds(Response(429)) is None


def test_huggingface_uses_hf_token_from_the_environment_when_the_account_has_none(
    app: Flask, db: Session, huggingface_standin: HuggingFace, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_token = huggingface_standin.add_token("bob", role="read")
    account = _hf(app, db, huggingface_standin, "read")
    settings = app.extensions["ami_settings"]
    cipher = get_cipher(app)
    with app.app_context():
        client = get_client(app)
        no_token = accounts.test_secrets(db, cipher, client, settings, CTX, account, {})
        assert no_token.error is not None and "HF_TOKEN" in no_token.error.fields["api_token"]
        monkeypatch.setenv("HF_TOKEN", env_token)
        assert accounts.save_secrets(db, cipher, client, settings, CTX, account, {}).status == "ok"
    db.commit()
    account = reload(app, db, account.id)
    assert account.status == "active" and account.provider_data["user_name"] == "bob"
    assert get_secret(db, cipher, OWNER, account.id, "api_token") is None  # nothing stored: the env is used
    assert get_headers(db, cipher, account) == {"Authorization": f"Bearer {env_token}"}


def test_the_dialog_says_hf_token_is_the_fallback(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, huggingface_standin: HuggingFace
) -> None:
    account = _hf(app, db, huggingface_standin, "read")
    _admin(client, make_user)
    html = client.get(f"/dialogs/accounts/{account.id}/secret").get_data(as_text=True)
    assert "uses HF_TOKEN from the server" in html


# ------------------------------------------------------------------------------- rotation and rollback


def test_replace_keeps_the_old_value_for_rollback_then_the_job_purges_it(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, openai_standin: OpenAI
) -> None:
    account, old_key = _openai(app, db, openai_standin)
    cipher = get_cipher(app)
    _admin(client, make_user)
    new_key = openai_standin.add_key()
    # A key the provider refuses is not swapped in.
    status, _page = post_dialog(client, account.id, {"api_key": "sk-proj-refused-by-openai"})
    assert status == 401
    assert get_secret(db, cipher, OWNER, account.id, "api_key").reveal() == old_key  # type: ignore[union-attr]
    # A verified key is; the old ciphertext is retired, kept for the grace period.
    assert post_dialog(client, account.id, {"api_key": new_key})[0] == 302
    assert get_secret(db, cipher, OWNER, account.id, "api_key").reveal() == new_key  # type: ignore[union-attr]
    retired = db.scalars(select(StoredSecret).where(StoredSecret.retired_at.is_not(None))).one()
    assert retired.purge_after is not None
    assert retired.purge_after - retired.retired_at == timedelta(days=7)  # type: ignore[operator]
    page = client.get(f"/admin/accounts/{account.id}").get_data(as_text=True)
    assert "Roll back" in page
    # Roll back: the old key is current again, the new one is gone.
    token = _csrf(client, f"/admin/accounts/{account.id}")
    assert client.post(f"/admin/accounts/{account.id}/rollback", data={"csrf_token": token}).status_code == 302
    db.expire_all()
    assert get_secret(db, cipher, OWNER, account.id, "api_key").reveal() == old_key  # type: ignore[union-attr]
    assert db.scalar(select(func.count()).select_from(StoredSecret)) == 1
    assert "Roll back" not in client.get(f"/admin/accounts/{account.id}").get_data(as_text=True)
    # Replace again; past the grace period the purge job deletes the retired value, and says so.
    assert post_dialog(client, account.id, {"api_key": new_key})[0] == 302
    assert purge_secrets(db, utcnow() + timedelta(days=6)) == 0
    assert purge_secrets(db, utcnow() + timedelta(days=8)) == 1
    assert db.scalar(select(func.count()).select_from(StoredSecret)) == 1
    actions = [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    for action in ("account.secret.replace", "account.secret.rollback", "secrets.purge_retired"):
        assert action in actions
    failed = [e for e in _events(db, "account.secret.replace") if e.outcome == "failure"]
    assert failed and failed[0].details["code"] == "invalid_credentials"


def _csrf(client: FlaskClient, path: str) -> str:
    from tests.support.accounts import csrf_of

    return csrf_of(client.get(path).get_data(as_text=True))


def test_purge_secrets_cli(app: Flask, db: Session, openai_standin: OpenAI) -> None:
    _openai(app, db, openai_standin)
    result = _cli(app, "jobs", "purge-secrets")
    assert result.exit_code == 0 and "purged 0 replaced secret value(s)" in result.output


# ------------------------------------------------------------------------------------------- deletion


def test_delete_removes_every_ciphertext_byte(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, openai_standin: OpenAI, settings: Settings
) -> None:
    account, _key = _openai(app, db, openai_standin)
    with app.app_context():
        accounts.save_secrets(
            db,
            get_cipher(app),
            get_client(app),
            settings,
            CTX,
            account,
            {"api_key": Secret(openai_standin.add_key())},
        )
    db.commit()
    rows = db.scalars(select(StoredSecret).where(StoredSecret.owner_id == account.id)).all()
    assert len(rows) == 2  # current + retired
    blobs = [bytes(r.ciphertext) for r in rows] + [bytes(r.wrapped_key) for r in rows]
    _admin(client, make_user)
    page = client.get(f"/admin/accounts/{account.id}/delete").get_data(as_text=True)
    assert "OpenAI has no API to revoke a key" in page
    token = _csrf(client, f"/admin/accounts/{account.id}/delete")
    response = client.post(f"/admin/accounts/{account.id}/delete", data={"csrf_token": token})
    assert response.status_code == 302
    assert "platform.openai.com/api-keys" in client.get("/admin/accounts/").get_data(as_text=True)
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(ConnectedAccount)) == 0
    assert db.scalar(select(func.count()).select_from(StoredSecret)) == 0
    if settings.database_url.startswith("sqlite"):
        # secure_delete zeroes the freed space and the delete truncates the WAL, so not even the files keep
        # the bytes (read while the app is still running, with its connections open).
        db.close()
        path = Path(settings.database_url.removeprefix("sqlite:///"))
        wal = path.with_name(path.name + "-wal")
        raw = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
        for blob in blobs:
            assert blob not in raw
    event = _events(db, "account.delete")[0]
    assert event.details["vault_rows_deleted"] == 2 and event.details["revoked"] is False


def test_delete_calls_the_revoke_endpoint_first_when_the_provider_has_one(
    app: Flask, db: Session, start_vendor: StartVendor
) -> None:
    vendor = start_vendor(GenericApi(auth_type="bearer"))
    settings = app.extensions["ami_settings"]
    cipher = get_cipher(app)
    cfg = make_config(db, cipher, settings, "generic_api_key", {"base_url": vendor.url, "auth_type": "bearer"})
    account = make_account(db, cfg, {"label": "Revocable"})
    key = vendor.add_key()
    with app.app_context():
        accounts.save_secrets(db, cipher, get_client(app), settings, CTX, account, {"api_key": Secret(key)})
    db.commit()
    provider = dataclasses.replace(
        entry("generic_api_key"),
        revoke=RevokeSpec(
            supported=True, url="${config.base_url}/v1/keys/revoke", auth="bearer", body={"key": "${secret.api_key}"}
        ),
    )
    with app.app_context():
        vendor.fail_next(503, path="/v1/keys/revoke")
        with pytest.raises(AppError) as failed:
            accounts.delete_account(db, cipher, get_client(app), CTX, account, provider=provider)
        assert failed.value.code == "provider_unreachable"
        db.commit()
        assert db.get(ConnectedAccount, account.id) is not None  # nothing deleted when revocation fails
        result = accounts.delete_account(db, cipher, get_client(app), CTX, account, provider=provider)
    db.commit()
    assert result.revoked
    revoke = vendor.last_request("/v1/keys/revoke")
    assert revoke.method == "POST" and revoke.bearer() == key and revoke.form == {"key": key}
    assert db.scalar(select(func.count()).select_from(StoredSecret)) == 0
    assert [e.outcome for e in _events(db, "account.revoke")] == ["failure", "success"]


def test_test_now_and_a_revocation_hold_no_database_connection_while_the_vendor_answers(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, start_vendor: StartVendor
) -> None:
    """A vendor answering slowly ("Test now", the verify-unverified job, a revocation before a delete: up to the
    outbound timeout each, with retries) must not tie up a database connection the requests share."""
    vendor = start_vendor(GenericApi(auth_type="bearer"))
    settings, cipher, engine = app.extensions["ami_settings"], get_cipher(app), get_database(app).engine
    values = {"base_url": vendor.url, "auth_type": "bearer", "verify_path": "/v1/me"}
    cfg = make_config(db, cipher, settings, "generic_api_key", values)
    account = make_account(db, cfg, {"label": "Slow vendor"})
    key = vendor.add_key()
    with app.app_context():
        accounts.save_secrets(db, cipher, get_client(app), settings, CTX, account, {"api_key": Secret(key)})
    db.commit()
    account_id = account.id
    make_user("admin@example.com", role="admin")
    sign_in(client, "admin@example.com")
    csrf = csrf_of(client.get(f"/admin/accounts/{account_id}").get_data(as_text=True))
    db.rollback()

    idle, held, tested = connections_while_held(
        engine,
        vendor.held("/v1/me"),
        lambda: client.post(f"/admin/accounts/{account_id}/test", data={"csrf_token": csrf}),
    )
    assert held == idle
    assert tested.status_code == 302 and reload(app, db, account_id).last_verified_at is not None
    db.rollback()
    # The secret dialog: "Test connection", then "Save" (a replacement, verified before it is stored).
    replacement = {"api_key": vendor.add_key()}
    idle, held, (status, _page) = connections_while_held(
        engine, vendor.held("/v1/me"), lambda: post_dialog(client, account_id, replacement, test=True)
    )
    assert held == idle and status == 200
    idle, held, (status, _page) = connections_while_held(
        engine, vendor.held("/v1/me"), lambda: post_dialog(client, account_id, replacement)
    )
    assert held == idle and status == 302
    assert get_secret(db, cipher, OWNER, account_id, "api_key") == Secret(replacement["api_key"])
    db.rollback()

    provider = dataclasses.replace(
        entry("generic_api_key"),
        revoke=RevokeSpec(supported=True, url="${config.base_url}/v1/keys/revoke", auth="bearer", body={}),
    )

    def delete() -> bool:
        with app.app_context(), Session(engine, expire_on_commit=False) as own:
            found = own.get(ConnectedAccount, account_id)
            assert found is not None
            result = accounts.delete_account(own, cipher, get_client(app), CTX, found, provider=provider)
            own.commit()
            return result.revoked

    idle, held, revoked = connections_while_held(engine, vendor.held("/v1/keys/revoke"), delete)
    assert held == idle
    assert revoked and db.get(ConnectedAccount, account_id) is None


# ----------------------------------------------------------------------------- rotation policy, reminders


def test_overdue_accounts_get_a_badge_a_filter_and_a_digest_mail(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, openai_standin: OpenAI
) -> None:
    fresh, _ = _openai(app, db, openai_standin)
    old, _ = _openai(app, db, openai_standin)
    old = reload(app, db, old.id)
    old.label = "Old key"
    old.rotated_at = utcnow() - timedelta(days=45)  # the config's policy is 30 days
    db.commit()
    _admin(client, make_user)
    html = client.get("/admin/accounts/").get_data(as_text=True)
    assert html.count("rotation overdue") == 1
    filtered = client.get("/admin/accounts/?overdue=1").get_data(as_text=True)
    assert "Old key" in filtered and f'data-account-id="{fresh.id}"' not in filtered
    settings = app.extensions["ami_settings"]
    digest = send_reminders(db, settings)
    assert digest.sent_to == [ADMIN]
    assert [a.id for a, _ in digest.accounts] == [old.id]
    assert "Old key" in digest.text and "45 days old, policy 30 days" in digest.text
    from app.models import MailOutbox

    mail = db.scalars(select(MailOutbox)).one()
    assert mail.to == ADMIN and "due for rotation" in mail.subject and "Old key" in mail.text
    assert _events(db, "jobs.rotation_reminders")[0].details["overdue"] == [old.id]
    result = _cli(app, "jobs", "reminders")
    assert result.exit_code == 0 and "digest sent to admin@example.com" in result.output


# ------------------------------------------------------------------------------------------------ SMTP


def _smtp_account(app: Flask, db: Session, server: SmtpServer, **account: Any) -> ConnectedAccount:
    settings = app.extensions["ami_settings"]
    cfg = make_config(
        db, get_cipher(app), settings, "smtp", {"host": server.host, "port": server.port, "security": "starttls"}
    )
    values = {"from_address": "mailer@example.com", "username": SMTP_USER, "auth_mechanism": "PLAIN", **account}
    created = make_account(db, cfg, values, label="Mailer")
    with app.app_context():
        accounts.save_secrets(
            db, get_cipher(app), get_client(app), settings, CTX, created, {"password": Secret(SMTP_PASSWORD)}
        )
    db.commit()
    return created


def test_the_marked_smtp_account_is_the_system_mailer_with_its_daily_cap(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, smtp_server: SmtpServer
) -> None:
    account = _smtp_account(app, db, smtp_server, daily_send_cap=2)
    _admin(client, make_user)
    token = _csrf(client, f"/admin/accounts/{account.id}")
    assert (
        client.post(f"/admin/accounts/{account.id}/system-mailer", data={"csrf_token": token, "on": "1"}).status_code
        == 302
    )
    settings = app.extensions["ami_settings"]
    mailer_db = Session(get_database(app).engine)
    mailer = Mailer(mailer_db, settings)
    transport = mailer.transport()
    assert transport != "outbox" and transport.port == smtp_server.port
    mailer.send("someone@example.com", "One", "first")
    mailer.send("someone@example.com", "Two", "second")
    with pytest.raises(AppError) as capped:
        mailer.send("someone@example.com", "Three", "third")
    mailer_db.close()
    assert capped.value.code == "rate_limited" and capped.value.retry_after is not None
    assert [str(m["Subject"]) for m in smtp_server.messages] == ["One", "Two"]
    # The CMS sees the same cap and count through the accounts API as the console shows.
    raw = tokens.create_token(db, CTX, name="CMS", scopes=["accounts:read"], created_by=None).raw
    db.commit()
    api = client.get(f"/api/account-manager/accounts/{account.id}", headers={"Authorization": f"Bearer {raw}"})
    assert api.status_code == 200 and api.get_json()["mail"] == {"daily_cap": 2, "sent_today": 2}
    assert str(smtp_server.messages[0]["From"]) == "mailer@example.com"
    page = client.get(f"/admin/accounts/{account.id}").get_data(as_text=True)
    assert "system mailer" in page and "2 of 2 (daily send cap)" in page
    # The test-mail button is counted too: refused with the cap's message.
    token = _csrf(client, f"/admin/accounts/{account.id}")
    client.post(f"/admin/accounts/{account.id}/test-mail", data={"csrf_token": token})
    assert "daily send cap" in client.get(f"/admin/accounts/{account.id}").get_data(as_text=True)
    assert len(smtp_server.messages) == 2
    # A new UTC day resets the count.
    reload(app, db, account.id).send_day = "2000-01-01"
    db.commit()
    smtp.reserve_send(get_database(app).engine, account.id, 2)
    assert reload(app, db, account.id).send_count == 1


def test_smtp_test_mail_goes_to_the_admin(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, smtp_server: SmtpServer
) -> None:
    account = _smtp_account(app, db, smtp_server)
    _admin(client, make_user)
    token = _csrf(client, f"/admin/accounts/{account.id}")
    assert client.post(f"/admin/accounts/{account.id}/test-mail", data={"csrf_token": token}).status_code == 302
    mail = smtp_server.wait_for(ADMIN)
    assert "SMTP test" in str(mail["Subject"])
    # And from the secret dialog, with the box ticked.
    _status, panel = post_dialog(
        client, account.id, {"password": SMTP_PASSWORD, "send_test_mail": "y"}, test=True, htmx=True
    )
    assert result_code(panel) == "ok" and ADMIN in panel
    smtp_server.wait_for(ADMIN, count=2)


def test_smtp_provider_config_connectivity_test(app: Flask, smtp_server: SmtpServer) -> None:
    settings = app.extensions["ami_settings"]
    provider = entry("smtp")
    config = effective_values(provider, "config", {"host": smtp_server.host, "port": smtp_server.port})
    assert connectivity_test(settings, provider, config, {}).status == "ok"
    closed = effective_values(provider, "config", {"host": "127.0.0.1", "port": 1})
    result = connectivity_test(settings, provider, closed, {})
    assert result.status == "failed" and result.code == "provider_unreachable" and result.field == "host"


# -------------------------------------------------------------------------------------------------- CLI


def _cli(app: Flask, *args: str) -> Result:
    runner = app.test_cli_runner()
    return runner.invoke(args=list(args), catch_exceptions=False)


def test_accounts_cli_list_test_delete(app: Flask, db: Session, openai_standin: OpenAI) -> None:
    account, key = _openai(app, db, openai_standin)
    result = _cli(app, "accounts", "list")
    assert result.exit_code == 0 and f"{account.id}\topenai\tOpenAI prod\tactive" in result.output
    assert key not in result.output
    result = _cli(app, "accounts", "test", str(account.id))
    assert result.exit_code == 0 and result.output.startswith("ok: OpenAI accepted")
    openai_standin.revoke_key(key)
    result = app.test_cli_runner().invoke(args=["accounts", "test", str(account.id)])
    assert result.exit_code == 1 and "invalid_credentials" in result.output
    assert reload(app, db, account.id).last_error_code == "invalid_credentials"
    result = _cli(app, "accounts", "delete", str(account.id), "--yes")
    assert result.exit_code == 0 and "deleted OpenAI prod (1 stored value(s))" in result.output
    assert "platform.openai.com" in result.output
    assert _cli(app, "accounts", "list").output.strip() == "no accounts"
    assert headers.OWNER == "connected_account"
    assert db.scalar(select(func.count()).select_from(ProviderConfig)) == 1


# ---------------------------------------------------------------------------------- dialogs and edits


def test_dialogs_are_frameable_only_by_the_cms_and_return_only_to_this_site(
    tmp_path: Path, sqlite_url: str, openai_standin: OpenAI
) -> None:
    from app import create_app
    from tests.conftest import dispose_app

    app = create_app(make_settings(tmp_path, sqlite_url, AMI_AUTH_CMS_ORIGINS="https://cms.example.com"))
    try:
        with app.app_context():
            from app.auth import users

            db = get_database(app).session()
            users.create_user(
                db, app.extensions["ami_settings"], email=ADMIN, password=PASSWORD, role="admin", verified=True
            )
            db.commit()
        session = Session(get_database(app).engine, expire_on_commit=False)
        account, _key = _openai(app, session, openai_standin)
        client = app.test_client()
        assert sign_in(client, ADMIN).status_code == 302
        dialog = client.get(f"/dialogs/accounts/{account.id}/secret?return_to=https://evil.example/steal")
        assert "frame-ancestors https://cms.example.com" in dialog.headers["Content-Security-Policy"]
        assert "X-Frame-Options" not in dialog.headers
        html = dialog.get_data(as_text=True)
        assert "evil.example" not in html and f'value="/admin/accounts/{account.id}"' in html
        console = client.get(f"/admin/accounts/{account.id}")
        assert console.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in console.headers["Content-Security-Policy"]
        session.close()
    finally:
        dispose_app(app)


def test_editing_details_verifies_with_the_new_values_first(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, openai_standin: OpenAI
) -> None:
    account, _key = _openai(app, db, openai_standin, organization_id="org-Right1")
    _admin(client, make_user)
    path = f"/admin/accounts/{account.id}/edit"
    data = {
        "csrf_token": _csrf(client, path),
        "label": "OpenAI prod",
        "organization_id": "org-Wrong1",
        "base_url": openai_standin.url,
    }
    response = client.post(path, data=data)
    html = response.get_data(as_text=True)
    assert response.status_code == 401
    assert "mismatched_organization" in field_error(html, "organization_id")
    assert reload(app, db, account.id).identifiers["organization_id"] == "org-Right1"
    data["organization_id"] = "org-Right1"
    data["label"] = "OpenAI production"
    assert client.post(path, data=data).status_code == 302
    assert reload(app, db, account.id).label == "OpenAI production"
