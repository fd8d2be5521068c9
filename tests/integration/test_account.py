"""Self-service on /account and the session rules: password change, profile, session list and revocation,
idle timeout and absolute lifetime (tested by moving stored timestamps back), temporary passwords."""

from __future__ import annotations

import re
from datetime import timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app.auth import mail_tokens
from app.extensions import get_database
from app.models import AuditEvent, LinkToken, UserSession, utcnow
from tests.conftest import PASSWORD, UserFactory, csrf_token, sign_in
from tests.support.throttle_app import post_signin

NEW_PASSWORD = "another long passphrase 7"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"
)


def _client(app: Flask, user_agent: str = FIREFOX_LINUX) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = user_agent
    return client


def _post(client: FlaskClient, path: str, data: dict[str, str] | None = None) -> TestResponse:
    return client.post(path, data={**(data or {}), "csrf_token": csrf_token(client, "/account/")})


def _signed_in(client: FlaskClient) -> bool:
    return client.get("/account/").status_code == 200


def _live(db: Session) -> list[UserSession]:
    db.expire_all()
    return list(db.scalars(select(UserSession).where(UserSession.revoked_at.is_(None))))


def _actions(db: Session) -> list[str]:
    db.expire_all()
    return [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def test_change_password_checks_current_and_ends_other_sessions(
    app: Flask, db: Session, make_user: UserFactory
) -> None:
    user = make_user("pat@example.com")
    here, elsewhere = _client(app), _client(app, CHROME_WINDOWS)
    sign_in(here, "pat@example.com")
    sign_in(elsewhere, "pat@example.com")
    with app.app_context():
        session = get_database(app).session()
        raw_reset = mail_tokens.issue_token(session, "reset", user_id=user.id, email=user.email)
        session.commit()

    wrong = _post(
        here,
        "/account/password",
        {"current_password": "not my password!", "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
    )
    html = wrong.get_data(as_text=True)
    assert wrong.status_code == 401
    assert re.search(r'id="current_password-error"[^>]*>This is not your current password', html)
    assert "not my password!" not in html and NEW_PASSWORD not in html

    weak = _post(here, "/account/password", {"current_password": PASSWORD, "new_password": "tiny", "confirm": "tiny"})
    assert weak.status_code == 422
    assert re.search(r'id="new_password-error"[^>]*>Use at least 12 characters', weak.get_data(as_text=True))

    same = _post(
        here, "/account/password", {"current_password": PASSWORD, "new_password": PASSWORD, "confirm": PASSWORD}
    )
    assert "different from the current one" in same.get_data(as_text=True)
    assert _signed_in(elsewhere)

    ok = _post(
        here, "/account/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    )
    assert ok.status_code == 302
    page = here.get("/account/").get_data(as_text=True)
    assert "Your password was changed. 1 other session(s) were signed out." in page
    assert _signed_in(here) and not _signed_in(elsewhere)
    assert len(_live(db)) == 1
    # The reset link issued before the change is void.
    assert db.scalar(select(LinkToken).where(LinkToken.purpose == "reset")).used_at is not None  # type: ignore[union-attr]
    assert app.test_client().get(f"/reset/{raw_reset}").status_code == 410
    outcomes = [e.outcome for e in db.scalars(select(AuditEvent).where(AuditEvent.action == "password.change"))]
    assert outcomes == ["failure", "success"]
    assert sign_in(app.test_client(), "pat@example.com", NEW_PASSWORD).status_code == 302


def test_wrong_current_passwords_count_toward_the_account_lock(app: Flask, db: Session, make_user: UserFactory) -> None:
    make_user("pat@example.com")
    client = _client(app)
    sign_in(client, "pat@example.com")
    attempt = {"current_password": "a guess at it!", "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    codes = [_post(client, "/account/password", attempt).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 401]
    # The fifth wrong password locks the account (the sign-in throttle's default of 5 failures).
    locked = _post(client, "/account/password", attempt)
    html = locked.get_data(as_text=True)
    assert locked.status_code == 429 and 1 <= int(locked.headers["Retry-After"]) <= 60
    assert re.search(r'id="current_password-error"[^>]*>Too many failed sign-ins for this account', html)
    # While locked, even the right password is not checked here, and this browser's sign-in is closed to
    # guessing too.
    right = {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    assert _post(client, "/account/password", right).status_code == 429
    assert client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")}).status_code == 302
    assert sign_in(client, "pat@example.com").status_code == 429
    assert "account.locked" in _actions(db)
    # The lock is on this browser's own count (smart lockout): the owner elsewhere is not locked out by it.
    elsewhere = app.test_client()
    assert post_signin(elsewhere, "pat@example.com", PASSWORD, ip="203.0.113.50").status_code == 302


def test_edit_display_name(app: Flask, db: Session, make_user: UserFactory) -> None:
    make_user("nia@example.com")
    client = _client(app)
    sign_in(client, "nia@example.com")
    assert _post(client, "/account/profile", {"display_name": "  Nia Long  "}).status_code == 302
    assert 'value="Nia Long"' in client.get("/account/").get_data(as_text=True)
    too_long = _post(client, "/account/profile", {"display_name": "x" * 201})
    assert too_long.status_code == 422 and 'id="display_name-error"' in too_long.get_data(as_text=True)
    assert "user.update" in _actions(db)


def test_session_list_shows_devices_and_revokes_one_or_all_others(
    app: Flask, db: Session, make_user: UserFactory
) -> None:
    make_user("sam@example.com")
    make_user("other@example.com")
    laptop, desktop, phone = _client(app), _client(app, CHROME_WINDOWS), _client(app, "curl/8.5.0")
    for client in (laptop, desktop, phone):
        sign_in(client, "sam@example.com")
    page = laptop.get("/account/").get_data(as_text=True)
    assert "Firefox on Linux" in page and "Chrome on Windows" in page and "curl" in page
    assert page.count("this session") == 1

    desktop_session = next(s for s in _live(db) if "Windows" in s.user_agent)
    assert _post(laptop, f"/account/sessions/{desktop_session.public_id}/revoke").status_code == 302
    assert not _signed_in(desktop)  # ended on its next request
    assert _signed_in(phone) and _signed_in(laptop)

    # Someone else's session id is not yours to end.
    other = _client(app)
    sign_in(other, "other@example.com")
    theirs = next(s for s in _live(db) if s.user.email == "other@example.com")
    assert _post(laptop, f"/account/sessions/{theirs.public_id}/revoke").status_code == 404
    assert _signed_in(other)

    assert _post(laptop, "/account/sessions/revoke-others").status_code == 302
    assert not _signed_in(phone) and _signed_in(laptop) and _signed_in(other)
    assert _actions(db).count("session.revoked") == 1 and "session.revoked_all" in _actions(db)


def test_idle_timeout(app: Flask, db: Session, make_user: UserFactory) -> None:
    make_user("idle@example.com")
    client = _client(app)
    sign_in(client, "idle@example.com")
    (record,) = _live(db)
    db.execute(update(UserSession).values(last_seen_at=utcnow() - timedelta(minutes=29)))
    db.commit()
    assert _signed_in(client)  # 29 minutes idle: still fine (and the request touched last_seen_at)
    db.execute(update(UserSession).values(last_seen_at=utcnow() - timedelta(minutes=30, seconds=5)))
    db.commit()
    response = client.get("/account/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/signin")
    # An idle session is no longer listed as live for the user.
    other = _client(app)
    sign_in(other, "idle@example.com")
    assert record.public_id not in other.get("/account/").get_data(as_text=True)


def test_absolute_lifetime(app: Flask, db: Session, make_user: UserFactory) -> None:
    make_user("abs@example.com")
    client = _client(app)
    sign_in(client, "abs@example.com")
    (record,) = _live(db)
    assert record.expires_at - record.created_at == timedelta(hours=12)
    started = utcnow() - timedelta(hours=12, minutes=1)
    # Active a moment ago, but signed in more than 12 hours ago.
    db.execute(
        update(UserSession).values(
            created_at=started, expires_at=started + timedelta(hours=12), last_seen_at=utcnow() - timedelta(minutes=1)
        )
    )
    db.commit()
    assert not _signed_in(client)


def test_each_sign_in_gets_a_new_session_id(app: Flask, db: Session, make_user: UserFactory) -> None:
    make_user("new@example.com")
    client = _client(app)
    sign_in(client, "new@example.com")
    first = {s.id for s in _live(db)}
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})
    sign_in(client, "new@example.com")
    second = {s.id for s in _live(db)}
    assert len(first) == len(second) == 1 and first != second


def test_temporary_password_must_be_changed_first(app: Flask, db: Session, make_user: UserFactory) -> None:
    make_user("boss@example.com", role="admin")
    admin = _client(app)
    sign_in(admin, "boss@example.com")
    created = admin.post(
        "/admin/users/new",
        data={
            "email": "temp@example.com",
            "role": "member",
            "mode": "password",
            "password": PASSWORD,
            "temporary": "y",
            "csrf_token": csrf_token(admin, "/admin/users/new"),
        },
    )
    assert created.status_code == 302
    user_client = _client(app)
    sign_in(user_client, "temp@example.com")
    assert user_client.get("/admin/users").headers["Location"] == "/account/#password"
    assert 'data-notice="must-change-password"' in user_client.get("/account/").get_data(as_text=True)
    _post(
        user_client,
        "/account/password",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
    )
    assert 'data-notice="must-change-password"' not in user_client.get("/account/").get_data(as_text=True)
    assert user_client.get("/admin/users").status_code == 403  # now the normal rules apply: a member


def test_unverified_user_can_resend_but_verified_cannot(app: Flask, db: Session, make_user: UserFactory) -> None:
    make_user("ver@example.com")  # the fixture creates verified users
    client = _client(app)
    sign_in(client, "ver@example.com")
    page = client.get("/account/").get_data(as_text=True)
    assert 'data-status="verified"' in page and "Resend verification mail" not in page
    response = _post(client, "/account/verify")
    assert response.status_code == 302
    assert "already verified" in client.get("/account/").get_data(as_text=True)
