"""Second-factor helpers shared by the MFA, session, throttle and compliance tests (and the browser tests)."""

from __future__ import annotations

from datetime import timedelta

import pyotp
from flask import Flask
from flask.testing import FlaskClient

from app.auth import totp
from app.extensions import get_database
from app.models import User, utcnow
from app.settings import Settings
from tests.conftest import csrf_token, sign_in


def enrol_totp(app: Flask, settings: Settings, user: User) -> str:
    """Enrol and confirm an authenticator-app factor through the logic layer (as another device would), with a
    code from two minutes ago so that current codes are still fresh; returns the secret."""
    with app.app_context():
        db = get_database(app).session()
        enrolment = totp.start_enrolment(db, settings, user)
        secret = enrolment.secret.reveal()
        earlier = utcnow() - timedelta(minutes=2)
        totp.confirm_enrolment(db, settings, user, pyotp.TOTP(secret).at(earlier), now=earlier)
        db.commit()
        return secret


def sign_in_with_totp(client: FlaskClient, email: str, secret: str) -> None:
    """Password, then the current TOTP code on /signin/mfa; fails the test unless it ends signed in."""
    assert sign_in(client, email).headers["Location"] == "/signin/mfa"
    token = csrf_token(client, "/signin/mfa")
    response = client.post("/signin/mfa/totp", data={"code": pyotp.TOTP(secret).now(), "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)
