"""Branding (issue 14): the product name, logo and accent colour from AMI_AUTH_BRAND_* in pages and mails; the
provider buttons' public label apart from the configuration's internal name, with the type's logo."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from app import create_app
from app.auth.mails import ink_for
from app.settings import Settings, SettingsError, load_settings
from tests.conftest import csrf_token, dispose_app, make_settings
from tests.support.mailbox import last_mail
from tests.support.oauth_app import create_config, generic_values
from tests.support.op import OPClient

LOGO = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect width="10" height="10" fill="#0a7"/></svg>'


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    logo = tmp_path / "logo.svg"
    logo.write_text(LOGO)
    return make_settings(
        tmp_path,
        database_url,
        AMI_AUTH_BRAND_NAME="Acme Login",
        AMI_AUTH_BRAND_LOGO=str(logo),
        AMI_AUTH_BRAND_ACCENT="#FFCC00",
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    dispose_app(application)


def test_pages_carry_the_name_logo_and_accent(client: FlaskClient) -> None:
    html = client.get("/signin").get_data(as_text=True)
    assert "<title>Sign in · Acme Login</title>" in html
    assert 'class="brand-logo" src="/brand/logo"' in html
    assert '<footer class="footer">Acme Login</footer>' in html
    assert "AMI Auth" not in html
    css = client.get("/brand.css")
    assert css.mimetype == "text/css"
    assert "--accent: #ffcc00; --accent-ink: #000;" in css.get_data(as_text=True)  # dark text on yellow
    logo = client.get("/brand/logo")
    assert logo.status_code == 200 and logo.get_data(as_text=True) == LOGO


def test_mails_carry_them_too(client: FlaskClient, db: Session) -> None:
    client.post("/reset", data={"email": "who@example.com", "csrf_token": csrf_token(client, "/reset")})
    mail = last_mail(db, "who@example.com")
    assert "Acme Login" in mail.text and "AMI Auth" not in mail.text
    assert mail.html is not None
    assert "color:#ffcc00" in mail.html
    assert "/brand/logo" in mail.html


def test_without_branding_nothing_extra_is_served(tmp_path: Path, database_url: str) -> None:
    plain = create_app(make_settings(tmp_path, database_url))
    try:
        client = plain.test_client()
        html = client.get("/signin").get_data(as_text=True)
        assert "· AMI Auth</title>" in html and "/brand.css" not in html
        assert client.get("/brand.css").status_code == 404
        assert client.get("/brand/logo").status_code == 404
    finally:
        dispose_app(plain)


@pytest.mark.parametrize(
    ("name", "value"),
    [("AMI_AUTH_BRAND_ACCENT", "blue"), ("AMI_AUTH_BRAND_LOGO", "/nonexistent.svg"), ("AMI_AUTH_BRAND_NAME", "<b>")],
)
def test_bad_branding_stops_start_up_naming_the_variable(name: str, value: str) -> None:
    key = base64.b64encode(b"a" * 32).decode()
    env = {
        "AMI_AUTH_ENV": "production",
        "AMI_AUTH_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1/db",
        "AMI_AUTH_SECRET_KEY": "x" * 40,
        "AMI_AUTH_MASTER_KEYS": f"k1:{key}",
        "AMI_AUTH_BASE_URL": "https://auth.example.com",
        name: value,
    }
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert caught.value.variable == name


def test_ink_contrasts_with_the_accent() -> None:
    assert ink_for("#2f5bea") == "#fff"
    assert ink_for("#ffcc00") == "#000"


def test_a_provider_button_shows_its_public_label_and_logo(app: Flask, client: FlaskClient) -> None:
    client_reg = OPClient("ami-auth", "op-secret", redirect_uri="http://localhost/oauth/1/callback")
    values = generic_values("http://127.0.0.1:9/", client_reg)
    create_config(app, "generic_oidc", "Corp ID (staff)", {**values, "button_label": "Continue with Corp"})
    html = client.get("/signin").get_data(as_text=True)
    assert "Continue with Corp</a>" in html
    assert "(staff)" not in html
    assert 'src="/static/img/providers/openid.svg"' in html
