"""The API's auth layer and session endpoints, on SQLite and PostgreSQL: tokens, scopes, audit, CSRF, CORS, limits."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from limits.storage import storage_from_string
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import create_app
from app.api import tokens
from app.api.openapi import build_document
from app.audit import AuditContext
from app.auth import users
from app.extensions import get_database, get_settings
from app.models import AuditEvent, ServiceToken, UserSession, utcnow
from app.settings import Settings
from tests.conftest import PASSWORD, UserFactory, dispose_app, make_settings, redis_url, sign_in

CMS = "https://cms.example.com"
Issue = Callable[..., str]


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {"AMI_AUTH_CMS_ORIGINS": CMS}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, extra_env: dict[str, str]) -> Settings:
    return make_settings(tmp_path, database_url, **extra_env)


@pytest.fixture
def issue(db: Session) -> Issue:
    """Create a service token through the logic layer; return the raw token."""

    def make(*scopes: str, name: str = "CMS", expires_days: int | None = None, days_ago: int = 0) -> str:
        issued = tokens.create_token(
            db,
            AuditContext(actor="test"),
            name=name,
            scopes=list(scopes) or ["sessions:read"],
            created_by=None,
            expires_days=expires_days,
            now=utcnow() - timedelta(days=days_ago),
        )
        db.commit()
        return issued.raw

    return make


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def token_id(db: Session, raw: str) -> int:
    record = db.scalar(select(ServiceToken).where(ServiceToken.token_hash == tokens.hash_token(raw)))
    assert record is not None
    return record.id


def events(db: Session, action: str) -> list[AuditEvent]:
    db.expire_all()
    return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["code"] == code
    assert {"code", "message", "hint", "fields"} <= set(error)
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["hint"], str) and error["hint"]
    return error


def protected_operations(app: Flask) -> list[tuple[str, str]]:
    """Every (method, concrete path) of the OpenAPI document that needs a credential."""
    found = []
    for path, item in build_document(app)["paths"].items():
        for method, operation in item.items():
            if operation["security"]:
                concrete = path.replace("{session_id}", "0123456789abcdef")
                found.append((method.upper(), re.sub(r"\{\w+_id\}", "1", concrete)))
    return found


# --- 401 / 403 -----------------------------------------------------------------------------------------


def test_every_protected_endpoint_answers_401_without_credentials(app: Flask, client: FlaskClient) -> None:
    operations = protected_operations(app)
    assert ("GET", "/api/compliance/report") in operations and len(operations) >= 4
    for method, path in operations:
        response = client.open(path, method=method)
        assert_error(response, 401, "not_authenticated")
        # RFC 9110 section 11.6.1, RFC 6750 section 3: a challenge, with no error code (no credential was sent).
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="AMI Auth"', (method, path)


# A body and query string that fail every route's validation, if a route looked at them.
HOSTILE_BODY = {"kind": "edit_provider_config", "provider_config_id": "x", "not_a_field": True, "name": ""}
HOSTILE_QUERY = "?user_id=nope&overdue=maybe&limit=-1"


def scoped_operations(app: Flask) -> list[tuple[str, str, set[str], bool]]:
    """Every (method, concrete path, scopes that could let a caller in, accepts cookies) of the OpenAPI
    document whose service-token alternatives name scopes."""
    found = []
    for path, item in build_document(app)["paths"].items():
        for method, operation in item.items():
            needed = {scope for option in operation["security"] for scope in option.get("serviceToken", [])}
            if needed:
                concrete = re.sub(r"\{\w+_id\}", "1", path.replace("{session_id}", "0123456789abcdef"))
                cookies = any("sessionCookie" in option for option in operation["security"])
                found.append((method.upper(), concrete, needed, cookies))
    return found


def test_scope_is_checked_before_the_body_on_every_route(
    app: Flask, client: FlaskClient, issue: Issue, make_user: UserFactory
) -> None:
    # A caller without the scope learns nothing from the request: no validation error, whatever it sends.
    operations = scoped_operations(app)
    assert ("POST", "/api/account-manager/dialogs", {"accounts:write", "providers:write"}, True) in operations
    assert len(operations) >= 15
    member = app.test_client()
    make_user("mia@example.com")
    sign_in(member, "mia@example.com")
    csrf = member.get("/api/auth/session").get_json()["csrf_token"]
    member_scopes = {"sessions:read", "sessions:write"}
    for method, path, needed, cookies in operations:
        raw = issue(*sorted(set(tokens.SCOPES) - needed))
        response = client.open(path + HOSTILE_QUERY, method=method, json=HOSTILE_BODY, headers=bearer(raw))
        error = assert_error(response, 403, "permission_denied")
        assert error["fields"] == {}, (method, path, error)
        if cookies and not needed & member_scopes:
            response = member.open(
                path + HOSTILE_QUERY, method=method, json=HOSTILE_BODY, headers={"X-CSRFToken": csrf}
            )
            error = assert_error(response, 403, "permission_denied")
            assert error["fields"] == {}, (method, path, error)


def test_an_endpoint_tokens_can_call_must_name_its_scopes() -> None:
    from app.api.security import api_auth

    with pytest.raises(ValueError, match="must name its scopes"):
        api_auth()
    api_auth(tokens=False)  # the browser's own session: no token, no scope


def test_token_without_the_scope_gets_403_naming_it_and_is_audited(
    client: FlaskClient, db: Session, issue: Issue
) -> None:
    raw = issue("sessions:read")
    response = client.get("/api/compliance/report", headers=bearer(raw))
    error = assert_error(response, 403, "permission_denied")
    # RFC 6750 section 3.1: a valid token without the scope is 403 insufficient_scope, naming it.
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="AMI Auth", error="insufficient_scope", scope="compliance:read"'
    )
    assert "'compliance:read'" in error["message"]
    assert "compliance:read" in error["hint"]
    [event] = events(db, "service_token.use")
    assert event.target == f"service_token:{token_id(db, raw)}"
    assert event.actor == event.target
    assert event.outcome == "denied"
    assert event.details["reason"] == "missing_scope"
    assert event.details["missing_scopes"] == ["compliance:read"]
    assert event.details["path"] == "/api/compliance/report"


def test_revoked_and_expired_tokens_get_401_and_are_audited_with_their_id(
    client: FlaskClient, db: Session, issue: Issue
) -> None:
    revoked = issue("compliance:read", name="old")
    tokens.revoke_token(db, AuditContext(actor="test"), token_id(db, revoked))
    db.commit()
    expired = issue("compliance:read", name="short", expires_days=1, days_ago=2)

    response = client.get("/api/compliance/report", headers=bearer(revoked))
    error = assert_error(response, 401, "not_authenticated")
    assert "revoked" in error["message"]
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="AMI Auth", error="invalid_token", error_description="The service token has been revoked."'
    )
    error = assert_error(client.get("/api/compliance/report", headers=bearer(expired)), 401, "not_authenticated")
    assert "expired" in error["message"]

    uses = events(db, "service_token.use")
    assert [(e.target, e.outcome, e.details["reason"]) for e in uses] == [
        (f"service_token:{token_id(db, revoked)}", "denied", "revoked"),
        (f"service_token:{token_id(db, expired)}", "denied", "expired"),
    ]


def test_a_token_revoked_while_in_use_is_refused_at_once_here_and_within_the_cache_time_elsewhere(
    client: FlaskClient, db: Session, issue: Issue
) -> None:
    here, elsewhere = issue("compliance:read", name="here"), issue("compliance:read", name="elsewhere")
    for raw in (here, elsewhere):  # both rows are now kept by this process
        assert client.get("/api/compliance/report", headers=bearer(raw)).status_code == 200

    tokens.revoke_token(db, AuditContext(actor="test"), token_id(db, here))
    db.commit()
    error = assert_error(client.get("/api/compliance/report", headers=bearer(here)), 401, "not_authenticated")
    assert "revoked" in error["message"]

    # Another process (a worker or host that does not share this one's memory) revokes the other token.
    other = db.get(ServiceToken, token_id(db, elsewhere))
    assert other is not None
    other.revoked_at = utcnow()
    db.commit()
    time.sleep(tokens.CACHE_SECONDS)
    error = assert_error(client.get("/api/compliance/report", headers=bearer(elsewhere)), 401, "not_authenticated")
    assert "revoked" in error["message"]


@pytest.mark.parametrize(
    "header",
    ["Bearer amis_not-a-real-token-at-all", "Bearer ", "Basic dXNlcjpwYXNz", "amis_bare", "Bearer " + "x" * 500],
)
def test_unknown_or_malformed_tokens_get_401_audited_as_unknown(client: FlaskClient, db: Session, header: str) -> None:
    response = client.get("/api/auth/sessions", headers={"Authorization": header})
    error = assert_error(response, 401, "not_authenticated")
    assert "not recognised" in error["message"]
    # A bearer token that is not valid is invalid_token; another scheme (no bearer token at all) gets no error code.
    expected = 'error="invalid_token"' if header.lower().startswith("bearer ") else None
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="AMI Auth"')
    assert (expected in challenge) if expected else ("error=" not in challenge)
    [event] = events(db, "service_token.use")
    assert (event.target, event.outcome, event.details["reason"]) == ("service_token:unknown", "denied", "unknown")
    # Nothing of what was presented is recorded: only the request line and the reason.
    assert set(event.details) == {"method", "path", "reason"}


def test_successful_use_is_audited_and_last_used_is_written_at_most_once_a_minute(
    client: FlaskClient, db: Session, issue: Issue, make_user: UserFactory
) -> None:
    user = make_user("ann@example.com")
    raw = issue("sessions:read")
    tid = token_id(db, raw)
    for _ in range(2):
        response = client.get(f"/api/auth/sessions?user_id={user.id}", headers=bearer(raw))
        assert response.status_code == 200 and response.get_json() == {"user_id": user.id, "sessions": []}
    uses = events(db, "service_token.use")
    assert [(e.target, e.outcome, e.actor) for e in uses] == [
        (f"service_token:{tid}", "success", f"service_token:{tid}")
    ] * 2
    first = db.get(ServiceToken, tid)
    assert first is not None and first.last_used_at is not None
    stamp = first.last_used_at
    # Pretend the last write was two minutes ago: the next use writes again.
    first.last_used_at = stamp - timedelta(minutes=2)
    db.commit()
    tokens.forget(tid)  # the app keeps a token's row up to tokens.CACHE_SECONDS; this edit went around the app
    client.get(f"/api/auth/sessions?user_id={user.id}", headers=bearer(raw))
    db.expire_all()
    again = db.get(ServiceToken, tid)
    assert again is not None and again.last_used_at is not None and again.last_used_at >= stamp
    # The raw token is nowhere in the audit log.
    everything = json.dumps([[e.actor, e.target, e.details] for e in db.scalars(select(AuditEvent))])
    assert raw not in everything and raw[len(tokens.TOKEN_PREFIX) :] not in everything


def test_touch_skips_writes_within_a_minute(db: Session, issue: Issue) -> None:
    raw = issue()
    tid = token_id(db, raw)
    now = utcnow()

    def touch(at: datetime) -> bool:
        record = tokens.authenticate(db, raw).record  # as a request reads it
        assert record is not None
        changed = tokens.touch(db, record, at)
        db.commit()
        return changed

    assert touch(now) is True
    assert touch(now + timedelta(seconds=59)) is False
    assert touch(now + timedelta(seconds=60)) is True
    db.expire_all()
    stored = db.get(ServiceToken, tid)
    assert stored is not None and stored.last_used_at == now + timedelta(seconds=60)


# --- GET /api/auth/session -------------------------------------------------------------------------------


def test_session_endpoint_describes_the_signed_in_user(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    user = make_user("ann@example.com", display_name="Ann Example")
    assert sign_in(client, "ann@example.com").status_code == 302
    response = client.get("/api/auth/session")
    assert response.status_code == 200
    body = response.get_json()
    record = db.scalar(select(UserSession).where(UserSession.user_id == user.id))
    assert record is not None
    assert body["user"] == {"id": user.id, "email": "ann@example.com", "name": "Ann Example", "roles": ["member"]}
    assert body["mfa"] == {"enrolled": False, "methods": [], "enrolment_required": False, "enrolment_url": None}
    assert body["session"]["id"] == record.public_id
    assert body["session"]["expires_at"] == record.expires_at.isoformat()
    assert body["session"]["created_at"] <= body["session"]["idle_expires_at"] <= body["session"]["expires_at"]
    assert isinstance(body["csrf_token"], str) and len(body["csrf_token"]) > 20
    # The cookie value (the raw session id) is never in the body: only the public id.
    assert record.id not in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"


def test_session_endpoint_401_for_anonymous_403_for_a_token(client: FlaskClient, db: Session, issue: Issue) -> None:
    assert_error(client.get("/api/auth/session"), 401, "not_authenticated")
    # A valid token is a credential, of the wrong kind for a browser's own session: 403, not 401.
    raw = issue("sessions:read")
    error = assert_error(client.get("/api/auth/session", headers=bearer(raw)), 403, "permission_denied")
    assert "session cookie" in error["hint"]
    [event] = events(db, "api.denied")
    assert event.actor == f"service_token:{token_id(db, raw)}" and event.details["reason"] == "wrong_credential"
    # A token that is not valid is no credential at all: 401.
    response = client.get("/api/auth/session", headers=bearer("amis_" + "x" * 43))
    assert_error(response, 401, "not_authenticated")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_token_only_endpoint_answers_403_to_a_session_cookie(
    client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    make_user("root@example.com", role="admin")
    sign_in(client, "root@example.com")
    # The headers endpoint discloses a credential: even an admin's cookie is the wrong kind of credential.
    error = assert_error(client.get("/api/account-manager/accounts/1/headers"), 403, "permission_denied")
    assert "service tokens only" in error["message"]
    [event] = events(db, "api.denied")
    assert event.actor == "root@example.com" and event.details["reason"] == "wrong_credential"
    anonymous = client.application.test_client()
    assert_error(anonymous.get("/api/account-manager/accounts/1/headers"), 401, "not_authenticated")


def test_signed_out_session_gets_401(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("ann@example.com")
    sign_in(client, "ann@example.com")
    csrf = client.get("/api/auth/session").get_json()["csrf_token"]
    client.post("/signout", data={"csrf_token": csrf})
    assert_error(client.get("/api/auth/session"), 401, "not_authenticated")


# --- GET /api/auth/sessions ------------------------------------------------------------------------------


def test_member_lists_own_sessions_only(app: Flask, client: FlaskClient, make_user: UserFactory) -> None:
    ann = make_user("ann@example.com")
    bob = make_user("bob@example.com")
    sign_in(client, "ann@example.com")
    other_device = app.test_client()
    sign_in(other_device, "ann@example.com")
    sign_in(app.test_client(), "bob@example.com")

    body = client.get("/api/auth/sessions").get_json()
    assert body["user_id"] == ann.id
    assert len(body["sessions"]) == 2
    assert sorted(s["current"] for s in body["sessions"]) == [False, True]
    assert all(s["user_id"] == ann.id for s in body["sessions"])
    assert client.get(f"/api/auth/sessions?user_id={ann.id}").status_code == 200

    error = assert_error(client.get(f"/api/auth/sessions?user_id={bob.id}"), 403, "permission_denied")
    assert "own sessions" in error["message"]


def test_admin_and_token_list_anyones_sessions(
    app: Flask, client: FlaskClient, make_user: UserFactory, issue: Issue
) -> None:
    make_user("root@example.com", role="admin")
    bob = make_user("bob@example.com")
    sign_in(app.test_client(), "bob@example.com")
    sign_in(client, "root@example.com")
    body = client.get(f"/api/auth/sessions?user_id={bob.id}").get_json()
    assert [s["user_id"] for s in body["sessions"]] == [bob.id] and body["sessions"][0]["current"] is False

    token_client = app.test_client()
    raw = issue("sessions:read")
    by_token = token_client.get(f"/api/auth/sessions?user_id={bob.id}", headers=bearer(raw)).get_json()
    assert [s["id"] for s in by_token["sessions"]] == [s["id"] for s in body["sessions"]]
    error = assert_error(token_client.get("/api/auth/sessions", headers=bearer(raw)), 422, "validation_failed")
    assert "user_id" in error["fields"]
    assert_error(token_client.get("/api/auth/sessions?user_id=99999", headers=bearer(raw)), 404, "not_found")
    for bad in ("abc", "0", "-1", "1.5", "٣"):
        error = assert_error(
            token_client.get("/api/auth/sessions", query_string={"user_id": bad}, headers=bearer(raw)),
            422,
            "validation_failed",
        )
        assert set(error["fields"]) == {"user_id"}


# --- DELETE /api/auth/sessions/<id> ----------------------------------------------------------------------


def _session_ids(client: FlaskClient) -> dict[bool, str]:
    return {s["current"]: s["id"] for s in client.get("/api/auth/sessions").get_json()["sessions"]}


def test_cookie_delete_needs_the_csrf_header(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("ann@example.com")
    sign_in(client, "ann@example.com")
    laptop = app.test_client()
    sign_in(laptop, "ann@example.com")
    other = _session_ids(client)[False]

    error = assert_error(client.delete(f"/api/auth/sessions/{other}"), 403, "permission_denied")
    assert "CSRF" in error["message"] and "X-CSRFToken" in error["hint"]
    assert_error(
        client.delete(f"/api/auth/sessions/{other}", headers={"X-CSRFToken": "forged"}), 403, "permission_denied"
    )
    # No header at all; then a token although this session was never given one.
    assert [e.details["reason"] for e in events(db, "api.csrf_failed")] == ["token_missing", "no_session"]
    assert laptop.get("/api/auth/session").status_code == 200  # still signed in

    csrf = client.get("/api/auth/session").get_json()["csrf_token"]
    response = client.delete(f"/api/auth/sessions/{other}", headers={"X-CSRFToken": csrf})
    assert response.status_code == 204 and response.get_data() == b""
    assert_error(laptop.get("/api/auth/session"), 401, "not_authenticated")
    [event] = events(db, "session.revoke")
    assert event.details == {"session": other, "via": "api"} and event.actor == "ann@example.com"
    # Revoking it again: it is no longer live.
    assert_error(client.delete(f"/api/auth/sessions/{other}", headers={"X-CSRFToken": csrf}), 404, "not_found")


def test_cookie_delete_from_an_origin_outside_the_allow_list_is_refused(
    app: Flask, client: FlaskClient, make_user: UserFactory
) -> None:
    make_user("ann@example.com")
    sign_in(client, "ann@example.com")
    sign_in(app.test_client(), "ann@example.com")
    other = _session_ids(client)[False]
    csrf = client.get("/api/auth/session").get_json()["csrf_token"]
    evil = {"X-CSRFToken": csrf, "Origin": "https://evil.example"}
    error = assert_error(client.delete(f"/api/auth/sessions/{other}", headers=evil), 403, "permission_denied")
    assert "origin" in error["message"]
    ok = client.delete(f"/api/auth/sessions/{other}", headers={"X-CSRFToken": csrf, "Origin": CMS})
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == CMS


def test_members_cannot_revoke_other_peoples_sessions_admins_can(
    app: Flask, client: FlaskClient, make_user: UserFactory
) -> None:
    make_user("ann@example.com")
    make_user("root@example.com", role="admin")
    bob = make_user("bob@example.com")
    bob_client = app.test_client()
    sign_in(bob_client, "bob@example.com")
    bobs = _session_ids(bob_client)[True]

    sign_in(client, "ann@example.com")
    csrf = client.get("/api/auth/session").get_json()["csrf_token"]
    # Indistinguishable from a missing session.
    assert_error(client.delete(f"/api/auth/sessions/{bobs}", headers={"X-CSRFToken": csrf}), 404, "not_found")
    assert bob_client.get("/api/auth/session").status_code == 200

    admin = app.test_client()
    sign_in(admin, "root@example.com")
    admin_csrf = admin.get("/api/auth/session").get_json()["csrf_token"]
    assert admin.get(f"/api/auth/sessions?user_id={bob.id}").get_json()["sessions"][0]["id"] == bobs
    assert admin.delete(f"/api/auth/sessions/{bobs}", headers={"X-CSRFToken": admin_csrf}).status_code == 204
    assert bob_client.get("/api/auth/session").status_code == 401


def test_token_delete_needs_sessions_write_and_no_csrf(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, issue: Issue
) -> None:
    make_user("bob@example.com")
    bob_client = app.test_client()
    sign_in(bob_client, "bob@example.com")
    bobs = _session_ids(bob_client)[True]

    reader = issue("sessions:read", name="reader")
    error = assert_error(client.delete(f"/api/auth/sessions/{bobs}", headers=bearer(reader)), 403, "permission_denied")
    assert "'sessions:write'" in error["message"]
    writer = issue("sessions:write", name="writer")
    assert_error(client.delete("/api/auth/sessions/ffffffffffffffff", headers=bearer(writer)), 404, "not_found")
    assert_error(client.delete("/api/auth/sessions/not-an-id", headers=bearer(writer)), 404, "not_found")
    assert client.delete(f"/api/auth/sessions/{bobs}", headers=bearer(writer)).status_code == 204
    assert bob_client.get("/api/auth/session").status_code == 401
    [event] = events(db, "session.revoke")
    assert event.actor == f"service_token:{token_id(db, writer)}"


def test_member_cookie_cannot_read_the_compliance_report_admin_can(
    app: Flask, client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    make_user("ann@example.com")
    make_user("root@example.com", role="admin")
    sign_in(client, "ann@example.com")
    error = assert_error(client.get("/api/compliance/report"), 403, "permission_denied")
    assert "'compliance:read'" in error["message"] and "member" in error["message"]
    [event] = events(db, "api.denied")
    assert event.actor == "ann@example.com" and event.details["missing_scopes"] == ["compliance:read"]
    admin = app.test_client()
    sign_in(admin, "root@example.com")
    assert admin.get("/api/compliance/report").status_code == 200


@pytest.mark.parametrize("extra_env", [{"AMI_AUTH_MFA_REQUIRED_ROLES": "admin"}])
def test_cookie_calls_follow_the_mfa_policy(client: FlaskClient, make_user: UserFactory, issue: Issue) -> None:
    make_user("root@example.com", role="admin")
    sign_in(client, "root@example.com")
    error = assert_error(client.get("/api/compliance/report"), 403, "mfa_required")
    assert "second factor" in error["message"]
    # A token is not a person: the policy is about who signs in, not about the CMS server.
    api = client.application.test_client()
    assert api.get("/api/compliance/report", headers=bearer(issue("compliance:read"))).status_code == 200


# --- errors under /api -----------------------------------------------------------------------------------


def test_unknown_paths_and_methods_under_api_answer_json(client: FlaskClient) -> None:
    assert_error(client.get("/api/no-such-thing"), 404, "not_found")
    response = client.post("/api/auth/session")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


# --- CORS ----------------------------------------------------------------------------------------------


def test_cors_only_for_the_cms_origin(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("ann@example.com")
    sign_in(client, "ann@example.com")
    allowed = client.get("/api/auth/session", headers={"Origin": CMS})
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == CMS
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in allowed.headers["Vary"]

    for origin in ("https://evil.example", "https://cms.example.com.evil.example", "null", "http://cms.example.com"):
        refused = client.get("/api/auth/session", headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in refused.headers
        assert "Access-Control-Allow-Credentials" not in refused.headers
        assert "Origin" in refused.headers["Vary"]
    # Errors carry the CORS headers too, so the CMS can read the taxonomy code.
    anonymous = client.application.test_client().get("/api/auth/session", headers={"Origin": CMS})
    assert anonymous.status_code == 401 and anonymous.headers["Access-Control-Allow-Origin"] == CMS
    # Pages outside /api never get CORS headers.
    assert "Access-Control-Allow-Origin" not in client.get("/account/", headers={"Origin": CMS}).headers


def test_cors_preflight(client: FlaskClient) -> None:
    preflight = {
        "Origin": CMS,
        "Access-Control-Request-Method": "DELETE",
        "Access-Control-Request-Headers": "x-csrftoken",
    }
    response = client.options("/api/auth/sessions/0123456789abcdef", headers=preflight)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == CMS
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "DELETE" in response.headers["Access-Control-Allow-Methods"]
    assert "X-CSRFToken" in response.headers["Access-Control-Allow-Headers"]
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    refused = client.options(
        "/api/auth/sessions/0123456789abcdef", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert "Access-Control-Allow-Methods" not in refused.headers


# --- rate limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra_env", [{"AMI_AUTH_API_RATE_PER_MINUTE": "3"}])
def test_per_token_rate_limit_answers_429_with_retry_after(
    client: FlaskClient, db: Session, issue: Issue, make_user: UserFactory
) -> None:
    user = make_user("ann@example.com")
    busy, other = issue("sessions:read", name="busy"), issue("sessions:read", name="other")
    url = f"/api/auth/sessions?user_id={user.id}"
    answers = [client.get(url, headers=bearer(busy)) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    # draft-ietf-httpapi-ratelimit-headers-10: the policy, and what is left of it, on every answer.
    assert {a.headers["RateLimit-Policy"] for a in answers} == {'"token";q=3;w=60'}
    assert [re.sub(r";t=\d+$", "", a.headers["RateLimit"]) for a in answers] == [
        '"token";r=2',
        '"token";r=1',
        '"token";r=0',
    ]
    for _ in range(2):
        response = client.get(url, headers=bearer(busy))
        error = assert_error(response, 429, "rate_limited")
        retry_after = int(response.headers["Retry-After"])
        assert 1 <= retry_after <= 60 and error["retry_after"] == retry_after
        assert response.headers["RateLimit"] == f'"token";r=0;t={retry_after}'
    # Another token has its own budget.
    assert client.get(url, headers=bearer(other)).status_code == 200
    # Audited once per minute, not once per refused call.
    [event] = events(db, "api.rate_limited")
    assert event.target == f"service_token:{token_id(db, busy)}" and event.outcome == "denied"


@pytest.mark.parametrize("extra_env", [{"AMI_AUTH_API_IP_RATE_PER_MINUTE": "2"}])
def test_per_ip_limit_for_unauthenticated_calls(
    client: FlaskClient, db: Session, issue: Issue, make_user: UserFactory
) -> None:
    user = make_user("ann@example.com")
    assert_error(client.get("/api/auth/sessions"), 401, "not_authenticated")
    assert_error(client.get("/api/auth/sessions", headers=bearer("amis_guess")), 401, "not_authenticated")
    response = client.get("/api/auth/sessions", headers=bearer("amis_guess2"))
    assert_error(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) >= 1
    assert_error(client.get("/api/openapi.json"), 429, "rate_limited")
    # Valid tokens from the same address are counted per token, not against the IP.
    assert client.get(f"/api/auth/sessions?user_id={user.id}", headers=bearer(issue())).status_code == 200
    # The guess within the limit is audited; the refused one only as the (once a minute) rate-limit event.
    assert [e.outcome for e in events(db, "service_token.use")] == ["denied", "success"]
    assert len(events(db, "api.rate_limited")) == 1


@pytest.fixture
def shared_redis_apps(tmp_path: Path, database_url: str) -> Iterator[tuple[Flask, Flask]]:
    """Two app instances (two workers) sharing one Redis-backed limits storage under a fresh prefix."""
    url = redis_url()
    prefix = f"ami-test-{uuid.uuid4().hex[:10]}"
    apps = []
    for _ in range(2):
        application = create_app(make_settings(tmp_path, database_url, AMI_AUTH_API_RATE_PER_MINUTE="4"))
        application.extensions["ami_limits"] = storage_from_string(url, key_prefix=prefix)
        apps.append(application)
    yield apps[0], apps[1]
    apps[0].extensions["ami_limits"].reset()
    for application in apps:
        dispose_app(application)


@pytest.mark.redis
def test_rate_limit_is_shared_across_workers_through_redis(shared_redis_apps: tuple[Flask, Flask]) -> None:
    first, second = shared_redis_apps
    with first.app_context():
        from app.extensions import get_database

        db = get_database(first).session()
        raw = tokens.create_token(
            db, AuditContext(actor="test"), name="CMS", scopes=["compliance:read"], created_by=None
        ).raw
        db.commit()
    clients = [first.test_client(), second.test_client()]
    answers = [clients[i % 2].get("/api/compliance/report", headers=bearer(raw)) for i in range(6)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429, 429]
    # What is left and when the window ends, the same whichever worker answers: the second learns the end of the
    # window the first opened from Redis.
    left = [re.fullmatch(r'"token";r=(\d+);t=(\d+)', a.headers["RateLimit"]) for a in answers]
    assert [int(m.group(1)) for m in left if m is not None] == [3, 2, 1, 0, 0, 0]
    resets = [int(m.group(2)) for m in left if m is not None]
    assert min(resets) >= 50 and max(resets) <= 60
    assert [a.headers.get("Retry-After") for a in answers[4:]] == [str(resets[4]), str(resets[5])]


def test_session_endpoint_is_readable_while_mfa_enrolment_is_pending(tmp_path: Path, sqlite_url: str) -> None:
    """A user whose role needs MFA but has none can still read the session (so the CMS can send them to enrol)."""
    app = create_app(make_settings(tmp_path, sqlite_url, AMI_AUTH_MFA_REQUIRED_ROLES="admin"))
    try:
        with app.app_context():
            db = get_database(app).session()
            users.create_user(
                db, get_settings(), email="boss@example.com", password=PASSWORD, role="admin", verified=True
            )
            db.commit()
        client = app.test_client()
        sign_in(client, "boss@example.com")
        body = client.get("/api/auth/session").json
        assert body is not None and body["mfa"]["enrolled"] is False
        # The CMS learns from the session that enrolment is needed, and where.
        assert body["mfa"]["enrolment_required"] is True
        assert body["mfa"]["enrolment_url"] == "http://127.0.0.1:5000/account/mfa"  # AMI_AUTH_BASE_URL
        blocked = client.get("/api/auth/sessions")
        assert blocked.status_code == 403 and blocked.json is not None
        assert blocked.json["error"]["code"] == "mfa_required"
    finally:
        dispose_app(app)
