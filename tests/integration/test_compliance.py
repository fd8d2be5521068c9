"""The compliance report on a seeded dataset: the API, the console page and the CLI agree on every number."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import audit
from app.api import compliance, tokens
from app.auth import mfa
from app.models import AuditEvent, ConnectedAccount, ProviderConfig, ServiceToken, User, utcnow
from app.settings import Settings, with_overrides
from tests.conftest import UserFactory, make_settings, sign_in
from tests.support.mfa import enrol_totp, sign_in_with_totp

CTX = audit.AuditContext(actor="test")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path, database_url, AMI_AUTH_MFA_REQUIRED_ROLES="admin", AMI_AUTH_SECRET_ROTATION_DAYS="90"
    )


def _token(db: Session, name: str, *, days_ago: int, used_days_ago: int | None = None, **kw: Any) -> ServiceToken:
    issued = tokens.create_token(
        db, CTX, name=name, scopes=["compliance:read"], created_by=None, now=utcnow() - timedelta(days=days_ago), **kw
    )
    record = issued.record
    if used_days_ago is not None:
        record.last_used_at = utcnow() - timedelta(days=used_days_ago)
    return record


@pytest.fixture
def seeded(app: Flask, settings: Settings, db: Session, make_user: UserFactory) -> dict[str, Any]:
    """Two admins (root with an authenticator app), three active members and a disabled admin; four
    accounts; six tokens."""
    root = make_user("root@example.com", role="admin")
    root_secret = enrol_totp(app, settings, root)
    make_user("ops@example.com", role="admin")
    members = [make_user(f"m{i}@example.com") for i in range(3)]
    gone = make_user("gone@example.com", role="admin")
    db.execute(update(User).where(User.id == gone.id).values(is_active=False))

    now = utcnow()
    config = ProviderConfig(provider_type="openai", name="OpenAI org", enabled=True, config={})
    db.add(config)
    db.flush()
    accounts = {
        "rotated_long_ago": ConnectedAccount(
            provider_config_id=config.id,
            user_id=members[0].id,
            label="old key",
            created_at=now - timedelta(days=300),
            rotated_at=now - timedelta(days=100),
        ),
        "fresh": ConnectedAccount(
            provider_config_id=config.id, user_id=members[1].id, label="new key", created_at=now - timedelta(days=10)
        ),
        "never_rotated": ConnectedAccount(
            provider_config_id=config.id, user_id=None, label="shared key", created_at=now - timedelta(days=200)
        ),
        "failing": ConnectedAccount(
            provider_config_id=config.id,
            user_id=members[2].id,
            label="revoked key",
            status="failing",
            created_at=now - timedelta(days=5),
            last_error_code="invalid_credentials",
            last_error_hint="The key was revoked at the provider.",
            last_error_at=now - timedelta(hours=2),
            error_attempts=3,
        ),
    }
    db.add_all(accounts.values())
    found = {
        "unused": _token(db, "never used", days_ago=100),
        "used": _token(db, "busy", days_ago=100, used_days_ago=1),
        "stale": _token(db, "stale", days_ago=200, used_days_ago=91),
        "revoked": _token(db, "revoked", days_ago=100),
        "expired": _token(db, "expired", days_ago=100, expires_days=30),
        "new": _token(db, "new", days_ago=0),
    }
    db.flush()
    tokens.revoke_token(db, CTX, found["revoked"].id)
    db.commit()
    return {"root": root, "root_secret": root_secret, "accounts": accounts, "tokens": found}


def _caller(db: Session) -> str:
    issued = tokens.create_token(db, CTX, name="reporter", scopes=["compliance:read"], created_by=None)
    db.commit()
    return issued.raw


def test_report_numbers_for_a_seeded_dataset(client: FlaskClient, db: Session, seeded: dict[str, Any]) -> None:
    response = client.get("/api/compliance/report", headers={"Authorization": f"Bearer {_caller(db)}"})
    assert response.status_code == 200
    report = response.get_json()

    assert report["mfa"]["required_roles"] == ["admin"]
    assert report["mfa"]["coverage"] == [
        {"role": "admin", "users": 2, "enrolled": 1, "percent": 50.0, "required": True},
        {"role": "member", "users": 3, "enrolled": 0, "percent": 0.0, "required": False},
    ]
    assert [v["email"] for v in report["mfa"]["violations"]] == ["ops@example.com"]

    accounts = seeded["accounts"]
    overdue = {s["account_id"]: s for s in report["secrets_past_rotation"]}
    assert set(overdue) == {accounts["rotated_long_ago"].id, accounts["never_rotated"].id}
    assert overdue[accounts["rotated_long_ago"].id]["age_days"] == 100
    assert overdue[accounts["never_rotated"].id]["age_days"] == 200
    assert overdue[accounts["never_rotated"].id]["rotated_at"] is None
    assert {s["policy_days"] for s in overdue.values()} == {90}
    assert overdue[accounts["rotated_long_ago"].id]["provider_config"] == "OpenAI org"

    [failing] = report["accounts_failing"]
    assert failing["account_id"] == accounts["failing"].id
    assert failing["last_error"]["code"] == "invalid_credentials"
    assert failing["last_error"]["hint"] == "The key was revoked at the provider."
    # The accounts API's vocabulary, not the stored word ("failing").
    assert failing["attempts"] == 3 and failing["status"] == "error"
    assert failing["status_reason"] == "verification_failed"

    unused = report["service_tokens_unused"]
    assert unused["days"] == 90
    tok = seeded["tokens"]
    assert [t["id"] for t in unused["tokens"]] == [tok["unused"].id, tok["stale"].id]
    assert unused["tokens"][0]["last_used_at"] is None

    assert report["audit_chain"]["ok"] is True and report["audit_chain"]["checked"] >= 8
    assert report["findings"] == 1 + 2 + 1 + 2


def test_the_console_security_policy_overrides_the_setting(
    client: FlaskClient, db: Session, seeded: dict[str, Any], settings: Settings
) -> None:
    mfa.set_policy(db, "member", True, actor_id=None)
    db.commit()
    report = compliance.build_report(db, settings)
    assert report.mfa_required_roles == ("admin", "member")
    assert [(c.role, c.required) for c in report.coverage] == [("admin", True), ("member", True)]
    assert sorted(v.email for v in report.violations) == [
        "m0@example.com",
        "m1@example.com",
        "m2@example.com",
        "ops@example.com",
    ]


def test_session_endpoint_reports_the_enrolled_factor(client: FlaskClient, seeded: dict[str, Any]) -> None:
    sign_in_with_totp(client, "root@example.com", seeded["root_secret"])
    assert client.get("/api/auth/session").get_json()["mfa"] == {
        "enrolled": True,
        "methods": ["totp"],
        "enrolment_required": False,
        "enrolment_url": None,
    }


def test_rotation_policy_zero_turns_the_check_off(db: Session, seeded: dict[str, Any], settings: Settings) -> None:
    assert len(compliance.build_report(db, settings).overdue_secrets) == 2
    assert compliance.build_report(db, with_overrides(settings, secret_rotation_days=0)).overdue_secrets == ()


def test_tampered_audit_chain_is_reported(client: FlaskClient, db: Session, seeded: dict[str, Any]) -> None:
    caller = _caller(db)
    first = db.scalar(select(AuditEvent).order_by(AuditEvent.id).limit(1))
    assert first is not None
    db.execute(update(AuditEvent).where(AuditEvent.id == first.id).values(actor="mallory"))
    db.commit()
    report = client.get("/api/compliance/report", headers={"Authorization": f"Bearer {caller}"}).get_json()
    assert report["audit_chain"]["ok"] is False
    assert report["audit_chain"]["first_bad_id"] == first.id
    assert "edited" in report["audit_chain"]["problem"]
    assert report["findings"] == 6 + 1


def test_console_page_and_cli_show_the_same_report(
    app: Flask, client: FlaskClient, db: Session, seeded: dict[str, Any]
) -> None:
    sign_in_with_totp(client, "root@example.com", seeded["root_secret"])
    html = client.get("/admin/compliance/").get_data(as_text=True)
    assert 'data-findings="6"' in html
    assert re.search(r'data-role="admin"><td>admin</td><td>2</td><td>1</td><td>50%</td><td>yes</td>', html)
    assert re.search(r'data-role="member"><td>member</td><td>3</td><td>0</td>', html)
    for shown in ("ops@example.com", "old key", "shared key", "invalid_credentials", "never used", "stale", "Verified"):
        assert shown in html, shown
    assert "busy" not in html and ">revoked<" not in html
    assert 'href="/admin/compliance/"' in client.get("/admin/").get_data(as_text=True)  # in the console navigation

    runner = app.test_cli_runner()
    text = runner.invoke(args=["compliance", "report"])
    assert text.exit_code == 0, text.output
    assert "6 finding(s)" in text.output
    assert "admin      1/2 enrolled (50%) (required)" in text.output
    assert "Users violating the MFA policy: 1" in text.output
    assert "Secrets past their rotation policy: 2" in text.output
    assert "Accounts failing refresh: 1" in text.output
    assert "Service tokens unused for 90 days: 2" in text.output
    assert "Audit chain: OK" in text.output

    as_json = runner.invoke(args=["compliance", "report", "--json"])
    assert as_json.exit_code == 0
    from_cli = json.loads(as_json.output)
    from_api = client.get("/api/compliance/report").get_json()
    for body in (from_cli, from_api):
        body.pop("generated_at")
        body["audit_chain"].pop("checked")
        body["audit_chain"].pop("head_hash")
    assert from_cli == from_api


def test_members_cannot_see_the_compliance_page(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("ann@example.com")
    sign_in(client, "ann@example.com")
    assert client.get("/admin/compliance/").status_code == 403
