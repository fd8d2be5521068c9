"""Changing one's email address (issue 14) over HTTP with the outbox: the password is asked, the new address
proves itself by a link, the old one is told, and what was sent to the old address dies with it."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import AuditEvent, User
from tests.conftest import PASSWORD, UserFactory, csrf_token, sign_in
from tests.support.mailbox import last_mail, link_path, outbox


def ask_change(client: FlaskClient, new_email: str, password: str = PASSWORD) -> tuple[int, str]:
    token = csrf_token(client, "/account/")
    response = client.post(
        "/account/email", data={"new_email": new_email, "email_password": password, "csrf_token": token}
    )
    if response.status_code == 302:
        return 302, client.get(response.headers["Location"]).get_data(as_text=True)
    return response.status_code, response.get_data(as_text=True)


def confirm(client: FlaskClient, path: str) -> tuple[int, str]:
    response = client.post(path, data={"csrf_token": csrf_token(client, path)})
    return response.status_code, response.headers.get("Location", "")


def test_the_address_changes_only_through_the_link_and_the_old_one_is_told(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    user = make_user("old@example.com")
    other_browser = client.application.test_client()
    sign_in(other_browser, "old@example.com")
    sign_in(client, "old@example.com")
    # A reset link sent to the old address before the change.
    stranger = client.application.test_client()
    stranger.post("/reset", data={"email": "old@example.com", "csrf_token": csrf_token(stranger, "/reset")})
    reset_path = link_path(last_mail(db, "old@example.com").text, "/reset/")

    status, page = ask_change(client, "New@Example.com")
    assert status == 302
    assert "We sent a link to new@example.com" in page
    db.expire_all()
    unchanged = db.get(User, user.id)
    assert unchanged is not None and unchanged.email == "old@example.com"  # nothing changed yet
    mail = last_mail(db, "new@example.com")
    assert mail.subject == "Confirm your new email address"
    path = link_path(mail.text, "/account/email/")
    assert "Change my email address" in client.get(path).get_data(as_text=True)  # a GET changes nothing

    status, location = confirm(client, path)
    assert (status, location) == (302, "/account/")
    db.expire_all()
    changed = db.get(User, user.id)
    assert changed is not None and changed.email == "new@example.com" and changed.email_verified_at is not None
    notice = last_mail(db, "old@example.com")
    assert notice.subject == "Your email address was changed"
    assert "new@example.com" in notice.text
    # The link is single use, the old reset link is void, the other session ended, this one stays.
    assert client.get(path).status_code == 410
    assert client.get(reset_path).status_code == 410
    assert other_browser.get("/account/").status_code == 302
    assert client.get("/account/").status_code == 200
    events = db.scalars(
        select(AuditEvent.action).where(AuditEvent.action.like("email_change.%")).order_by(AuditEvent.id)
    ).all()
    assert events == ["email_change.requested", "email_change.confirmed"]
    # The new address signs in; the old one does not.
    fresh = client.application.test_client()
    assert sign_in(fresh, "old@example.com").status_code == 401
    assert sign_in(fresh, "new@example.com").status_code == 302


def test_the_notice_to_a_german_user_names_the_browser_in_german(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    user = make_user("alt@example.com")
    db.execute(update(User).where(User.id == user.id).values(locale="de"))
    db.commit()
    client.environ_base["HTTP_USER_AGENT"] = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"
    sign_in(client, "alt@example.com")
    assert ask_change(client, "neu@example.com")[0] == 302
    assert confirm(client, link_path(last_mail(db, "neu@example.com").text, "/account/email/"))[0] == 302
    notice = last_mail(db, "alt@example.com")
    assert "(Firefox unter Linux, 127.0.0.1)" in notice.text
    assert notice.html is not None and "(Firefox unter Linux, 127.0.0.1)" in notice.html


def test_a_wrong_password_changes_nothing_and_counts_as_a_failed_sign_in(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("pat@example.com")
    sign_in(client, "pat@example.com")
    status, page = ask_change(client, "elsewhere@example.com", password="not the password at all")
    assert status == 401
    assert "This is not your current password." in page
    assert outbox(db, "elsewhere@example.com") == []
    failures = db.scalars(
        select(AuditEvent).where(AuditEvent.action == "email_change.requested", AuditEvent.outcome == "failure")
    ).all()
    assert len(failures) == 1


def test_a_taken_address_gets_a_note_and_the_page_says_the_same(
    client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    make_user("mine@example.com")
    make_user("taken@example.com")
    sign_in(client, "mine@example.com")
    status, page = ask_change(client, "taken@example.com")
    assert status == 302
    assert "We sent a link to taken@example.com" in page
    note = last_mail(db, "taken@example.com")
    assert note.subject == "Email change requested"
    assert "/account/email/" not in note.text


def test_bad_input_lands_on_the_field(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("typo@example.com")
    sign_in(client, "typo@example.com")
    status, page = ask_change(client, "not-an-address")
    assert status == 422
    assert 'data-field="new_email"' in page
    status, page = ask_change(client, "typo@example.com")
    assert status == 422
    assert "This is already your address." in page
