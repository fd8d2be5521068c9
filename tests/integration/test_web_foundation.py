"""The console shell: first-admin setup, sign-in, guards, errors, headers, health — on SQLite and PostgreSQL."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import mail_tokens
from app.models import AuditEvent, User, UserSession
from tests.conftest import PASSWORD, UserFactory, csrf_token, sign_in


def _setup_link(db: Session) -> str:
    raw = mail_tokens.issue_token(db, "setup")
    db.commit()
    return f"/setup/{raw}"


def test_first_admin_setup_link_is_single_use(client: FlaskClient, db: Session) -> None:
    link = _setup_link(db)
    token = csrf_token(client, link)
    response = client.post(
        link,
        data={
            "email": "Admin@Example.com",
            "display_name": "Ada",
            "password": PASSWORD,
            "confirm": PASSWORD,
            "csrf_token": token,
        },
    )
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/")
    admin = db.scalar(select(User).where(User.email == "admin@example.com"))
    assert admin is not None and admin.role == "admin" and admin.password_hash != PASSWORD
    page = client.get("/admin/")
    assert page.status_code == 200 and "Overview" in page.get_data(as_text=True)
    # The link is spent: a second visit gets a clear error page, not the form.
    other = client.application.test_client()
    again = other.get(link)
    assert again.status_code == 410
    assert "no longer valid" in again.get_data(as_text=True)


def test_setup_rejects_short_password_on_the_field_and_keeps_email(client: FlaskClient, db: Session) -> None:
    link = _setup_link(db)
    token = csrf_token(client, link)
    response = client.post(
        link, data={"email": "a@example.com", "password": "short", "confirm": "short", "csrf_token": token}
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert re.search(r'class="error" id="password-error"[^>]*>Use at least 12 characters', html)
    assert 'value="a@example.com"' in html
    assert 'value="short"' not in html  # a password is never rendered back


def test_expired_setup_link(client: FlaskClient) -> None:
    response = client.get("/setup/not-a-real-token")
    assert response.status_code == 410


def test_signin_rotates_session_and_records_audit(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    make_user("ann@example.com", role="admin")
    before = csrf_token(client, "/signin")
    response = sign_in(client, "ann@example.com")
    assert response.status_code == 302
    # The pre-login CSRF token belonged to the old session: after sign-in the form carries a new one.
    assert csrf_token(client, "/admin/") != before
    assert db.scalar(select(UserSession).where(UserSession.revoked_at.is_(None))) is not None
    actions = [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert "signin.success" in actions


def test_wrong_password_shows_error_on_field(client: FlaskClient, make_user: UserFactory, db: Session) -> None:
    make_user("bob@example.com")
    response = sign_in(client, "bob@example.com", "wrong password here")
    html = response.get_data(as_text=True)
    assert response.status_code == 401
    assert "Email or password is not right." in html
    assert 'value="bob@example.com"' in html
    failures = db.scalars(select(AuditEvent).where(AuditEvent.action == "signin.failure")).all()
    assert len(failures) == 1 and failures[0].outcome == "failure"


def test_anonymous_admin_redirects_with_safe_next(client: FlaskClient) -> None:
    response = client.get("/admin/audit?action=x")
    assert response.status_code == 302
    assert response.headers["Location"] == "/signin?next=/admin/audit?action%3Dx"


def test_next_cannot_leave_the_site(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("cat@example.com", role="admin")
    token = csrf_token(client, "/signin")
    for evil in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        response = client.post(
            f"/signin?next={evil}",
            data={"email": "cat@example.com", "password": PASSWORD, "csrf_token": token},
        )
        assert response.status_code == 302
        assert "evil" not in response.headers["Location"]
        client.post("/signout", data={"csrf_token": csrf_token(client, "/admin/")})
        token = csrf_token(client, "/signin")


def test_member_gets_403_on_admin_pages(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("mem@example.com")
    sign_in(client, "mem@example.com")
    response = client.get("/admin/audit")
    assert response.status_code == 403
    assert 'data-error-code="permission_denied"' in response.get_data(as_text=True)
    api = client.get("/admin/audit", headers={"Accept": "application/json"})
    assert api.status_code == 403 and api.json is not None
    assert api.json["error"]["code"] == "permission_denied"


def test_post_without_csrf_is_refused(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("dan@example.com")
    response = client.post("/signin", data={"email": "dan@example.com", "password": PASSWORD})
    assert response.status_code == 400
    assert "did not come from this site" in response.get_data(as_text=True)


def test_security_headers_and_cookie_flags(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("eve@example.com")
    page = client.get("/signin")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "same-origin"  # not no-referrer: see app/http/csrf.py
    response = sign_in(client, "eve@example.com")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http in tests; Secure is set under https (tested in unit tests)


def test_not_found_and_bad_input_never_500(client: FlaskClient) -> None:
    assert client.get("/nope").status_code == 404
    body = client.get("/api/nope").json
    assert body is not None and body["error"]["code"] == "not_found"
    assert set(body["error"]) >= {"code", "message", "hint", "fields"}
    # Oversized and malformed inputs
    assert client.post("/signin", data={"email": "x" * 2_000_000}).status_code == 413
    assert client.get("/setup/" + "x" * 5000).status_code == 410


def test_unexpected_error_gets_reference(app: Flask, client: FlaskClient) -> None:
    @app.get("/boom-for-test")
    def boom() -> str:
        raise RuntimeError("kaboom")

    response = client.get("/boom-for-test")
    html = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "kaboom" not in html and "Traceback" not in html
    # The reference is the request id the response carries (and the log line): a user's report finds the line.
    reference = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", reference)
    assert f"reference <code>{reference}</code>" in html


def test_health_and_ready(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json is not None and ready.json["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "keys": "ok",
    }


def test_signout_ends_session(client: FlaskClient, make_user: UserFactory, db: Session) -> None:
    make_user("fay@example.com", role="admin")
    sign_in(client, "fay@example.com")
    token = csrf_token(client, "/admin/")
    assert client.post("/signout", data={"csrf_token": token}).status_code == 302
    assert client.get("/admin/").status_code == 302
    assert db.scalar(select(UserSession)).revoked_at is not None  # type: ignore[union-attr]
