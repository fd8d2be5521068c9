"""An app's authorization request survives the MFA enrolment a role requires: a user sent to enrol in the middle of
signing in to an app goes back to that request once the factor is added (not to the account page). SQLite and
PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from app.audit import AuditContext
from app.auth import totp
from app.extensions import get_database
from app.idp import clients
from app.settings import Settings
from tests.conftest import PASSWORD, UserFactory, csrf_token, make_settings

BASE_URL = "http://localhost:5000"
CALLBACK = "https://cms.example.com/api/auth/callback/ami"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_BASE_URL=BASE_URL, AMI_AUTH_MFA_REQUIRED_ROLES="admin")


def _path(location: str) -> str:
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def test_an_admin_sent_to_enrol_goes_back_to_the_apps_request(
    app: Flask, client: FlaskClient, db: Session, settings: Settings, make_user: UserFactory
) -> None:
    admin = make_user("root@example.com", role="admin")
    rp = clients.create_client(
        db, AuditContext(actor="test"), {"name": "CMS", "redirect_uris": [CALLBACK], "first_party": True}
    ).client
    db.commit()
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": rp.client_id,
            "redirect_uri": CALLBACK,
            "scope": "openid",
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    to_signin = client.get(f"/oauth2/authorize?{query}")
    assert to_signin.status_code == 302 and to_signin.headers["Location"].startswith("/signin")
    signin_path = _path(to_signin.headers["Location"])
    token = csrf_token(client, signin_path)
    resumed = client.post(signin_path, data={"email": admin.email, "password": PASSWORD, "csrf_token": token})
    assert resumed.status_code == 302
    to_enrol = client.get(_path(resumed.headers["Location"]))
    assert to_enrol.status_code == 302 and to_enrol.headers["Location"].endswith("/account/mfa")

    token = csrf_token(client, "/account/mfa")
    assert client.post("/account/mfa/totp", data={"csrf_token": token}).status_code == 302
    with app.app_context():
        enrolment = totp.pending_enrolment(get_database(app).session(), settings, admin)
        assert enrolment is not None
        secret = enrolment.secret.reveal()
    token = csrf_token(client, "/account/mfa/totp")
    confirmed = client.post("/account/mfa/totp/confirm", data={"code": pyotp.TOTP(secret).now(), "csrf_token": token})
    assert confirmed.status_code == 302 and confirmed.headers["Location"].endswith("/account/mfa")

    # The MFA page sends the user back to the waiting request, which now completes at the app.
    back = client.get("/account/mfa")
    assert back.status_code == 302 and "/oauth2/authorize/resume" in back.headers["Location"]
    landed = client.get(_path(back.headers["Location"]))
    assert landed.status_code == 302 and landed.headers["Location"].startswith(CALLBACK)
    answer = parse_qs(urlsplit(landed.headers["Location"]).query)
    assert answer["state"] == ["s1"] and answer["code"] and answer["iss"] == [BASE_URL]
    # Once only: the MFA page is the page again.
    assert client.get("/account/mfa").status_code == 200
