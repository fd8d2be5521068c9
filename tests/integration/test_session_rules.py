"""The session rules on the per-request path (``GET /api/auth/session`` and every signed-in page), on SQLite and
PostgreSQL: what one request reads must be the database's state at that request, never a copy kept by a worker.

Two app instances on one database stand for two gunicorn workers (or two hosts): a change made through one is
seen by the other on its very next request.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete, event, select, update
from sqlalchemy.orm import Session

from app import create_app
from app.auth import mfa, recovery_codes, totp
from app.extensions import get_database
from app.models import AuditEvent, Credential, MfaPolicy, User, UserSession, utcnow
from app.settings import Settings
from tests.conftest import UserFactory, dispose_app, make_settings, sign_in
from tests.support.mfa import enrol_totp, sign_in_with_totp


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_API_RATE_PER_MINUTE="1000")


@pytest.fixture
def other_worker(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    """A second app instance on the same database and secret key: another worker or host."""
    application = create_app(make_settings(tmp_path, database_url, AMI_AUTH_API_RATE_PER_MINUTE="1000"))
    application.config["TESTING"] = True
    yield application
    dispose_app(application)


def same_cookie(source: FlaskClient, target: Flask) -> FlaskClient:
    """A client of ``target`` holding the browser cookie ``source`` holds (the same browser, routed elsewhere)."""
    cookie = source.get_cookie("ami_session")
    assert cookie is not None
    client = target.test_client()
    client.set_cookie("ami_session", cookie.value)
    return client


def session_api(client: FlaskClient) -> tuple[int, dict[str, Any]]:
    response = client.get("/api/auth/session")
    body = response.get_json()
    assert isinstance(body, dict)
    return response.status_code, body


def the_session(db: Session) -> UserSession:
    db.expire_all()
    record = db.scalar(select(UserSession).order_by(UserSession.created_at.desc()))
    assert record is not None
    return record


# --- revocation ---------------------------------------------------------------------------------------------


def test_revocation_through_another_worker_ends_the_session_on_its_next_request(
    app: Flask, client: FlaskClient, other_worker: Flask, make_user: UserFactory
) -> None:
    make_user("rev@example.com")
    sign_in(client, "rev@example.com")
    assert session_api(client)[0] == 200  # this worker has served the session
    elsewhere = same_cookie(client, other_worker)
    status, body = session_api(elsewhere)
    assert status == 200
    # The user revokes this very session from the other worker, through the API (cookie + CSRF header).
    path = f"/api/auth/sessions/{body['session']['id']}"
    revoked = elsewhere.delete(path, headers={"X-CSRFToken": body["csrf_token"]})
    assert revoked.status_code == 204
    status, body = session_api(client)
    assert status == 401 and body["error"]["code"] == "not_authenticated"
    assert client.get("/account/").status_code == 302


def test_revocation_written_straight_to_the_database_is_seen_at_once(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("rev@example.com")
    sign_in(client, "rev@example.com")
    assert session_api(client)[0] == 200
    db.execute(update(UserSession).values(revoked_at=utcnow()))
    db.commit()
    assert session_api(client)[0] == 401


def test_deactivated_user_is_signed_out_on_the_next_request(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("gone@example.com")
    sign_in(client, "gone@example.com")
    assert session_api(client)[0] == 200
    db.execute(update(User).values(is_active=False))
    db.commit()
    assert session_api(client)[0] == 401


def test_profile_and_role_changes_show_on_the_next_request(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("ren@example.com", display_name="Before")
    sign_in(client, "ren@example.com")
    assert session_api(client)[1]["user"]["name"] == "Before"
    assert client.get("/api/auth/sessions").status_code == 200
    db.execute(update(User).values(display_name="After", role="admin"))
    db.commit()
    body = session_api(client)[1]
    assert body["user"]["name"] == "After" and body["user"]["roles"] == ["admin"]
    # Admin scopes apply at once too: an admin may read the compliance report, a member may not.
    assert client.get("/api/compliance/report").status_code == 200


# --- MFA: a factor added or removed takes effect on the next request ---------------------------------------


def test_factor_added_elsewhere_ends_a_password_only_session_on_its_next_request(
    app: Flask, client: FlaskClient, other_worker: Flask, settings: Settings, db: Session, make_user: UserFactory
) -> None:
    user = make_user("add@example.com")
    sign_in(client, "add@example.com")
    status, body = session_api(client)
    assert status == 200 and body["mfa"] == {
        "enrolled": False,
        "methods": [],
        "enrolment_required": False,
        "enrolment_url": None,
    }
    enrol_totp(other_worker, settings, user)
    status, body = session_api(client)
    assert status == 401 and body["error"]["code"] == "not_authenticated"
    assert the_session(db).revoked_at is not None
    db.expire_all()
    [revocation] = db.scalars(select(AuditEvent).where(AuditEvent.action == "session.revoke")).all()
    assert revocation.outcome == "denied" and revocation.details == {"reason": "second factor not used"}


def test_summary_follows_factors_and_recovery_codes_request_by_request(
    app: Flask, client: FlaskClient, settings: Settings, db: Session, make_user: UserFactory
) -> None:
    user = make_user("sum@example.com")
    secret = enrol_totp(app, settings, user)
    sign_in_with_totp(client, "sum@example.com", secret)
    assert session_api(client)[1]["mfa"] == {
        "enrolled": True,
        "methods": ["totp"],
        "enrolment_required": False,
        "enrolment_url": None,
    }

    with app.app_context():
        session = get_database(app).session()
        codes = recovery_codes.generate(session, settings, user)
        session.commit()
    assert session_api(client)[1]["mfa"] == {
        "enrolled": True,
        "methods": ["totp", "recovery_code"],
        "enrolment_required": False,
        "enrolment_url": None,
    }

    # Spend every code: "recovery_code" is no longer a way to finish a sign-in.
    db.execute(update(Credential).where(Credential.kind == "recovery_code").values(last_used_at=utcnow()))
    db.commit()
    assert len(codes) > 1
    assert session_api(client)[1]["mfa"] == {
        "enrolled": True,
        "methods": ["totp"],
        "enrolment_required": False,
        "enrolment_url": None,
    }

    # A TOTP set-up that was started but never confirmed is not a factor.
    db.execute(delete(Credential))
    db.commit()
    with app.app_context():
        session = get_database(app).session()
        totp.start_enrolment(session, settings, user)
        session.commit()
    assert session_api(client)[1]["mfa"] == {
        "enrolled": False,
        "methods": [],
        "enrolment_required": False,
        "enrolment_url": None,
    }


def test_factor_removed_elsewhere_applies_the_role_policy_on_the_next_request(
    app: Flask, client: FlaskClient, other_worker: Flask, settings: Settings, db: Session, make_user: UserFactory
) -> None:
    user = make_user("boss@example.com", role="admin")
    secret = enrol_totp(app, settings, user)
    db.add(MfaPolicy(role="admin", required=True))
    db.commit()
    sign_in_with_totp(client, "boss@example.com", secret)
    assert client.get("/api/auth/sessions").status_code == 200
    # An admin resets this user's factors from another worker.
    with other_worker.app_context():
        session = get_database(other_worker).session()
        mfa.reset(session, user.id)
        session.commit()
    status, body = session_api(client)
    # The CMS learns to send them to enrol.
    assert status == 200 and body["mfa"] == {
        "enrolled": False,
        "methods": [],
        "enrolment_required": True,
        "enrolment_url": "http://127.0.0.1:5000/account/mfa",
    }
    blocked = client.get("/api/auth/sessions")
    assert blocked.status_code == 403 and blocked.get_json()["error"]["code"] == "mfa_required"
    assert client.get("/account/").headers["Location"] == "/account/mfa"
    # And enrolling again lifts the block at once (the session was verified with a second factor).
    enrol_totp(other_worker, settings, user)
    assert client.get("/api/auth/sessions").status_code == 200


# --- idle timeout, absolute lifetime, last-seen touch ----------------------------------------------------


def test_idle_timeout_is_exact_on_the_api(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    make_user("idle@example.com")
    sign_in(client, "idle@example.com")
    db.execute(update(UserSession).values(last_seen_at=utcnow() - timedelta(minutes=30) + timedelta(seconds=20)))
    db.commit()
    status, body = session_api(client)
    assert status == 200
    # The request touched last_seen_at (more than a minute old), so the idle deadline moved to now + 30 min.
    record = the_session(db)
    assert utcnow() - record.last_seen_at < timedelta(seconds=10)
    assert body["session"]["idle_expires_at"] == (record.last_seen_at + timedelta(minutes=30)).isoformat()
    db.execute(update(UserSession).values(last_seen_at=utcnow() - timedelta(minutes=30, seconds=1)))
    db.commit()
    assert session_api(client)[0] == 401
    assert the_session(db).revoked_at is None  # expired by time, not revoked


def test_absolute_lifetime_is_exact_on_the_api(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    make_user("abs@example.com")
    sign_in(client, "abs@example.com")
    db.execute(update(UserSession).values(expires_at=utcnow() + timedelta(seconds=20)))
    db.commit()
    status, body = session_api(client)
    assert status == 200 and body["session"]["expires_at"] == the_session(db).expires_at.isoformat()
    # idle_expires_at is capped by the lifetime.
    assert body["session"]["idle_expires_at"] == body["session"]["expires_at"]
    db.execute(update(UserSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.commit()
    assert session_api(client)[0] == 401


def test_last_seen_is_written_at_most_once_a_minute(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    make_user("touch@example.com")
    sign_in(client, "touch@example.com")
    written = utcnow() - timedelta(seconds=50)
    db.execute(update(UserSession).values(last_seen_at=written))
    db.commit()
    for _ in range(3):
        assert session_api(client)[0] == 200
    assert the_session(db).last_seen_at == written  # within the minute: no write
    db.execute(update(UserSession).values(last_seen_at=written - timedelta(seconds=11)))
    db.commit()
    assert session_api(client)[0] == 200
    touched = the_session(db).last_seen_at
    assert utcnow() - touched < timedelta(seconds=10)
    assert session_api(client)[0] == 200
    assert the_session(db).last_seen_at == touched


# --- the rate limit still applies ------------------------------------------------------------------------


def test_session_endpoint_counts_against_the_per_user_rate_limit(
    tmp_path: Path, database_url: str, db: Session, make_user: UserFactory
) -> None:
    application = create_app(make_settings(tmp_path, database_url, AMI_AUTH_API_RATE_PER_MINUTE="3"))
    try:
        user = make_user("busy@example.com")
        client = application.test_client()
        sign_in(client, "busy@example.com")
        assert [session_api(client)[0] for _ in range(4)] == [200, 200, 200, 429]
        response = client.get("/api/auth/session")
        assert response.status_code == 429 and 1 <= int(response.headers["Retry-After"]) <= 60
        db.expire_all()
        [event_row] = db.scalars(select(AuditEvent).where(AuditEvent.action == "api.rate_limited")).all()
        assert event_row.target == f"user:{user.id}" and event_row.outcome == "denied"
    finally:
        dispose_app(application)


# --- what a request costs --------------------------------------------------------------------------------


def test_the_session_endpoint_reads_the_database_once(app: Flask, client: FlaskClient, make_user: UserFactory) -> None:
    """Session, user and second-factor state come from one statement (a regression guard, not a timing)."""
    make_user("one@example.com")
    sign_in(client, "one@example.com")
    assert session_api(client)[0] == 200  # last_seen_at is fresh: no touch below
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = get_database(app).engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert session_api(client)[0] == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, statements


def test_session_cookie_signing_follows_a_key_rotation(app: Flask, client: FlaskClient, make_user: UserFactory) -> None:
    """The cookie serializer is built once per set of keys, not once per app: a changed key applies at once."""
    make_user("keys@example.com")
    sign_in(client, "keys@example.com")
    assert session_api(client)[0] == 200
    old = app.secret_key
    app.secret_key = "n" * 48
    assert session_api(client)[0] == 401  # signed with a key the app no longer holds
    app.config["SECRET_KEY_FALLBACKS"] = [old]
    assert session_api(client)[0] == 200  # the old key is accepted as a fallback
