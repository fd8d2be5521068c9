"""Mail flows end to end over HTTP (test env: mail lands in the outbox): verification, password reset,
invitations, sign-up modes — links are single use, expire, and die with a password change."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app import create_app
from app.auth import mail_tokens
from app.extensions import get_database
from app.models import AuditEvent, LinkToken, User, UserSession, utcnow
from tests.conftest import PASSWORD, UserFactory, csrf_token, make_settings, sign_in
from tests.support.live import free_port
from tests.support.mailbox import last_mail, link_path, outbox
from tests.support.smtp import SmtpServer, body_text

NEW_PASSWORD = "a brand new passphrase 42"

AppFactory = Callable[..., Flask]


@pytest.fixture
def app_with(tmp_path: Path, database_url: str) -> Iterator[AppFactory]:
    """Build an app on the test database with extra AMI_AUTH_* settings (e.g. AMI_AUTH_SIGNUP=open)."""
    made: list[Flask] = []

    def factory(**env: str) -> Flask:
        application = create_app(make_settings(tmp_path, database_url, **env))
        application.config["TESTING"] = True
        made.append(application)
        return application

    yield factory
    for application in made:
        get_database(application).remove()
        get_database(application).engine.dispose()


def _actions(db: Session) -> list[str]:
    db.expire_all()
    return [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def _expire_tokens(db: Session, purpose: str) -> None:
    db.execute(update(LinkToken).where(LinkToken.purpose == purpose).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.commit()


def _without_csrf(html: str) -> str:
    return re.sub(r'"X-CSRFToken": "[^"]+"', "", html)


def _post(client: FlaskClient, path: str, data: dict[str, str], form_page: str | None = None) -> TestResponse:
    return client.post(path, data={**data, "csrf_token": csrf_token(client, form_page or path)})


# --- password reset ---------------------------------------------------------------------------------


def test_reset_request_shows_one_page_and_mails_either_way(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("known@example.com")
    known = client.post("/reset", data={"email": "Known@Example.com", "csrf_token": csrf_token(client, "/reset")})
    unknown = client.post("/reset", data={"email": "nobody@example.com", "csrf_token": csrf_token(client, "/reset")})
    assert known.status_code == unknown.status_code == 200
    known_html = _without_csrf(known.get_data(as_text=True)).replace("Known@Example.com", "ADDR")
    unknown_html = _without_csrf(unknown.get_data(as_text=True)).replace("nobody@example.com", "ADDR")
    assert known_html == unknown_html
    assert "Check your inbox" in known_html

    reset_mail = last_mail(db, "known@example.com")
    assert reset_mail.subject == "Reset your password"
    assert link_path(reset_mail.text, "/reset/")
    assert reset_mail.html is not None and "/reset/" in reset_mail.html
    note = last_mail(db, "nobody@example.com")
    assert "no account for this address" in note.text
    assert "/reset\n" in note.text  # a link to the request page, for another address
    with pytest.raises(AssertionError):
        link_path(note.text, "/reset/")  # but no reset token
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "password_reset.requested")).all()
    assert [e.details["account"] for e in events] == ["active", "none"]


def test_reset_request_rejects_a_malformed_address_on_the_field(client: FlaskClient, db: Session) -> None:
    response = _post(client, "/reset", {"email": "not-an-address"})
    html = response.get_data(as_text=True)
    assert 'id="email-error"' in html
    assert outbox(db) == []


def test_reset_sets_password_ends_sessions_and_is_single_use(
    client: FlaskClient, app: Flask, db: Session, make_user: UserFactory
) -> None:
    user = make_user("rita@example.com")
    other_device = app.test_client()
    sign_in(other_device, "rita@example.com")
    assert other_device.get("/account/").status_code == 200

    _post(client, "/reset", {"email": "rita@example.com"})
    path = link_path(last_mail(db, "rita@example.com").text, "/reset/")
    page = client.get(path)
    assert page.status_code == 200 and "rita@example.com" in page.get_data(as_text=True)

    weak = client.post(path, data={"password": "short", "confirm": "short", "csrf_token": csrf_token(client, path)})
    assert 'id="password-error"' in weak.get_data(as_text=True)
    assert "Use at least 12 characters" in weak.get_data(as_text=True)

    done = client.post(
        path, data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "csrf_token": csrf_token(client, path)}
    )
    assert done.status_code == 302 and done.headers["Location"] == "/signin"
    # Every session ended, including the other device's.
    assert other_device.get("/account/").status_code == 302
    assert db.scalars(select(UserSession).where(UserSession.revoked_at.is_(None))).all() == []
    # Single use.
    again = client.get(path)
    assert again.status_code == 410 and "no longer valid" in again.get_data(as_text=True)
    # The new password works, the old one does not.
    assert sign_in(client, "rita@example.com", PASSWORD).status_code == 401
    assert sign_in(client, "rita@example.com", NEW_PASSWORD).status_code == 302
    assert "password_reset.completed" in _actions(db)
    completed = db.scalar(select(AuditEvent).where(AuditEvent.action == "password_reset.completed"))
    assert completed is not None and completed.target == f"user:{user.id}"
    assert NEW_PASSWORD not in str(completed.details)


def test_reset_link_expires_after_an_hour(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    make_user("exp@example.com")
    _post(client, "/reset", {"email": "exp@example.com"})
    path = link_path(last_mail(db, "exp@example.com").text, "/reset/")
    token = db.scalar(select(LinkToken).where(LinkToken.purpose == "reset"))
    assert token is not None and timedelta(minutes=59) < token.expires_at - token.created_at <= timedelta(hours=1)
    _expire_tokens(db, "reset")
    assert client.get(path).status_code == 410


def test_new_reset_link_voids_the_previous_one(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    make_user("twice@example.com")
    _post(client, "/reset", {"email": "twice@example.com"})
    first = link_path(last_mail(db, "twice@example.com").text, "/reset/")
    _post(client, "/reset", {"email": "twice@example.com"})
    second = link_path(last_mail(db, "twice@example.com").text, "/reset/")
    assert first != second
    assert client.get(first).status_code == 410
    assert client.get(second).status_code == 200


def test_reset_link_dies_with_a_password_change(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    make_user("chg@example.com")
    _post(client, "/reset", {"email": "chg@example.com"})
    path = link_path(last_mail(db, "chg@example.com").text, "/reset/")
    sign_in(client, "chg@example.com")
    changed = _post(
        client,
        "/account/password",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
        form_page="/account/",
    )
    assert changed.status_code == 302
    anonymous = client.application.test_client()
    assert anonymous.get(path).status_code == 410


def test_disabled_account_gets_a_mail_without_a_link(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    user = make_user("off@example.com")
    db.execute(update(User).where(User.id == user.id).values(is_active=False))
    db.commit()
    response = _post(client, "/reset", {"email": "off@example.com"})
    assert "Check your inbox" in response.get_data(as_text=True)
    mail = last_mail(db, "off@example.com")
    assert "disabled" in mail.text and "/reset/" not in mail.text
    assert db.scalars(select(LinkToken).where(LinkToken.purpose == "reset")).all() == []


def test_reset_over_real_smtp(
    app_with: AppFactory, smtp_server: SmtpServer, db: Session, make_user: UserFactory
) -> None:
    app = app_with(AMI_AUTH_SMTP_URL=smtp_server.url(), AMI_AUTH_SMTP_CA_FILE=str(smtp_server.ca_file))
    make_user("smtp@example.com")
    client = app.test_client()
    _post(client, "/reset", {"email": "smtp@example.com"})
    message = smtp_server.wait_for("smtp@example.com")
    assert message["Subject"] == "Reset your password"
    path = link_path(body_text(message), "/reset/")
    assert client.get(path).status_code == 200
    assert outbox(db) == []


def test_reset_page_hides_mail_transport_details(app_with: AppFactory, db: Session, make_user: UserFactory) -> None:
    # Nothing listens on the discard port; the one SMTP answer comes at the (short) deadline.
    app = app_with(AMI_AUTH_SMTP_URL="smtp://127.0.0.1:9", AMI_AUTH_OUTBOUND_TIMEOUT="1")
    make_user("down@example.com")
    client = app.test_client()
    response = _post(client, "/reset", {"email": "down@example.com"})
    html = response.get_data(as_text=True)
    assert response.status_code == 503
    assert "could not send the mail" in html and "127.0.0.1:9" not in html


# --- email verification ---------------------------------------------------------------------------------


def test_signup_open_creates_member_and_verification_link_works_once(app_with: AppFactory, db: Session) -> None:
    app = app_with(AMI_AUTH_SIGNUP="open")
    client = app.test_client()
    signin_page = client.get("/signin").get_data(as_text=True)
    assert "Create account" in signin_page and "Forgot password?" in signin_page

    response = _post(client, "/signup", {"email": "New@Example.com", "display_name": "Newt", "password": PASSWORD})
    assert response.status_code == 200 and "Check your inbox" in response.get_data(as_text=True)
    user = db.scalar(select(User).where(User.email == "new@example.com"))
    assert user is not None and user.role == "member" and user.email_verified_at is None
    assert user.display_name == "Newt"

    path = link_path(last_mail(db, "new@example.com").text, "/verify/")
    # Signed in but unverified: the account page offers a new mail.
    sign_in(client, "new@example.com")
    account = client.get("/account/").get_data(as_text=True)
    assert "Resend verification mail" in account and 'data-status="unverified"' in account

    confirm = client.get(path)
    assert confirm.status_code == 200 and "Confirm email address" in confirm.get_data(as_text=True)
    db.expire_all()
    assert user.email_verified_at is None  # a GET changes nothing (link scanners prefetch GETs)
    done = client.post(path, data={"csrf_token": csrf_token(client, path)})
    assert done.status_code == 200 and "Email address confirmed" in done.get_data(as_text=True)
    db.expire_all()
    assert user.email_verified_at is not None
    account = client.get("/account/").get_data(as_text=True)
    assert 'data-status="verified"' in account and "Resend verification mail" not in account
    assert client.get(path).status_code == 410
    assert {"user.create", "email.verification_sent", "email.verified"} <= set(_actions(db))


def test_resend_verification_voids_the_old_link_and_links_expire(client: FlaskClient, db: Session, app: Flask) -> None:
    from app.auth import users as users_logic

    with app.app_context():
        session = get_database(app).session()
        users_logic.create_user(
            session, app.extensions["ami_settings"], email="unv@example.com", password=PASSWORD, verified=False
        )
        session.commit()
    sign_in(client, "unv@example.com")
    token = csrf_token(client, "/account/")
    client.post("/account/verify", data={"csrf_token": token})
    first = link_path(last_mail(db, "unv@example.com").text, "/verify/")
    client.post("/account/verify", data={"csrf_token": token})
    second = link_path(last_mail(db, "unv@example.com").text, "/verify/")
    assert client.get(first).status_code == 410
    assert client.get(second).status_code == 200
    stored = db.scalars(select(LinkToken).where(LinkToken.purpose == "verify", LinkToken.used_at.is_(None))).one()
    assert stored.expires_at - stored.created_at == timedelta(hours=24)
    _expire_tokens(db, "verify")
    assert client.get(second).status_code == 410


def test_signup_with_taken_address_looks_the_same_and_mails_the_owner(
    app_with: AppFactory, db: Session, make_user: UserFactory
) -> None:
    app = app_with(AMI_AUTH_SIGNUP="open")
    make_user("taken@example.com")
    client = app.test_client()
    taken = _post(client, "/signup", {"email": "taken@example.com", "display_name": "", "password": PASSWORD})
    fresh = _post(client, "/signup", {"email": "fresh@example.com", "display_name": "", "password": PASSWORD})
    a = _without_csrf(taken.get_data(as_text=True)).replace("taken@example.com", "ADDR")
    b = _without_csrf(fresh.get_data(as_text=True)).replace("fresh@example.com", "ADDR")
    assert a == b
    assert "already has an account" in last_mail(db, "taken@example.com").text
    # The existing account's password was not touched.
    assert sign_in(client, "taken@example.com", PASSWORD).status_code == 302


def test_signup_policy_error_is_on_the_field(app_with: AppFactory, db: Session) -> None:
    client = app_with(AMI_AUTH_SIGNUP="open").test_client()
    response = _post(client, "/signup", {"email": "p@example.com", "display_name": "", "password": "short"})
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert re.search(r'id="password-error"[^>]*>Use at least 12 characters', html)
    assert 'value="short"' not in html
    assert db.scalar(select(User).where(User.email == "p@example.com")) is None


@pytest.mark.parametrize("mode", ["invite", "closed"])
def test_signup_is_not_offered_unless_open(app_with: AppFactory, mode: str) -> None:
    client = app_with(AMI_AUTH_SIGNUP=mode).test_client()
    assert "Create account" not in client.get("/signin").get_data(as_text=True)
    page = client.get("/signup")
    assert page.status_code == 404
    assert "Sign-up is not open" in page.get_data(as_text=True)
    token = csrf_token(client, "/signin")
    posted = client.post("/signup", data={"email": "x@example.com", "password": PASSWORD, "csrf_token": token})
    assert posted.status_code == 404


# --- invitations ------------------------------------------------------------------------------------


def _admin_client(app: Flask, make_user: UserFactory) -> FlaskClient:
    make_user("boss@example.com", role="admin")
    client = app.test_client()
    sign_in(client, "boss@example.com")
    return client


def test_invite_sets_password_verifies_and_is_single_use(app: Flask, db: Session, make_user: UserFactory) -> None:
    admin = _admin_client(app, make_user)
    created = _post(
        admin,
        "/admin/users/new",
        {"email": "invitee@example.com", "display_name": "Ivy", "role": "member", "metadata": "", "mode": "invite"},
    )
    assert created.status_code == 302
    user = db.scalar(select(User).where(User.email == "invitee@example.com"))
    assert user is not None and user.password_hash is None and user.email_verified_at is None
    mail = last_mail(db, "invitee@example.com")
    assert "boss@example.com invited you" in mail.text
    path = link_path(mail.text, "/invite/")
    token = db.scalars(select(LinkToken).where(LinkToken.purpose == "invite")).one()
    assert token.expires_at - token.created_at == timedelta(days=7)

    guest = app.test_client()
    page = guest.get(path)
    assert page.status_code == 200 and "invitee@example.com" in page.get_data(as_text=True)
    mismatch = guest.post(
        path, data={"password": PASSWORD, "confirm": PASSWORD + "x", "csrf_token": csrf_token(guest, path)}
    )
    assert "The passwords differ." in mismatch.get_data(as_text=True)
    done = guest.post(path, data={"password": PASSWORD, "confirm": PASSWORD, "csrf_token": csrf_token(guest, path)})
    assert done.status_code == 302 and done.headers["Location"] == "/signin"
    db.expire_all()
    user = db.get(User, user.id)
    assert user is not None and user.password_hash is not None and user.email_verified_at is not None
    assert guest.get(path).status_code == 410
    assert sign_in(guest, "invitee@example.com").status_code == 302
    assert {"user.create", "user.invited", "invite.accepted"} <= set(_actions(db))


def test_invite_link_expires(app: Flask, db: Session, make_user: UserFactory) -> None:
    admin = _admin_client(app, make_user)
    _post(admin, "/admin/users/new", {"email": "late@example.com", "role": "member", "mode": "invite"})
    path = link_path(last_mail(db, "late@example.com").text, "/invite/")
    _expire_tokens(db, "invite")
    expired = app.test_client().get(path)
    assert expired.status_code == 410 and "administrator" in expired.get_data(as_text=True)


def test_closed_mode_refuses_invites_but_allows_passwords(
    app_with: AppFactory, db: Session, make_user: UserFactory
) -> None:
    app = app_with(AMI_AUTH_SIGNUP="closed")
    admin = _admin_client(app, make_user)
    form = admin.get("/admin/users/new").get_data(as_text=True)
    assert 'value="invite"' not in form and "Invitations are off" in form
    refused = _post(admin, "/admin/users/new", {"email": "inv@example.com", "role": "member", "mode": "invite"})
    assert refused.status_code == 422
    assert db.scalar(select(User).where(User.email == "inv@example.com")) is None
    ok = _post(
        admin,
        "/admin/users/new",
        {"email": "pw@example.com", "role": "member", "mode": "password", "password": PASSWORD},
    )
    assert ok.status_code == 302
    assert outbox(db) == []


def test_invite_mail_failure_keeps_the_user_and_says_so(
    app_with: AppFactory, db: Session, make_user: UserFactory, smtp_server: SmtpServer
) -> None:
    app = app_with(AMI_AUTH_SMTP_URL=smtp_server.url("wrong password"), AMI_AUTH_SMTP_CA_FILE=str(smtp_server.ca_file))
    admin = _admin_client(app, make_user)
    response = _post(admin, "/admin/users/new", {"email": "later@example.com", "role": "member", "mode": "invite"})
    assert response.status_code == 302
    detail = admin.get(response.headers["Location"]).get_data(as_text=True)
    assert "could not be sent" in detail and "Send invitation again" in detail
    assert db.scalar(select(User).where(User.email == "later@example.com")) is not None


def test_invite_while_smtp_is_down_is_recorded_as_not_sent_and_can_be_sent_again(
    app_with: AppFactory, db: Session, make_user: UserFactory
) -> None:
    # Nothing listens on the port: the mail cannot go out.
    down = app_with(AMI_AUTH_SMTP_URL=f"smtp://127.0.0.1:{free_port()}", AMI_AUTH_OUTBOUND_TIMEOUT="1")
    admin = _admin_client(down, make_user)
    response = _post(admin, "/admin/users/new", {"email": "wait@example.com", "role": "member", "mode": "invite"})
    assert response.status_code == 302
    detail = admin.get(response.headers["Location"]).get_data(as_text=True)
    assert "wait@example.com was created, but the invitation could not be sent" in detail
    assert "Send invitation again" in detail
    user = db.scalars(select(User).where(User.email == "wait@example.com")).one()
    [invited] = db.scalars(select(AuditEvent).where(AuditEvent.action == "user.invited")).all()
    assert (invited.outcome, invited.details["mail"], invited.details["reason"]) == (
        "failure",
        "not_sent",
        "provider_unreachable",
    )
    # The link nobody received does not work.
    assert db.scalars(select(LinkToken).where(LinkToken.purpose == "invite", LinkToken.used_at.is_(None))).all() == []

    # Once mail works (here: the outbox), "Send invitation again" sends it and says so in the log.
    working = app_with()
    admin = working.test_client()
    sign_in(admin, "boss@example.com")
    _post(admin, f"/admin/users/{user.id}/invite", {}, form_page=f"/admin/users/{user.id}")
    assert link_path(last_mail(db, "wait@example.com").text, "/invite/")
    db.expire_all()
    outcomes = [
        (e.outcome, e.details["mail"])
        for e in db.scalars(select(AuditEvent).where(AuditEvent.action == "user.invited"))
    ]
    assert outcomes == [("failure", "not_sent"), ("success", "sent")]


def test_link_of_one_kind_does_not_work_as_another(app: Flask, db: Session, make_user: UserFactory) -> None:
    user = make_user("kind@example.com")
    with app.app_context():
        session = get_database(app).session()
        raw = mail_tokens.issue_token(session, "verify", user_id=user.id, email=user.email)
        session.commit()
    client = app.test_client()
    assert client.get(f"/reset/{raw}").status_code == 410
    assert client.get(f"/invite/{raw}").status_code == 410
    assert client.get(f"/verify/{raw}").status_code == 200
