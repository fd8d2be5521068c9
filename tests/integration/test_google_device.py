"""Google's device flow through the app: "Connect with a code" runs with the config's second OAuth client (type
"TVs and Limited Input devices") and its restricted scopes, against the Google stand-in's device endpoints
(Google's `verification_url` spelling, HTTP 428 while pending); what it connected refreshes with that client.
SQLite and PostgreSQL."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from html import unescape
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app.extensions import get_cipher, get_database
from app.jobs.refresh import run_refresh
from app.models import ConnectedAccount
from app.oauth.connections import load_tokens
from app.oauth.runtime import runtime
from app.settings import Settings
from app.web.errors import UNAVAILABLE_MESSAGE
from tests.conftest import UserFactory, make_settings, sign_in
from tests.support.oauth_app import create_config, location, page_csrf
from tests.support.vendors.google import Google

pytest_plugins = ("tests.support.vendor_fixtures",)

BASE = "http://127.0.0.1:5000"
WEB_CLIENT = "1234567890-abcdefghijklmnop.apps.googleusercontent.com"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # Poll the stand-in quickly (Google names 5 s).
    return make_settings(tmp_path, database_url, AMI_AUTH_DEVICE_POLL_INTERVAL="0.05")


def _config(app: Flask, google: Google, **extra: object) -> int:
    web = google.add_client(WEB_CLIENT, "GOCSPX-web-secret", [f"{BASE}/oauth/1/callback"])
    values = {"client_id": web.client_id, "client_secret": web.client_secret, "issuer": google.url, **extra}
    return create_config(app, "google", "Google", values)


def _start(client: FlaskClient, config_id: int) -> tuple[str, str]:
    """Connect with a code → the device page; returns (its HTML, the user code)."""
    listing = client.get("/account/connections/").get_data(as_text=True)
    assert "Connect with a code" in listing
    started = client.post(f"/account/connections/device/{config_id}", data={"csrf_token": page_csrf(listing)})
    assert started.status_code == 302, started.get_data(as_text=True)[:500]
    page = client.get(location(started)).get_data(as_text=True)
    code = re.search(r'id="user-code">([^<]+)<', page)
    assert code is not None
    return page, code.group(1)


def _poll(client: FlaskClient, config_id: int, page: str) -> tuple[str, dict[str, str]]:
    answer = client.post(f"/account/connections/device/{config_id}/poll", data={"csrf_token": page_csrf(page)})
    return answer.get_data(as_text=True), dict(answer.headers)


def test_google_device_flow_uses_the_tv_client_and_its_scopes_then_refreshes_with_it(
    app: Flask, client: FlaskClient, db: Session, google_standin: Google, make_user: UserFactory
) -> None:
    google = google_standin
    google.add_account("ann@example.com")
    tv = google.add_tv_client()
    config_id = _config(
        app,
        google,
        device_flow=True,
        device_client_id=tv.client_id,
        device_client_secret=tv.client_secret,
        device_scopes="openid email profile https://www.googleapis.com/auth/drive.file",
    )
    make_user()
    sign_in(client, "member@example.com")
    page, user_code = _start(client, config_id)
    # Google's `verification_url` (not RFC 8628's verification_uri) is what the user is shown.
    assert f"{google.url}/device" in page
    [grant] = google.devices.values()
    assert grant.client_id == tv.client_id
    assert grant.scopes == ("openid", "email", "profile", "https://www.googleapis.com/auth/drive.file")

    status, headers = _poll(client, config_id, page)
    assert 'data-status="pending"' in status and "HX-Redirect" not in headers  # Google's HTTP 428
    google.approve_device(user_code, "ann@example.com")
    deadline = time.monotonic() + 10
    while "HX-Redirect" not in headers:
        time.sleep(0.1)  # the poll endpoint never asks Google sooner than the interval
        status, headers = _poll(client, config_id, page)
        assert 'data-status="pending"' in status or "HX-Redirect" in headers, status
        assert time.monotonic() < deadline
    assert headers["HX-Redirect"].startswith("/account/connections/#account-"), status
    account = db.scalars(select(ConnectedAccount)).one()
    assert account.label == "ann@example.com" and account.provider_data["oauth_client"] == "device"
    tokens = load_tokens(db, get_cipher(app), account.id)
    assert tokens is not None and tokens.refresh_token
    # The ID token was for the TV client (its aud), and the tokens belong to it.
    refresh_grant = google.refresh_grant(tokens.refresh_token)
    assert refresh_grant is not None and refresh_grant.client_id == tv.client_id

    # The refresh job uses the TV client too (Google binds a refresh token to its client).
    report = run_refresh(runtime(app), get_database(app).engine, margin=timedelta(hours=2), workers=1)
    assert report.refreshed == 1
    after = load_tokens(db, get_cipher(app), account.id)
    assert after is not None and after.access_token != tokens.access_token
    assert after.refresh_token == tokens.refresh_token  # Google keeps it


def _device_attempt(client: FlaskClient, config_id: int) -> TestResponse:
    listing = client.get("/account/connections/").get_data(as_text=True)
    return client.post(f"/account/connections/device/{config_id}", data={"csrf_token": page_csrf(listing)})


def _refused_for_a_member(app: Flask, client: FlaskClient, config_id: int, make_user: UserFactory) -> str:
    """A config problem, as a member meets it: "not available right now" with a reference (503), no detail."""
    make_user()
    sign_in(client, "member@example.com")
    refused = _device_attempt(client, config_id)
    text = unescape(refused.get_data(as_text=True))
    assert refused.status_code == 503 and UNAVAILABLE_MESSAGE in text and refused.headers["Retry-After"]
    return text


def _try_as_admin(app: Flask, config_id: int, make_user: UserFactory) -> TestResponse:
    make_user("root@example.com", role="admin")
    admin = app.test_client()
    sign_in(admin, "root@example.com")
    return _device_attempt(admin, config_id)


def test_google_refuses_the_device_flow_from_a_web_client_and_unlisted_scopes(
    app: Flask, client: FlaskClient, google_standin: Google, make_user: UserFactory
) -> None:
    google = google_standin
    # The Web client entered as the device client (a common mistake): Google's "Invalid client type."
    config_id = _config(app, google, device_flow=True, device_client_id=WEB_CLIENT, device_client_secret="GOCSPX-x")
    # A member sees that it is not available and a reference; the admin who can fix the config sees Google's words.
    text = _refused_for_a_member(app, client, config_id, make_user)
    assert "Invalid client type" not in text
    refused = _try_as_admin(app, config_id, make_user)
    text = refused.get_data(as_text=True)
    assert refused.status_code >= 400 and "Invalid client type" in text, text[-1500:]
    assert google.devices == {}


def test_google_device_flow_with_a_scope_google_does_not_allow(
    app: Flask, client: FlaskClient, google_standin: Google, make_user: UserFactory
) -> None:
    google = google_standin
    tv = google.add_tv_client()
    config_id = _config(
        app,
        google,
        device_flow=True,
        device_client_id=tv.client_id,
        device_client_secret=tv.client_secret,
        device_scopes="openid https://www.googleapis.com/auth/gmail.readonly",
    )
    assert "gmail.readonly" not in _refused_for_a_member(app, client, config_id, make_user)
    refused = _try_as_admin(app, config_id, make_user)
    text = unescape(refused.get_data(as_text=True))
    assert refused.status_code == 422 and 'data-error-code="invalid_config"' in text
    assert "rejected the requested scopes" in text and "gmail.readonly" in text
    assert google.devices == {}


def test_google_without_the_device_flow_asks_for_no_second_client(
    app: Flask, client: FlaskClient, google_standin: Google, make_user: UserFactory
) -> None:
    config_id = _config(app, google_standin)
    make_user()
    sign_in(client, "member@example.com")
    assert "Connect with a code" not in client.get("/account/connections/").get_data(as_text=True)
    refused = client.post(f"/account/connections/device/{config_id}", data={"csrf_token": "x"})
    assert refused.status_code in (400, 404)
