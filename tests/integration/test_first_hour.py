"""The newcomer's first hour (issue 15), what a user sees through the web pages: one redirect after sign-in,
paged session lists, forms that report every error at once, human audit values."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from app.auth import sessions
from app.extensions import get_database
from app.models import User
from app.settings import Settings
from tests.conftest import PASSWORD, UserFactory, sign_in


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
