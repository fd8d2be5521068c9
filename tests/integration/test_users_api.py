"""``/api/users`` on SQLite and PostgreSQL: people through the API with the console's rules (last admin, self),
the scopes users:read / users:write, audit with the caller as the actor; and ``ami-auth users identities|unlink``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api import tokens
from app.audit import AuditContext
from app.auth import throttle
from app.extensions import get_limit_storage
from app.models import AuditEvent, Credential, MailOutbox, OAuthIdentity, ProviderConfig, User
from app.settings import Settings
from tests.conftest import UserFactory, make_settings, sign_in
from tests.support.mfa import enrol_totp


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, extra_env: dict[str, str]) -> Settings:
    return make_settings(tmp_path, database_url, **extra_env)


def _token(db: Session, *scopes: str) -> tuple[dict[str, str], str]:
    issued = tokens.create_token(db, AuditContext(actor="test"), name="CMS", scopes=list(scopes), created_by=None)
    db.commit()
    return {"Authorization": f"Bearer {issued.raw}"}, f"service_token:{issued.record.id}"


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error: dict[str, Any] = response.get_json()["error"]
    assert error["code"] == code
    return error


def _events(db: Session, action: str) -> list[AuditEvent]:
    db.expire_all()
    return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def _identity(db: Session, user: User, subject: str) -> OAuthIdentity:
    cfg = db.scalar(select(ProviderConfig).where(ProviderConfig.name == "Corp ID"))
    if cfg is None:
        cfg = ProviderConfig(provider_type="generic_oidc", name="Corp ID", enabled=True, config={})
        db.add(cfg)
        db.flush()
    row = OAuthIdentity(user_id=user.id, provider_config_id=cfg.id, subject=subject, email=f"{subject}@corp.example")
    db.add(row)
    db.commit()
    return row


def test_scopes_read_and_write_and_members_are_refused(
    client: FlaskClient, db: Session, make_user: UserFactory, app: Flask
) -> None:
    ann = make_user("ann@example.com")
    reader, _ = _token(db, "users:read")
    assert client.get("/api/users", headers=reader).status_code == 200
    error = _error(client.post(f"/api/users/{ann.id}/disable", headers=reader), 403, "permission_denied")
    assert "'users:write'" in error["message"]
    member = app.test_client()
    sign_in(member, "ann@example.com")
    _error(member.get("/api/users"), 403, "permission_denied")


def test_list_search_and_keyset_paging(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    made = [make_user(f"user{i}@example.com", display_name=f"User {i}") for i in range(5)]
    make_user("zed@other.example", display_name="Zed 100%")
    auth, _ = _token(db, "users:read")
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/users", query_string=query, headers=auth).get_json()
        seen += [u["id"] for u in page["users"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == 6 and pages == 3
    found = client.get("/api/users?q=USER3", headers=auth).get_json()["users"]
    assert [u["id"] for u in found] == [made[3].id]
    # The search is literal: % and _ are not wildcards.
    assert [u["email"] for u in client.get("/api/users?q=0%25", headers=auth).get_json()["users"]] == [
        "zed@other.example"
    ]
    assert client.get("/api/users?q=_", headers=auth).get_json()["users"] == []
    _error(client.get("/api/users?cursor=abc", headers=auth), 422, "validation_failed")


def test_create_invites_and_the_console_rules_hold(
    client: FlaskClient, db: Session, make_user: UserFactory, app: Flask
) -> None:
    root = make_user("root@example.com", role="admin")
    auth, actor = _token(db, "users:read", "users:write")
    created = client.post(
        "/api/users", json={"email": "New@Example.com", "name": "New", "metadata": {"team": "sales"}}, headers=auth
    )
    assert created.status_code == 201
    body = created.get_json()
    assert body["invitation"] == {"sent": True, "error": None}
    user = body["user"]
    assert (user["email"], user["role"], user["password_set"], user["metadata"]) == (
        "new@example.com",
        "member",
        False,
        {"team": "sales"},
    )
    assert created.headers["Location"] == f"/api/users/{user['id']}"
    assert db.scalar(select(func.count()).select_from(MailOutbox).where(MailOutbox.to == "new@example.com")) == 1
    [event] = _events(db, "user.create")
    assert event.actor == actor and event.details["via"] == "invite"
    _error(client.post("/api/users", json={"email": "root@example.com"}, headers=auth), 409, "conflict")
    _error(
        client.post("/api/users", json={"email": "x@example.com", "password": "p"}, headers=auth),
        422,
        "validation_failed",
    )

    # Edit: name, role and metadata; fields left out keep their value.
    changed = client.patch(f"/api/users/{user['id']}", json={"role": "admin"}, headers=auth).get_json()
    assert (changed["role"], changed["name"], changed["metadata"]) == ("admin", "New", {"team": "sales"})
    # A token may demote an admin while another active admin remains, never the last one.
    assert client.patch(f"/api/users/{user['id']}", json={"role": "member"}, headers=auth).status_code == 200
    error = _error(client.patch(f"/api/users/{root.id}", json={"role": "member"}, headers=auth), 409, "conflict")
    assert "last active admin" in error["message"]
    _error(client.post(f"/api/users/{root.id}/disable", headers=auth), 409, "conflict")
    assert [e.outcome for e in _events(db, "user.update")][-1] == "denied"
    # Through the cookie the console's self rule applies too.
    make_user("other-admin@example.com", role="admin")
    admin = app.test_client()
    sign_in(admin, "root@example.com")
    csrf = admin.get("/api/auth/session").get_json()["csrf_token"]
    own = admin.patch(f"/api/users/{root.id}", json={"role": "member"}, headers={"X-CSRFToken": csrf})
    assert "your own admin role" in _error(own, 409, "conflict")["message"]


@pytest.mark.parametrize("extra_env", [{"AMI_AUTH_SIGNUP": "closed"}])
def test_create_answers_invalid_config_when_invitations_are_off(client: FlaskClient, db: Session) -> None:
    auth, _ = _token(db, "users:write")
    error = _error(client.post("/api/users", json={"email": "new@example.com"}, headers=auth), 422, "invalid_config")
    assert "AMI_AUTH_SIGNUP" in error["message"]
    assert db.scalar(select(func.count()).select_from(User)) == 0


def test_disable_enable_unlock_and_mfa_reset(
    client: FlaskClient, db: Session, make_user: UserFactory, app: Flask, settings: Settings
) -> None:
    ann = make_user("ann@example.com")
    browser = app.test_client()
    sign_in(browser, "ann@example.com")
    auth, actor = _token(db, "users:read", "users:write")

    disabled = client.post(f"/api/users/{ann.id}/disable", headers=auth).get_json()
    assert disabled["changed"] is True and disabled["sessions_ended"] == 1 and disabled["user"]["active"] is False
    assert browser.get("/api/auth/session").status_code == 401
    assert client.post(f"/api/users/{ann.id}/disable", headers=auth).get_json()["changed"] is False
    assert client.post(f"/api/users/{ann.id}/enable", headers=auth).get_json()["user"]["active"] is True

    with app.app_context():
        storage = get_limit_storage()
        for _ in range(settings.throttle_account_failures):  # a stranger guessing from an unfamiliar network
            throttle.record_failure(storage, settings, ann.email, "203.0.113.9")
    detail = client.get(f"/api/users/{ann.id}", headers=auth).get_json()
    assert detail["lock"]["locked"] is True and detail["lock"]["retry_after"] > 0
    assert client.post(f"/api/users/{ann.id}/unlock", headers=auth).get_json()["changed"] is True
    assert client.get(f"/api/users/{ann.id}", headers=auth).get_json()["lock"] == {"locked": False, "retry_after": 0}
    [unlocked] = _events(db, "account.unlocked")
    assert unlocked.actor == actor

    enrol_totp(app, settings, ann)
    assert client.get(f"/api/users/{ann.id}", headers=auth).get_json()["user"]["mfa"]["enrolled"] is True
    reset = client.post(f"/api/users/{ann.id}/mfa/reset", headers=auth).get_json()
    assert reset["changed"] is True and reset["removed"]["authenticator_apps"] == 1
    assert reset["user"]["mfa"] == {"enrolled": False, "methods": []}
    assert db.scalar(select(func.count()).select_from(Credential).where(Credential.user_id == ann.id)) == 0
    [event] = _events(db, "mfa.reset")
    assert event.actor == actor and event.details["via"] == "api"


def test_sessions_of_a_user(client: FlaskClient, db: Session, make_user: UserFactory, app: Flask) -> None:
    ann = make_user("ann@example.com")
    laptop, phone = app.test_client(), app.test_client()
    sign_in(laptop, "ann@example.com")
    sign_in(phone, "ann@example.com")
    auth, _ = _token(db, "users:read", "users:write")
    listed = client.get(f"/api/users/{ann.id}/sessions", headers=auth).get_json()
    assert listed["user_id"] == ann.id and len(listed["sessions"]) == 2
    first = listed["sessions"][0]["id"]
    assert client.delete(f"/api/users/{ann.id}/sessions/{first}", headers=auth).status_code == 204
    _error(client.delete(f"/api/users/{ann.id}/sessions/{first}", headers=auth), 404, "not_found")
    assert client.delete(f"/api/users/{ann.id}/sessions", headers=auth).get_json() == {
        "user_id": ann.id,
        "sessions_ended": 1,
    }
    assert laptop.get("/api/auth/session").status_code == phone.get("/api/auth/session").status_code == 401


def test_identities_listed_and_unlinked_never_the_last_way_in(
    client: FlaskClient, db: Session, make_user: UserFactory, app: Flask, settings: Settings
) -> None:
    ann = make_user("ann@example.com")
    linked = _identity(db, ann, "ann")
    sso_only = make_user("sso@example.com", password=None)  # created by the provider (JIT): no password
    only = _identity(db, sso_only, "sso")
    auth, actor = _token(db, "users:read", "users:write")
    [listed] = client.get(f"/api/users/{ann.id}/identities", headers=auth).get_json()["identities"]
    assert (listed["id"], listed["provider_name"], listed["email"], listed["usable"]) == (
        linked.id,
        "OpenID Connect (any provider)",
        "ann@corp.example",
        True,
    )
    # Another user's identity id is not found here.
    _error(client.delete(f"/api/users/{ann.id}/identities/{only.id}", headers=auth), 404, "not_found")
    error = _error(client.delete(f"/api/users/{sso_only.id}/identities/{only.id}", headers=auth), 409, "conflict")
    assert "only way sso@example.com can sign in" in error["message"] and "password reset" in error["hint"]
    assert client.delete(f"/api/users/{ann.id}/identities/{linked.id}", headers=auth).status_code == 204
    events = _events(db, "oauth.identity_unlinked")
    assert [(e.outcome, e.actor, e.details["via"]) for e in events] == [
        ("denied", actor, "api"),
        ("success", actor, "api"),
    ]
    assert db.scalar(select(func.count()).select_from(OAuthIdentity)) == 1

    # The same rules from the command line.
    runner = app.test_cli_runner()
    listing = runner.invoke(args=["users", "identities", "sso@example.com"])
    assert listing.exit_code == 0 and f"{only.id}\t" in listing.output and "sso@corp.example" in listing.output
    refused = runner.invoke(args=["users", "unlink", "sso@example.com", str(only.id)])
    assert refused.exit_code != 0 and "only way" in refused.output
    # With another identity linked, this one is no longer the last way in.
    _identity(db, sso_only, "sso-2")
    done = runner.invoke(args=["users", "unlink", "sso@example.com", str(only.id)])
    assert done.exit_code == 0 and "unlinked" in done.output
    assert _events(db, "oauth.identity_unlinked")[-1].actor == "cli"
