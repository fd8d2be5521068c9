"""The newcomer's first hour (issue 15), what a user sees through the web pages: one redirect after sign-in,
paged session lists, forms that report every error at once, human audit values."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from app import audit
from app.auth import sessions
from app.extensions import get_database
from app.models import User
from app.settings import Settings
from tests.conftest import PASSWORD, UserFactory, sign_in
from tests.support.live import free_port
from tests.support.oauth_app import create_config, generic_values, page_csrf
from tests.support.op import OPClient


def _add_sessions(app: Flask, settings: Settings, user: User, count: int) -> None:
    with app.app_context():
        db = get_database(app).session()
        for n in range(count):
            sessions.start_session(
                db, settings, user, ip=f"10.0.{n // 250}.{n % 250 + 1}", user_agent="curl/8", methods=["password"]
            )
        db.commit()


def test_sign_in_lands_on_the_start_page_in_one_redirect(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("mia@example.com")
    response = sign_in(client, "mia@example.com")
    assert response.status_code == 302 and response.headers["Location"] == "/account/"
    assert client.get("/account/").status_code == 200


def test_an_admin_lands_on_the_console_and_next_still_wins(app: Flask, make_user: UserFactory) -> None:
    make_user("ada@example.com", role="admin")
    response = sign_in(app.test_client(), "ada@example.com")
    assert response.headers["Location"] == "/admin/"
    client = app.test_client()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', client.get("/signin").get_data(as_text=True))
    assert token
    response = client.post(
        "/signin?next=/admin/users",
        data={"email": "ada@example.com", "password": PASSWORD, "csrf_token": token.group(1)},
    )
    assert response.headers["Location"] == "/admin/users"


def test_the_account_page_pages_the_sessions(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory, db: Session
) -> None:
    user = make_user("sal@example.com")
    _add_sessions(app, settings, user, 44)
    sign_in(client, "sal@example.com")
    first = client.get("/account/").get_data(as_text=True)
    assert first.count("<tr data-session=") == sessions.SESSION_PAGE_SIZE
    assert "Page 1 of 3 · 45 live sessions" in first
    assert "this session" in first  # the newest first: the one signing in now
    assert 'href="/account/?sessions_page=2#sessions-heading"' in first
    last = client.get("/account/?sessions_page=3").get_data(as_text=True)
    assert last.count("<tr data-session=") == 5
    assert "Page 3 of 3" in last and "Older sessions" not in last and "Newer sessions" in last
    assert "Sign out all other sessions" in last


def test_the_admin_user_page_pages_the_sessions(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory
) -> None:
    make_user("root@example.com", role="admin")
    user = make_user("many@example.com")
    _add_sessions(app, settings, user, 21)
    sign_in(client, "root@example.com")
    first = client.get(f"/admin/users/{user.id}").get_data(as_text=True)
    assert first.count("<tr data-session=") == sessions.SESSION_PAGE_SIZE
    assert "Page 1 of 2 · 21 live sessions" in first
    second = client.get(f"/admin/users/{user.id}?sessions_page=2").get_data(as_text=True)
    assert second.count("<tr data-session=") == 1
    assert client.get(f"/admin/users/{user.id}?sessions_page=99").status_code == 200


def _errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'<p class="error" id="([a-z_]+)-error"[^>]*>([^<]*)</p>', html))


def _admin_client(app: Flask, make_user: UserFactory) -> FlaskClient:
    make_user("root@example.com", role="admin")
    client = app.test_client()
    sign_in(client, "root@example.com")
    return client


def _new_user(client: FlaskClient, data: dict[str, str]) -> tuple[int, str]:
    page = client.get("/admin/users/new").get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert token
    response = client.post("/admin/users/new", data={**data, "csrf_token": token.group(1)})
    return response.status_code, response.get_data(as_text=True)


def test_new_user_reports_every_bad_field_after_one_submit(app: Flask, make_user: UserFactory) -> None:
    client = _admin_client(app, make_user)
    status, html = _new_user(
        client, {"email": "not-an-address", "role": "member", "mode": "password", "password": "short", "metadata": "{x"}
    )
    errors = _errors(html)
    assert status == 422 and set(errors) == {"email", "password", "metadata"}, errors
    assert "@" in errors["email"] and "at least" in errors["password"] and "Not valid JSON" in errors["metadata"]

    # A blank email (the form's own check) still shows the others too.
    status, html = _new_user(client, {"email": "", "role": "member", "mode": "password", "metadata": "[1]"})
    errors = _errors(html)
    assert status == 422 and set(errors) == {"email", "password", "metadata"}, errors
    assert "Type a password, or send an invitation." in errors["password"]

    # A taken address and a bad password, together.
    make_user("taken@example.com")
    status, html = _new_user(
        client, {"email": "taken@example.com", "role": "member", "mode": "password", "password": "short"}
    )
    assert set(_errors(html)) == {"email", "password"} and "Already in use." in html


def test_the_password_rule_says_what_it_is(app: Flask, make_user: UserFactory) -> None:
    client = _admin_client(app, make_user)
    status, html = _new_user(
        client,
        {
            "email": "robin.hood@example.com",
            "role": "member",
            "mode": "password",
            "password": "my robin.hood secret 42",
        },
    )
    assert status == 422
    assert _errors(html)["password"] == (
        "The password contains \N{LEFT DOUBLE QUOTATION MARK}robin.hood\N{RIGHT DOUBLE QUOTATION MARK}, the part of "
        "the email address before the @. Choose one without it."
    )


def _form_post(client: FlaskClient, path: str, data: dict[str, str]) -> Any:
    page = client.get(path).get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert token
    return client.post(path, data={**data, "csrf_token": token.group(1)}, follow_redirects=True)


GITHUB = {"client_id": "Iv1.abc", "client_secret": "gh-secret", "scopes": "read:user user:email"}


def test_the_create_form_shows_the_redirect_uri_to_register(
    app: Flask, db: Session, settings: Settings, make_user: UserFactory
) -> None:
    client = _admin_client(app, make_user)
    form = client.get("/admin/providers/new/github").get_data(as_text=True)
    assert re.search(
        r'<code class="oauth-redirect-uri" id="redirect-uri">http://127.0.0.1:5000/oauth/1/callback</code>', form
    )
    assert 'data-copy="redirect-uri"' in form
    saved = _form_post(client, "/admin/providers/new/github", {"name": "GitHub", **GITHUB})
    html = saved.get_data(as_text=True)
    assert "Saved “GitHub”" in html and "not the one the form showed" not in html
    setup = client.get("/admin/providers/1/oauth").get_data(as_text=True)
    assert "http://127.0.0.1:5000/oauth/1/callback" in setup and 'data-copy="redirect-uri"' in setup

    # Another admin saves a provider between showing the form and saving it: the page says which URI is right.
    page = client.get("/admin/providers/new/github").get_data(as_text=True)
    assert "http://127.0.0.1:5000/oauth/2/callback" in page
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert token
    create_config(app, "github", "GitHub (other)", GITHUB, enabled=False)
    late = client.post(
        "/admin/providers/new/github",
        data={"name": "GitHub (mine)", **GITHUB, "expected_id": "2", "csrf_token": token.group(1)},
        follow_redirects=True,
    ).get_data(as_text=True)
    assert "Its redirect URI is http://127.0.0.1:5000/oauth/3/callback — not the one the form showed" in late


def test_enabling_a_provider_whose_last_test_failed_warns(
    app: Flask, db: Session, settings: Settings, make_user: UserFactory
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    config_id = create_config(
        app, "generic_oidc", "Corp ID", generic_values(nowhere, OPClient("ami-auth", "op-secret")), enabled=False
    )
    client = _admin_client(app, make_user)
    setup = client.get(f"/admin/providers/{config_id}/oauth").get_data(as_text=True)
    tested = client.post(f"/admin/providers/{config_id}/test-oauth", data={"csrf_token": page_csrf(setup)})
    assert tested.status_code == 422
    edit = client.get(f"/admin/providers/{config_id}").get_data(as_text=True)
    assert "Its last connection test failed</strong> (provider_unreachable" in edit
    enabled = client.post(
        f"/admin/providers/{config_id}/enable", data={"csrf_token": page_csrf(edit)}, follow_redirects=True
    ).get_data(as_text=True)
    assert "“Corp ID” is now enabled." in enabled
    assert "Its last connection test failed (provider_unreachable): sign-ins through it may fail." in enabled


def test_a_member_sees_not_available_with_a_reference_and_an_admin_the_detail(
    app: Flask, client: FlaskClient, make_user: UserFactory, caplog: Any
) -> None:
    # A provider an admin set up at an address the outbound guard refuses (not in AMI_AUTH_OUTBOUND_ALLOW).
    config_id = create_config(
        app, "generic_oidc", "Corp ID", generic_values("http://10.20.30.40", OPClient("ami-auth", "op-secret"))
    )
    anonymous = client.get(f"/oauth/{config_id}/login")
    html = anonymous.get_data(as_text=True)
    assert anonymous.status_code == 503 and anonymous.headers["Retry-After"]
    assert "This is not available right now." in html and "quote the reference" in html
    reference = re.search(r"reference <code data-reference>([0-9a-f]+)</code>", html)
    assert reference is not None
    assert "Outbound address not allowed" not in html and "AMI_AUTH_OUTBOUND_ALLOW" not in html
    assert "10.20.30.40" not in html
    # The detail is in the log line that carries the same reference.
    assert any(
        reference.group(1) in r.getMessage() and "Outbound address not allowed" in r.getMessage()
        for r in caplog.records
    )

    make_user("mo@example.com")
    sign_in(client, "mo@example.com")
    member = client.get(f"/account/connections/connect/{config_id}").get_data(as_text=True)
    assert "This is not available right now." in member and "Outbound address not allowed" not in member

    admin = _admin_client(app, make_user)
    page = admin.get(f"/account/connections/connect/{config_id}")
    detail = page.get_data(as_text=True)
    assert page.status_code == 422 and "Outbound address not allowed: 10.20.30.40" in detail
    assert re.search(r"reference <code>[0-9a-f]+</code>", detail)


def test_the_audit_log_shows_human_values(app: Flask, make_user: UserFactory) -> None:
    with app.app_context():
        db = get_database(app).session()
        audit.record(
            db,
            audit.AuditContext(actor="test"),
            "provider_config.test",
            target="provider_config:7",
            details={"code": None, "verified": True, "forced": False, "fields": ["issuer", "client_id"]},
        )
        db.commit()
    client = _admin_client(app, make_user)
    html = client.get("/admin/audit?action=provider_config.test").get_data(as_text=True)
    details = re.search(r'<td class="details">(.*?)</td>', html, re.S)
    assert details is not None
    text = re.sub(r"<[^>]+>", "", details.group(1))
    assert "code —" in text and "verified yes" in text and "forced no" in text and "fields issuer, client_id" in text
    assert "None" not in text and "True" not in text and "[" not in text


def test_empty_lists_say_so_the_same_way(app: Flask, make_user: UserFactory) -> None:
    client = _admin_client(app, make_user)
    expected = {
        "/admin/providers/": ("providers", "No providers yet."),
        "/admin/accounts/": ("accounts", "No accounts yet."),
        "/admin/tokens/": ("tokens", "No service tokens yet."),
        "/account/mfa": ("passkeys", "No passkeys yet."),
        "/account/connections/": ("connections", "No connected accounts yet."),
    }
    for path, (what, words) in expected.items():
        html = client.get(path).get_data(as_text=True)
        found = re.search(rf'class="empty[^"]*" data-empty="{what}">([^<]*)', html)
        assert found is not None and found.group(1).startswith(words), (path, found)
