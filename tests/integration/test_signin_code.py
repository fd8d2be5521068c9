"""Sign-in by a mailed one-time code (AMI_AUTH_EMAIL_CODE_SIGNIN, issue 14), over HTTP with the outbox: one page
for any address, single use, expiring, void after five wrong guesses, throttled, and a second factor still asked
for."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import create_app
from app.models import AuditEvent, LinkToken, User, utcnow
from app.settings import Settings
from tests.conftest import UserFactory, csrf_token, dispose_app, make_settings
from tests.support.mailbox import last_mail, outbox
from tests.support.mfa import enrol_totp


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_EMAIL_CODE_SIGNIN="true", AMI_AUTH_MFA_REQUIRED_ROLES="admin")


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    dispose_app(application)


def ask_code(client: FlaskClient, email: str) -> str:
    response = client.post("/signin/code", data={"email": email, "csrf_token": csrf_token(client, "/signin/code")})
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.headers["Location"].startswith("/signin/code/enter")
    return client.get(response.headers["Location"]).get_data(as_text=True)


def mailed_code(db: Session, email: str) -> str:
    match = re.search(r"^(\d{6})$", last_mail(db, email).text, re.MULTILINE)
    assert match, last_mail(db, email).text
    return match.group(1)


def enter(client: FlaskClient, code: str) -> tuple[int, str, str]:
    token = csrf_token(client, "/signin/code/enter")
    response = client.post("/signin/code/enter", data={"code": code, "csrf_token": token})
    return response.status_code, response.headers.get("Location", ""), response.get_data(as_text=True)


def signed_in_as(client: FlaskClient) -> str | None:
    html = client.get("/account/").get_data(as_text=True)
    match = re.search(r'class="who"[^>]*>([^<]+)<', html)
    return match.group(1) if match else None


def test_the_sign_in_page_offers_a_code_only_when_turned_on(
    client: FlaskClient, tmp_path: Path, database_url: str
) -> None:
    assert "Email me a sign-in code" in client.get("/signin").get_data(as_text=True)
    off = create_app(make_settings(tmp_path, database_url))
    try:
        plain = off.test_client()
        assert "Email me a sign-in code" not in plain.get("/signin").get_data(as_text=True)
        assert plain.get("/signin/code").status_code == 404
    finally:
        dispose_app(off)


def test_a_mailed_code_signs_in_once(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    make_user("cleo@example.com")
    page = ask_code(client, "Cleo@Example.com")
    assert "cleo@example.com" in page
    code = mailed_code(db, "cleo@example.com")
    assert last_mail(db, "cleo@example.com").subject == "Your sign-in code"
    status, location, _ = enter(client, f"{code[:3]} {code[3:]}")  # spaces as people copy it
    assert (status, location) == (302, "/account/")
    assert signed_in_as(client) == "cleo@example.com"
    events = db.scalars(select(AuditEvent).where(AuditEvent.action.like("signin%")).order_by(AuditEvent.id)).all()
    assert [(e.action, e.details) for e in events][-2:] == [
        ("signin_code.requested", {"account": "usable"}),
        ("signin.success", {"method": "email_code"}),
    ]
    # Single use: the same code again, from another browser, signs nobody in.
    other = client.application.test_client()
    ask_code(other, "cleo@example.com")
    db.execute(update(LinkToken).where(LinkToken.purpose == "signin_code").values(used_at=utcnow()))
    db.commit()
    status, _, html = enter(other, code)
    assert status == 401
    assert "This code is not right or has expired" in html


def test_one_page_for_any_address_and_the_mailbox_learns_the_truth(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("known@example.com")
    known = ask_code(client, "known@example.com").replace("known@example.com", "ADDR")
    unknown = ask_code(client, "nobody@example.com").replace("nobody@example.com", "ADDR")
    strip = re.compile(r'(name="csrf_token"[^>]*value="|"X-CSRFToken": ")[^"]+')
    assert strip.sub("", known) == strip.sub("", unknown)
    assert "no account with a confirmed address" in last_mail(db, "nobody@example.com").text
    assert [m.subject for m in outbox(db, "nobody@example.com")] == ["Sign-in code requested"]
    # A code for the known address does not sign in the unknown one.
    code = mailed_code(db, "known@example.com")
    status, _, _ = enter(client, code)
    assert status == 401
    assert signed_in_as(client) is None


def test_an_expired_code_and_an_unconfirmed_address_do_not_sign_in(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("late@example.com")
    ask_code(client, "late@example.com")
    code = mailed_code(db, "late@example.com")
    db.execute(update(LinkToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.commit()
    assert enter(client, code)[0] == 401

    unconfirmed = make_user("new@example.com")
    db.execute(update(User).where(User.id == unconfirmed.id).values(email_verified_at=None))
    db.commit()
    ask_code(client, "new@example.com")
    assert "no account with a confirmed address" in last_mail(db, "new@example.com").text


def test_five_wrong_guesses_void_the_code_and_lock_the_account(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("guess@example.com")
    ask_code(client, "guess@example.com")
    code = mailed_code(db, "guess@example.com")
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    statuses = [enter(client, wrong)[0] for _ in range(5)]
    assert statuses[:4] == [401] * 4
    assert statuses[4] == 429  # the sign-in throttle's account lock, as for passwords
    status, _, html = enter(client, code)
    assert status == 429
    assert "Too many failed sign-ins" in html
    token = db.scalar(select(LinkToken).where(LinkToken.purpose == "signin_code"))
    assert token is not None and token.used_at is not None  # the code itself is void too


def test_mail_sending_is_throttled_per_recipient(client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    make_user("flood@example.com")
    statuses = []
    for _ in range(8):
        response = client.post(
            "/signin/code", data={"email": "flood@example.com", "csrf_token": csrf_token(client, "/signin/code")}
        )
        statuses.append(response.status_code)
    assert 429 in statuses
    assert statuses[0] == 302
    assert len(outbox(db, "flood@example.com")) == statuses.count(302)


def test_a_second_factor_is_still_asked_for(
    client: FlaskClient, db: Session, app: Flask, settings: Settings, make_user: UserFactory
) -> None:
    user = make_user("two@example.com")
    secret = enrol_totp(app, settings, user)
    ask_code(client, "two@example.com")
    status, location, _ = enter(client, mailed_code(db, "two@example.com"))
    assert (status, location) == (302, "/signin/mfa")
    assert signed_in_as(client) is None
    token = csrf_token(client, "/signin/mfa")
    response = client.post("/signin/mfa/totp", data={"code": pyotp.TOTP(secret).now(), "csrf_token": token})
    assert response.status_code == 302
    assert signed_in_as(client) == "two@example.com"


def test_a_role_that_requires_a_second_factor_enrols_after_a_code(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("chief@example.com", role="admin")  # AMI_AUTH_MFA_REQUIRED_ROLES=admin above
    ask_code(client, "chief@example.com")
    status, _, _ = enter(client, mailed_code(db, "chief@example.com"))
    assert status == 302
    console = client.get("/admin/")
    assert console.status_code == 302 and console.headers["Location"].endswith("/account/mfa")
