"""The CSRF rule (app/http/csrf.py) for forms and the JSON API, over HTTPS and plain HTTP.

Browser-shaped requests: what Chromium sends under ``Referrer-Policy: same-origin`` is an ``Origin`` on every
POST (and a Referer on same-origin ones); under ``no-referrer`` it sent ``Origin: null`` and no Referer, which
Flask-WTF's strict-HTTPS rule refused (issue 10). The same journeys run in real Chromium over HTTPS through nginx
in tests/e2e/production/test_csrf.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.auth import users
from app.extensions import get_database, get_settings
from tests.conftest import PASSWORD, dispose_app, make_settings

EMAIL = "csrf@example.com"
SITES = {"https": "https://auth.example.com", "http": "http://localhost:5000"}


@pytest.fixture(params=sorted(SITES))
def site(request: pytest.FixtureRequest) -> str:
    return SITES[request.param]


@pytest.fixture
def csrf_app(tmp_path: Path, sqlite_url: str, site: str) -> Iterator[Flask]:
    app = create_app(
        make_settings(tmp_path, sqlite_url, AMI_AUTH_BASE_URL=site, AMI_AUTH_CMS_ORIGINS="https://cms.example.com")
    )
    with app.app_context():
        db = get_database(app).session()
        users.create_user(db, get_settings(app), email=EMAIL, password=PASSWORD, verified=True)
        db.commit()
    yield app
    dispose_app(app)


def _token(client: FlaskClient, site: str, path: str = "/signin") -> str:
    html = client.get(path, base_url=site).get_data(as_text=True)
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert match, html[:300]
    return match.group(1)


def _sign_in(client: FlaskClient, site: str, token: str | None, **headers: str) -> tuple[int, str]:
    data = {"email": EMAIL, "password": PASSWORD}
    if token is not None:
        data["csrf_token"] = token
    response = client.post("/signin", data=data, base_url=site, headers=headers)
    return response.status_code, response.get_data(as_text=True)


def _refused(outcome: tuple[int, str]) -> bool:
    status, html = outcome
    return status == 400 and "The form expired or did not come from this site." in html


def test_a_same_origin_form_post_signs_in(csrf_app: Flask, site: str) -> None:
    client = csrf_app.test_client()
    token = _token(client, site)
    status, _ = _sign_in(client, site, token, Origin=site, Referer=f"{site}/signin")
    assert status == 302


def test_origin_alone_is_enough_and_the_default_port_is_the_same_origin(csrf_app: Flask, site: str) -> None:
    client = csrf_app.test_client()
    token = _token(client, site)
    default_port = ":443" if site.startswith("https") else ""
    assert _sign_in(client, site, token, Origin=site + default_port)[0] == 302


def test_the_referer_stands_in_for_a_missing_or_null_origin(csrf_app: Flask, site: str) -> None:
    for origin in (None, "null"):
        client = csrf_app.test_client()
        token = _token(client, site)
        headers = {"Referer": f"{site}/signin?next=/"} | ({"Origin": origin} if origin else {})
        assert _sign_in(client, site, token, **headers)[0] == 302


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://auth.example.com.evil.example",
        "https://cms.example.com",  # the CMS may call the API, not post AMI Auth's forms
        "http://auth.example.com",  # the same host without TLS
        "https://auth.example.com:8443",  # a sibling origin on the same site
        "http://localhost:5001",
    ],
)
def test_a_post_from_another_origin_is_refused_even_with_a_valid_token(
    csrf_app: Flask, site: str, origin: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = csrf_app.test_client()
    token = _token(client, site)
    with caplog.at_level(logging.WARNING, logger="ami_auth.csrf"):
        assert _refused(_sign_in(client, site, token, Origin=origin))
    [line] = [r.getMessage() for r in caplog.records if r.name == "ami_auth.csrf"]
    assert line.startswith("CSRF check refused POST /signin:") and "reason=origin" in line
    assert f"origin={origin}" in line and token not in line


def test_a_referer_from_another_origin_is_refused(csrf_app: Flask, site: str) -> None:
    client = csrf_app.test_client()
    token = _token(client, site)
    assert _refused(_sign_in(client, site, token, Origin="null", Referer="https://evil.example/page"))


def test_neither_origin_nor_referer_is_refused_over_https_only(csrf_app: Flask, site: str) -> None:
    client = csrf_app.test_client()
    token = _token(client, site)
    outcome = _sign_in(client, site, token, Origin="null")
    if site.startswith("https"):
        assert _refused(outcome)  # what every form got under Referrer-Policy: no-referrer
    else:
        assert outcome[0] == 302  # development over http: the token decides


def test_a_missing_or_wrong_token_is_refused_from_our_own_origin(
    csrf_app: Flask, site: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = csrf_app.test_client()
    token = _token(client, site)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with caplog.at_level(logging.WARNING, logger="ami_auth.csrf"):
        assert _refused(_sign_in(client, site, None, Origin=site))
        assert _refused(_sign_in(client, site, forged, Origin=site))
        assert _refused(_sign_in(client, site, "not-a-token", Origin=site))
    lines = [r.getMessage() for r in caplog.records if r.name == "ami_auth.csrf"]
    assert [re.search(r"reason=(\w+)", line).group(1) for line in lines] == [  # type: ignore[union-attr]
        "token_missing",
        "token_invalid",
        "token_invalid",
    ]
    assert not any(token in line or forged in line or "not-a-token" in line for line in lines)
    # The session still works: a correct submission goes through.
    assert _sign_in(client, site, token, Origin=site)[0] == 302


def test_a_token_from_another_session_is_refused(csrf_app: Flask, site: str) -> None:
    theirs = _token(csrf_app.test_client(), site)
    mine = csrf_app.test_client()
    _token(mine, site)
    assert _refused(_sign_in(mine, site, theirs, Origin=site))


def test_the_log_line_names_the_route_not_the_path_that_holds_a_link_token(
    csrf_app: Flask, site: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret_path = "/reset/Zm9yZ2V0LW1lLW5vdC10aGUtdG9rZW4"
    with caplog.at_level(logging.WARNING, logger="ami_auth.csrf"):
        response = csrf_app.test_client().post(
            secret_path, data={}, base_url=site, headers={"Origin": site, "Referer": site + secret_path}
        )
    assert response.status_code == 400
    [line] = [r.getMessage() for r in caplog.records if r.name == "ami_auth.csrf"]
    assert "POST /reset/<token>" in line and "Zm9yZ2V0" not in line


def test_the_api_applies_the_same_rule_and_trusts_the_cms_origin(csrf_app: Flask, site: str) -> None:
    client = csrf_app.test_client()
    assert _sign_in(client, site, _token(client, site), Origin=site)[0] == 302
    token = client.get("/api/auth/session", base_url=site).get_json()["csrf_token"]
    laptop = csrf_app.test_client()
    assert _sign_in(laptop, site, _token(laptop, site), Origin=site)[0] == 302
    sessions = client.get("/api/auth/sessions", base_url=site).get_json()["sessions"]
    other = next(s["id"] for s in sessions if not s["current"])

    def delete(**headers: str) -> int:
        return client.delete(f"/api/auth/sessions/{other}", base_url=site, headers=headers).status_code

    assert delete(**{"X-CSRFToken": token, "Origin": "https://evil.example"}) == 403
    assert delete(**{"X-CSRFToken": token, "Origin": "https://auth.example.com:8443"}) == 403
    assert delete(Origin="https://cms.example.com") == 403  # no token
    assert delete(**{"X-CSRFToken": token, "Origin": "https://cms.example.com"}) == 204
