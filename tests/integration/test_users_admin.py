"""The admin users console: guards, list/search/paging, create (password or invite), edit with JSON
metadata, disable/enable, delete, session revocation, last-admin protection, the outbox page."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app.audit import AuditContext
from app.auth import user_admin
from app.errors import AppError
from app.extensions import get_database
from app.models import AuditEvent, User, UserSession
from app.settings import Settings
from tests.conftest import PASSWORD, UserFactory, csrf_token, sign_in
from tests.support.mailbox import last_mail, link_path


@pytest.fixture
def admin(app: Flask, make_user: UserFactory) -> FlaskClient:
    make_user("root@example.com", role="admin", display_name="Root")
    client = app.test_client()
    sign_in(client, "root@example.com")
    return client


def _post(client: FlaskClient, path: str, data: dict[str, str] | None = None) -> TestResponse:
    return client.post(path, data={**(data or {}), "csrf_token": csrf_token(client, "/admin/users")})


def _user(db: Session, email: str) -> User:
    db.expire_all()
    user = db.scalar(select(User).where(User.email == email))
    assert user is not None
    return user


def _events(db: Session, action: str) -> list[AuditEvent]:
    db.expire_all()
    return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_members_get_403_everywhere(app: Flask, make_user: UserFactory) -> None:
    target = make_user("m2@example.com")
    make_user("m1@example.com")
    client = app.test_client()
    sign_in(client, "m1@example.com")
    for path in ("/admin/users", "/admin/users/new", f"/admin/users/{target.id}", "/admin/outbox"):
        assert client.get(path).status_code == 403, path
    token = csrf_token(client, "/account/")
    for path in (f"/admin/users/{target.id}/disable", f"/admin/users/{target.id}/delete"):
        assert client.post(path, data={"csrf_token": token}).status_code == 403, path
    assert app.test_client().get("/admin/users").status_code == 302  # anonymous: to sign-in


def test_nav_has_users_and_outbox(admin: FlaskClient) -> None:
    html = admin.get("/admin/").get_data(as_text=True)
    assert 'href="/admin/users"' in html and 'href="/admin/outbox"' in html


def test_list_search_and_paging(admin: FlaskClient, app: Flask, settings: Settings) -> None:
    from app.auth import users as users_logic

    with app.app_context():
        db = get_database(app).session()
        for i in range(30):
            users_logic.create_user(db, settings, email=f"user{i:02d}@example.com", password=None)
        users_logic.create_user(db, settings, email="zed@corp.example", password=None, display_name="Zed 100% Real")
        db.commit()
    first = admin.get("/admin/users").get_data(as_text=True)
    assert "32 users" in first and "Page 1 of 2" in first
    assert first.count('data-user="') == 25
    second = admin.get("/admin/users?page=2").get_data(as_text=True)
    assert second.count('data-user="') == 7 and "zed@corp.example" in second
    by_name = admin.get("/admin/users?q=zed 100").get_data(as_text=True)
    assert by_name.count('data-user="') == 1 and "zed@corp.example" in by_name
    by_email = admin.get("/admin/users?q=CORP.EXAMPLE").get_data(as_text=True)
    assert by_email.count('data-user="') == 1
    # LIKE wildcards in the query are literal: "%" matches only the name that contains it.
    assert admin.get("/admin/users?q=%25").get_data(as_text=True).count('data-user="') == 1
    assert admin.get("/admin/users?q=_").get_data(as_text=True).count('data-user="') == 0
    assert "No users match" in admin.get("/admin/users?q=nothing-like-this").get_data(as_text=True)
    assert admin.get("/admin/users?page=999").status_code == 200
    assert admin.get("/admin/users?page=-1").status_code == 200


def test_create_with_password_and_metadata(admin: FlaskClient, db: Session, app: Flask) -> None:
    bad_json = _post(
        admin,
        "/admin/users/new",
        {"email": "meta@example.com", "role": "member", "mode": "password", "password": PASSWORD, "metadata": "{x"},
    )
    html = bad_json.get_data(as_text=True)
    assert bad_json.status_code == 422
    assert re.search(r'id="metadata-error"[^>]*>Not valid JSON: .+line 1, column 2', html)
    assert PASSWORD not in html  # the typed password is never shown back
    assert 'value="meta@example.com"' in html

    not_object = _post(
        admin,
        "/admin/users/new",
        {"email": "meta@example.com", "role": "member", "mode": "password", "password": PASSWORD, "metadata": "[1]"},
    )
    assert "Use a JSON object" in not_object.get_data(as_text=True)

    no_password = _post(admin, "/admin/users/new", {"email": "meta@example.com", "role": "member", "mode": "password"})
    assert 'id="password-error"' in no_password.get_data(as_text=True)

    ok = _post(
        admin,
        "/admin/users/new",
        {
            "email": "Meta@Example.com",
            "display_name": "Meta",
            "role": "admin",
            "mode": "password",
            "password": PASSWORD,
            "metadata": '{"team": "sales", "level": 3}',
        },
    )
    assert ok.status_code == 302
    user = _user(db, "meta@example.com")
    assert user.role == "admin" and user.user_metadata == {"team": "sales", "level": 3}
    assert user.must_change_password is False  # the box was not ticked
    assert user.email_verified_at is not None
    assert sign_in(app.test_client(), "meta@example.com").status_code == 302

    duplicate = _post(
        admin,
        "/admin/users/new",
        {"email": "meta@example.com", "role": "member", "mode": "password", "password": PASSWORD},
    )
    assert re.search(r'id="email-error"[^>]*>Already in use', duplicate.get_data(as_text=True))
    (event,) = _events(db, "user.create")
    assert event.details == {"email": "meta@example.com", "role": "admin", "via": "password"}
    assert PASSWORD not in str(event.details)


def test_edit_user(admin: FlaskClient, db: Session, make_user: UserFactory) -> None:
    target = make_user("ed@example.com")
    page = admin.get(f"/admin/users/{target.id}").get_data(as_text=True)
    assert "THROTTLE SLOT" not in page  # the slots are Jinja comments, invisible until filled
    bad = _post(
        admin, f"/admin/users/{target.id}/edit", {"display_name": "Ed", "role": "member", "metadata": '{"a": }'}
    )
    assert bad.status_code == 422 and 'id="metadata-error"' in bad.get_data(as_text=True)
    ok = _post(
        admin,
        f"/admin/users/{target.id}/edit",
        {"display_name": "Edward", "role": "admin", "metadata": '{"dept": "ops"}'},
    )
    assert ok.status_code == 302
    user = _user(db, "ed@example.com")
    assert (user.display_name, user.role, user.user_metadata) == ("Edward", "admin", {"dept": "ops"})
    (event,) = _events(db, "user.update")
    assert event.details == {"fields": ["display_name", "metadata", "role"], "role": {"from": "member", "to": "admin"}}
    # The form shows the stored metadata as JSON again.
    assert "&#34;dept&#34;: &#34;ops&#34;" in admin.get(f"/admin/users/{target.id}").get_data(as_text=True)


def test_admin_cannot_disable_demote_or_delete_themselves(admin: FlaskClient, db: Session) -> None:
    me = _user(db, "root@example.com")
    for path, data in (
        (f"/admin/users/{me.id}/disable", {}),
        (f"/admin/users/{me.id}/delete", {}),
        (f"/admin/users/{me.id}/edit", {"display_name": "Root", "role": "member", "metadata": ""}),
    ):
        response = _post(admin, path, data)
        html = response.get_data(as_text=True)
        assert response.status_code == 409, path
        assert 'data-error-code="conflict"' in html and "your own" in html
    me = _user(db, "root@example.com")
    assert me.is_active and me.role == "admin"
    assert {e.outcome for e in _events(db, "user.disable") + _events(db, "user.delete")} == {"denied"}


def test_last_admin_cannot_be_removed(app: Flask, db: Session, settings: Settings, make_user: UserFactory) -> None:
    sole = make_user("sole@example.com", role="admin")
    other_admin = make_user("gone@example.com", role="admin")
    ctx = AuditContext(actor="cli")
    with app.app_context():
        session = get_database(app).session()
        actor = session.get(User, other_admin.id)
        target = session.get(User, sole.id)
        assert actor is not None and target is not None
        user_admin.set_active(session, ctx, target, actor, False)  # two admins: fine
        for attempt in (
            lambda: user_admin.set_active(session, ctx, actor, target, False),
            lambda: user_admin.delete_user(session, ctx, actor, target),
            lambda: user_admin.update_user(session, ctx, actor, target, display_name="", role="member", metadata=""),
        ):
            with pytest.raises(AppError) as exc:
                attempt()
            assert exc.value.code == "conflict" and "last active admin" in exc.value.text
        session.rollback()
    assert _user(db, "sole@example.com").is_active


def test_disable_ends_sessions_and_sign_in_says_nothing_more(
    admin: FlaskClient, app: Flask, db: Session, make_user: UserFactory
) -> None:
    target = make_user("dis@example.com")
    victim = app.test_client()
    sign_in(victim, "dis@example.com")
    assert victim.get("/account/").status_code == 200
    response = _post(admin, f"/admin/users/{target.id}/disable")
    assert response.status_code == 302
    assert "1 session(s) were signed out" in admin.get(response.headers["Location"]).get_data(as_text=True)
    assert victim.get("/account/").status_code == 302
    db.expire_all()
    assert (
        db.scalars(select(UserSession).where(UserSession.revoked_at.is_(None), UserSession.user_id == target.id)).all()
        == []
    )

    right = sign_in(app.test_client(), "dis@example.com", PASSWORD)
    wrong = sign_in(app.test_client(), "dis@example.com", "certainly wrong password")
    assert right.status_code == wrong.status_code == 401
    strip = re.compile(r'(name="csrf_token"[^>]*value="|"X-CSRFToken": ")[^"]+')
    assert strip.sub("", right.get_data(as_text=True)) == strip.sub("", wrong.get_data(as_text=True))

    assert _post(admin, f"/admin/users/{target.id}/enable").status_code == 302
    assert sign_in(app.test_client(), "dis@example.com").status_code == 302
    assert [e.action for e in _events(db, "user.disable") + _events(db, "user.enable")] == [
        "user.disable",
        "user.enable",
    ]


def test_delete_user(admin: FlaskClient, app: Flask, db: Session, make_user: UserFactory) -> None:
    target = make_user("del@example.com")
    victim = app.test_client()
    sign_in(victim, "del@example.com")
    confirm = admin.get(f"/admin/users/{target.id}/delete")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.get_data(as_text=True)
    response = _post(admin, f"/admin/users/{target.id}/delete")
    assert response.status_code == 302 and response.headers["Location"] == "/admin/users"
    db.expire_all()
    assert db.scalar(select(User).where(User.email == "del@example.com")) is None
    assert db.scalars(select(UserSession).where(UserSession.user_id == target.id)).all() == []
    assert victim.get("/account/").status_code == 302
    assert admin.get(f"/admin/users/{target.id}").status_code == 404
    (event,) = _events(db, "user.delete")
    assert event.target == f"user:{target.id}" and event.details == {"email": "del@example.com"}


def test_admin_revokes_one_or_all_sessions_of_a_user(
    admin: FlaskClient, app: Flask, db: Session, make_user: UserFactory
) -> None:
    target = make_user("ses@example.com")
    a, b, c = app.test_client(), app.test_client(), app.test_client()
    for client in (a, b, c):
        sign_in(client, "ses@example.com")
    db.expire_all()
    records = db.scalars(select(UserSession).where(UserSession.user_id == target.id)).all()
    detail = admin.get(f"/admin/users/{target.id}").get_data(as_text=True)
    assert all(f'data-session="{r.public_id}"' in detail for r in records)
    first = records[0]
    assert _post(admin, f"/admin/users/{target.id}/sessions/{first.public_id}/revoke").status_code == 302
    assert sum(client.get("/account/").status_code == 200 for client in (a, b, c)) == 2
    assert _post(admin, f"/admin/users/{target.id}/sessions/{first.public_id}/revoke").status_code == 404
    assert _post(admin, f"/admin/users/{target.id}/sessions/revoke-all").status_code == 302
    assert all(client.get("/account/").status_code == 302 for client in (a, b, c))
    assert _events(db, "session.revoked")[0].details == {"session": first.public_id, "by": "admin"}
    assert _events(db, "session.revoked_all")[0].details == {"sessions_ended": 2, "by": "admin"}


def test_send_reset_link_and_resend_invite_from_detail(
    admin: FlaskClient, app: Flask, db: Session, make_user: UserFactory
) -> None:
    target = make_user("rl@example.com")
    assert _post(admin, f"/admin/users/{target.id}/reset-link").status_code == 302
    path = link_path(last_mail(db, "rl@example.com").text, "/reset/")
    assert app.test_client().get(path).status_code == 200
    # An invite makes no sense for a user who has a password.
    _post(admin, f"/admin/users/{target.id}/invite")
    assert "already set a password" in admin.get(f"/admin/users/{target.id}").get_data(as_text=True)

    _post(admin, "/admin/users/new", {"email": "inv2@example.com", "role": "member", "mode": "invite"})
    invited = _user(db, "inv2@example.com")
    first = link_path(last_mail(db, "inv2@example.com").text, "/invite/")
    detail = admin.get(f"/admin/users/{invited.id}").get_data(as_text=True)
    assert "invitation pending" in detail and "Send invitation again" in detail
    _post(admin, f"/admin/users/{invited.id}/invite")
    second = link_path(last_mail(db, "inv2@example.com").text, "/invite/")
    assert first != second
    assert app.test_client().get(first).status_code == 410
    assert len(_events(db, "user.invited")) == 2


def test_outbox_page(admin: FlaskClient, db: Session, make_user: UserFactory) -> None:
    target = make_user("ob@example.com")
    _post(admin, f"/admin/users/{target.id}/reset-link")
    page = admin.get("/admin/outbox").get_data(as_text=True)
    assert "ob@example.com" in page and "Reset your password" in page and "/reset/" in page


def test_disabling_voids_pending_links(admin: FlaskClient, app: Flask, db: Session, make_user: UserFactory) -> None:
    target = make_user("void@example.com")
    _post(admin, f"/admin/users/{target.id}/reset-link")
    path = link_path(last_mail(db, "void@example.com").text, "/reset/")
    _post(admin, f"/admin/users/{target.id}/disable")
    assert app.test_client().get(path).status_code == 410
