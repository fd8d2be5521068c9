"""New-device alerts and trusted browsers (issue 14), over HTTP with the outbox: a sign-in from a browser the
account has not used mails the owner; "Trust this browser" skips the second factor there until it is revoked or
the password changes."""

from __future__ import annotations

import re
from datetime import timedelta

import pyotp
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import AuditEvent, TrustedBrowser, User, utcnow
from app.settings import Settings
from tests.conftest import PASSWORD, UserFactory, csrf_token, sign_in
from tests.support.mailbox import outbox
from tests.support.mfa import enrol_totp

NEW_PASSWORD = "another long passphrase 77"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"


def alerts(db: Session, email: str) -> list[str]:
    return [m.text for m in outbox(db, email) if m.subject == "New sign-in to your account"]


def totp_step(client: FlaskClient, secret: str, *, trust: bool, at: float = 0) -> None:
    token = csrf_token(client, "/signin/mfa")
    data = {"code": pyotp.TOTP(secret).at(at) if at else pyotp.TOTP(secret).now(), "csrf_token": token}
    if trust:
        data["trust_browser"] = "y"
    response = client.post("/signin/mfa/totp", data=data)
    assert response.status_code == 302, response.get_data(as_text=True)


def test_a_new_browser_is_announced_a_known_one_is_not(
    client: FlaskClient, db: Session, make_user: UserFactory, app: Flask
) -> None:
    make_user("ana@example.com")
    assert sign_in(client, "ana@example.com").status_code == 302
    assert alerts(db, "ana@example.com") == []  # the first sign-in ever is no news
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})
    assert sign_in(client, "ana@example.com").status_code == 302
    assert alerts(db, "ana@example.com") == []  # the same browser (its device cookie) again

    stranger = app.test_client()
    assert sign_in(stranger, "ana@example.com").status_code == 302
    [text] = alerts(db, "ana@example.com")
    assert "a browser it has not used before" in text
    assert "When:" in text and "Where: 127.0.0.1" in text
    assert "/account/#sessions-heading" in text
    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.action == "signin.new_device_alert")).all()
    assert actions == ["signin.new_device_alert"]


def test_the_alert_names_the_browser_in_the_recipients_language(
    db: Session, make_user: UserFactory, app: Flask
) -> None:
    """The session list says "Firefox unter Linux" to a German user; so does the mail about that session, whatever
    language the browser that signed in asks for."""
    user = make_user("lea@example.com")
    db.execute(update(User).where(User.id == user.id).values(locale="de"))
    db.commit()
    assert sign_in(app.test_client(), "lea@example.com").status_code == 302
    stranger = app.test_client()
    stranger.environ_base["HTTP_USER_AGENT"] = FIREFOX_LINUX
    stranger.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en-US,en;q=0.9"
    assert sign_in(stranger, "lea@example.com").status_code == 302
    [mail] = [m for m in outbox(db, "lea@example.com") if m.subject == "Neue Anmeldung bei Ihrem Konto"]
    assert "Firefox unter Linux" in mail.text and "Firefox on Linux" not in mail.text
    assert mail.html is not None and "<td>Firefox unter Linux</td>" in mail.html


def test_a_trusted_browser_skips_the_second_factor_until_the_password_changes(
    client: FlaskClient, db: Session, make_user: UserFactory, app: Flask, settings: Settings
) -> None:
    user = make_user("tom@example.com")
    secret = enrol_totp(app, settings, user)
    assert sign_in(client, "tom@example.com").headers["Location"] == "/signin/mfa"
    assert "Trust this browser for 30 days" in client.get("/signin/mfa").get_data(as_text=True)
    totp_step(client, secret, trust=True)
    assert client.get("/account/").status_code == 200
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})

    # The password alone signs in here now; the method says why.
    assert sign_in(client, "tom@example.com").headers["Location"] == "/account/"
    event = db.scalars(
        select(AuditEvent).where(AuditEvent.action == "signin.success").order_by(AuditEvent.id.desc())
    ).first()
    assert event is not None and event.details["methods"] == ["password", "trusted_browser"]
    page = client.get("/account/").get_data(as_text=True)
    assert 'data-trusted="' in page
    # Another browser is not trusted.
    other = app.test_client()
    assert sign_in(other, "tom@example.com").headers["Location"] == "/signin/mfa"

    # A password change ends the trust.
    token = csrf_token(client, "/account/")
    changed = client.post(
        "/account/password",
        data={"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "csrf_token": token},
    )
    assert changed.status_code == 302
    assert db.scalars(select(TrustedBrowser)).all() == []
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})
    assert sign_in(client, "tom@example.com", NEW_PASSWORD).headers["Location"] == "/signin/mfa"


def test_a_trust_is_revocable_and_expires(
    client: FlaskClient, db: Session, make_user: UserFactory, app: Flask, settings: Settings
) -> None:
    user = make_user("rio@example.com")
    secret = enrol_totp(app, settings, user)
    sign_in(client, "rio@example.com")
    totp_step(client, secret, trust=True)
    public_id = re.search(r'data-trusted="([^"]+)"', client.get("/account/").get_data(as_text=True))
    assert public_id
    response = client.post(
        f"/account/trusted/{public_id.group(1)}/revoke", data={"csrf_token": csrf_token(client, "/account/")}
    )
    assert response.status_code == 302
    assert 'data-empty="trusted"' in client.get("/account/").get_data(as_text=True)
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})
    assert sign_in(client, "rio@example.com").headers["Location"] == "/signin/mfa"

    # Trusted again, then past its days: asked again.
    totp_step(client, secret, trust=True, at=(utcnow() + timedelta(seconds=30)).timestamp())
    db.execute(update(TrustedBrowser).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.commit()
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})
    assert sign_in(client, "rio@example.com").headers["Location"] == "/signin/mfa"
    actions = db.scalars(
        select(AuditEvent.action).where(AuditEvent.action.like("browser.%")).order_by(AuditEvent.id)
    ).all()
    assert actions == ["browser.trusted", "browser.untrusted", "browser.trusted"]


def test_an_admin_sees_and_revokes_a_users_trusted_browsers(
    client: FlaskClient, db: Session, make_user: UserFactory, app: Flask, settings: Settings
) -> None:
    user = make_user("kim@example.com")
    secret = enrol_totp(app, settings, user)
    sign_in(client, "kim@example.com")
    totp_step(client, secret, trust=True)
    admin = make_user("boss@example.com", role="admin")
    admin_secret = enrol_totp(app, settings, admin)
    console = app.test_client()
    sign_in(console, "boss@example.com")
    totp_step(console, admin_secret, trust=False)
    security = console.get("/admin/security").get_data(as_text=True)
    assert 'data-setting="trusted-browser">30 days' in security
    assert 'data-setting="new-device-alerts">on' in security
    page = console.get(f"/admin/users/{user.id}").get_data(as_text=True)
    public_id = re.search(r'data-trusted="([^"]+)"', page)
    assert public_id
    token = csrf_token(console, f"/admin/users/{user.id}")
    response = console.post(f"/admin/users/{user.id}/trusted/{public_id.group(1)}/revoke", data={"csrf_token": token})
    assert response.status_code == 302
    assert db.scalars(select(TrustedBrowser)).all() == []
