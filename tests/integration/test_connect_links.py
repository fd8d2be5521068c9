"""End users connect their own accounts: the CMS asks for a link for one signed-in user on a provider config
that allows it (catalog field ``end_users_connect``), that user — and nobody else — types their key in AMI
Auth's page, the key is verified, the account is theirs, the browser goes back to the CMS, and the platform
hears of it (webhook ``account.connected``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api import tokens
from app.audit import AuditContext
from app.extensions import get_cipher, get_database, get_settings
from app.models import ConnectedAccount, ProviderConfig
from app.models.webhooks import WebhookEvent
from app.settings import Settings
from app.vault import get_secret
from tests.conftest import UserFactory, make_settings, sign_in
from tests.support.accounts import csrf_of, make_config
from tests.support.hold import connections_while_held
from tests.support.vendors.anthropic import Anthropic

pytest_plugins = ("tests.support.vendor_fixtures",)

PATH = "/api/account-manager/connect-links"
CMS = "https://cms.example.com"
RETURN_TO = f"{CMS}/me/keys"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_CMS_ORIGINS=CMS)


@pytest.fixture
def cms(db: Session) -> dict[str, str]:
    raw = tokens.create_token(
        db, AuditContext(actor="test"), name="CMS", scopes=["accounts:write"], created_by=None
    ).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


def _config(app: Flask, db: Session, allowed: bool) -> ProviderConfig:
    return make_config(
        db, get_cipher(app), get_settings(app), "anthropic", {"end_users_connect": allowed}, name=f"Claude {allowed}"
    )


def _browser(app: Flask, email: str) -> FlaskClient:
    browser = app.test_client()
    assert sign_in(browser, email).status_code == 302
    return browser


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _action(html: str) -> str:
    match = re.search(
        r'<form[^>]*id="dialog-form"[^>]*action="([^"]+)"|<form[^>]*action="([^"]+)"[^>]*id="dialog-form"', html
    )
    assert match, html[:500]
    return "".join(match.groups("")).replace("&amp;", "&")


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error: dict[str, Any] = response.get_json()["error"]
    assert error["code"] == code
    return error


def test_a_member_connects_their_own_key_and_goes_back_to_the_cms(
    app: Flask,
    client: FlaskClient,
    db: Session,
    cms: dict[str, str],
    make_user: UserFactory,
    anthropic_standin: Anthropic,
) -> None:
    member = make_user("ann@example.com")
    make_user("bob@example.com")
    cfg = _config(app, db, allowed=True)
    created = client.post(
        PATH, json={"provider_config_id": cfg.id, "user_id": member.id, "return_to": RETURN_TO}, headers=cms
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    url = created.get_json()["url"]
    # Another signed-in user (even an admin-less one) cannot open it; signed out, the page offers sign-in.
    assert app.test_client().get(_path(url)).status_code == 401
    other = _browser(app, "bob@example.com").get(_path(url))
    assert other.status_code == 403 and "made for another user" in other.get_data(as_text=True)
    browser = _browser(app, "ann@example.com")
    page = browser.get(_path(url))
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Connect your account" in html and "API key" in html
    key = anthropic_standin.add_key()
    data = {"csrf_token": csrf_of(html), "label": "My Claude", "api_key": key, "base_url": anthropic_standin.url}
    data.update({"region": "global", "anthropic_version": "2023-06-01"})
    # While the vendor checks the key, no database connection waits with it.
    idle, held, saved = connections_while_held(
        get_database(app).engine, anthropic_standin.held("/v1/models"), lambda: browser.post(_action(html), data=data)
    )
    assert held == idle
    assert saved.status_code == 303, saved.get_data(as_text=True)[:600]
    target = saved.headers["Location"]
    assert target.startswith(f"{RETURN_TO}?")
    query = parse_qs(urlsplit(target).query)
    assert query["status"] == ["saved"]
    account = db.get(ConnectedAccount, int(query["account"][0]))
    assert account is not None and account.user_id == member.id and account.status == "active"
    stored = get_secret(db, get_cipher(app), "connected_account", account.id, "api_key")
    assert stored is not None and stored.reveal() == key
    # The platform is told through the outbox.
    types = [
        e.type
        for e in db.scalars(select(WebhookEvent).where(WebhookEvent.subject == f"connected_account:{account.id}"))
    ]
    assert types == ["account.connected", "account.secret_replaced"]


def test_the_config_must_allow_it_and_the_user_must_exist(
    app: Flask, client: FlaskClient, db: Session, cms: dict[str, str], make_user: UserFactory
) -> None:
    member = make_user("ann@example.com")
    off = _config(app, db, allowed=False)
    body = {"provider_config_id": off.id, "user_id": member.id, "return_to": RETURN_TO}
    error = _error(client.post(PATH, json=body, headers=cms), 409, "conflict")
    assert "provider_config_id" in error["fields"]
    on = _config(app, db, allowed=True)
    error = _error(
        client.post(PATH, json={**body, "provider_config_id": on.id, "user_id": 9999}, headers=cms), 404, "not_found"
    )
    error = _error(
        client.post(
            PATH, json={**body, "provider_config_id": on.id, "return_to": "https://evil.example/"}, headers=cms
        ),
        422,
        "validation_failed",
    )
    assert "return_to" in error["fields"]
    reader = tokens.create_token(db, AuditContext(actor="t"), name="R", scopes=["accounts:read"], created_by=None).raw
    db.commit()
    _error(client.post(PATH, json=body, headers={"Authorization": f"Bearer {reader}"}), 403, "permission_denied")
