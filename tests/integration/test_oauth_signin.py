"""Sign in with a provider: "Continue with …" → the real OP's login and consent pages → the app's callback,
and the linking rules (verified + trusted email links; otherwise the AMI password first), JIT accounts
with a domain allow-list, and generic claim mapping. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app.models import AuditEvent, OAuthIdentity, User
from app.settings import Settings
from tests.conftest import PASSWORD, UserFactory
from tests.support.mfa import enrol_totp
from tests.support.oauth_app import create_config, follow_callback, generic_values, location, page_csrf
from tests.support.op import OPClient, OpenIDProvider, op_login, running_op

BASE = "http://127.0.0.1:5000"  # the test settings' AMI_AUTH_BASE_URL
ACCOUNTS = {
    "alice": {"email": "alice@example.com", "email_verified": True, "name": "Alice"},
    "bob": {"email": "bob@example.com", "email_verified": False, "name": "Bob"},
    "carol": {
        "email": "carol@corp.example",
        "email_verified": True,
        "name": "Carol",
        "employee_id": "E-42",
        "groups": ["staff", "ops"],
    },
    "dave": {"email": "dave@other.example", "email_verified": True, "name": "Dave"},
    # Directory addresses on special-use names (Active Directory's classic .local, .internal, .test).
    "erin": {"email": "erin@corp.local", "email_verified": True, "name": "Erin"},
    "finn": {"email": "Finn@Host.Internal", "email_verified": True, "name": "Finn"},
    "gail": {"email": "gail@lab.test", "email_verified": True, "name": "Gail"},
    "hal": {"email": "hal@@corp.local", "email_verified": True, "name": "Hal"},
}
CLAIMS = {"openid": ["sub"], "email": ["email", "email_verified"], "profile": ["name", "employee_id", "groups"]}


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    # Each test's database starts empty, so its first provider config is #1: register a few callbacks.
    client = OPClient(
        "ami-auth",
        "op-secret:with+chars",
        extra={"redirect_uris": [f"{BASE}/oauth/{i}/callback" for i in range(1, 4)]},
    )
    with running_op(clients=[client], accounts=ACCOUNTS, claims=CLAIMS) as provider:
        yield provider


def _config(app: Flask, op: OpenIDProvider, **extra: object) -> int:
    return create_config(app, "generic_oidc", "Corp ID", generic_values(op.issuer, op.client, **extra))


def _sign_in(client: FlaskClient, config_id: int, login: str) -> TestResponse:
    start = client.get(f"/oauth/{config_id}/login?next=/account/")
    assert start.status_code == 302
    assert location(start).startswith("http://127.0.0.1:")
    return follow_callback(client, op_login(location(start), login))


def _signed_in_as(client: FlaskClient) -> str | None:
    page = client.get("/account/")
    if page.status_code != 200:
        return None
    html = page.get_data(as_text=True)
    start = html.find('<span class="who">')
    return html[start + 18 : html.find("</span>", start)] if start >= 0 else None


def _identities(db: Session) -> list[OAuthIdentity]:
    db.expire_all()
    return list(db.scalars(select(OAuthIdentity)))


def test_button_on_signin_page_and_verified_trusted_email_links(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    user = make_user("alice@example.com")
    config_id = _config(app, op, trust_email=True)
    page = client.get("/signin").get_data(as_text=True)
    assert f'href="/oauth/{config_id}/login' in page and "Continue with Corp ID" in page

    done = _sign_in(client, config_id, "alice")
    assert done.status_code == 302 and location(done) == "/account/"
    assert _signed_in_as(client) == "alice@example.com"
    [identity] = _identities(db)
    assert (identity.user_id, identity.subject, identity.email) == (user.id, "alice", "alice@example.com")
    actions = [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert "oauth.identity_linked" in actions and actions[-1] == "signin.success"


def test_unverified_email_must_be_confirmed_with_the_password(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    make_user("bob@example.com")
    config_id = _config(app, op, trust_email=True)
    done = _sign_in(client, config_id, "bob")
    assert location(done) == "/oauth/link"
    assert _signed_in_as(client) is None
    page = client.get("/oauth/link").get_data(as_text=True)
    assert "Link your Corp ID account" in page and "bob@example.com" in page
    assert "does not confirm that bob@example.com is verified" in page

    wrong = client.post(
        "/oauth/link", data={"email": "bob@example.com", "password": "not it at all", "csrf_token": page_csrf(page)}
    )
    assert wrong.status_code == 401 and "Email or password is not right." in wrong.get_data(as_text=True)
    assert _identities(db) == []

    linked = client.post(
        "/oauth/link", data={"email": "bob@example.com", "password": PASSWORD, "csrf_token": page_csrf(page)}
    )
    assert linked.status_code == 302 and location(linked) == "/account/"
    assert _signed_in_as(client) == "bob@example.com"
    assert [i.subject for i in _identities(db)] == ["bob"]

    # From now on the provider alone signs Bob in.
    client.post("/signout", data={"csrf_token": page_csrf(client.get("/account/").get_data(as_text=True))})
    again = _sign_in(client, config_id, "bob")
    assert location(again) == "/account/"
    assert _signed_in_as(client) == "bob@example.com"


def test_a_provider_that_is_not_trusted_never_links_by_email(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    make_user("alice@example.com")
    config_id = _config(app, op, trust_email=False)
    done = _sign_in(client, config_id, "alice")
    assert location(done) == "/oauth/link"
    assert _identities(db) == []


def test_jit_creates_users_only_in_allowed_domains(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider
) -> None:
    config_id = _config(app, op, jit=True, allowed_domains="corp.example")
    created = _sign_in(client, config_id, "carol")
    assert location(created) == "/account/"
    user = db.scalars(select(User).where(User.email == "carol@corp.example")).one()
    assert user.password_hash is None and user.email_verified_at is not None and user.display_name == "Carol"

    client.post("/signout", data={"csrf_token": page_csrf(client.get("/account/").get_data(as_text=True))})
    refused = _sign_in(client, config_id, "dave")
    assert location(refused) == "/oauth/link"
    assert "Accounts for other.example cannot be created here." in client.get("/oauth/link").get_data(as_text=True)
    assert _signed_in_as(client) is None
    assert db.scalars(select(User).where(User.email == "dave@other.example")).first() is None


def test_the_reason_to_link_is_in_the_browsers_language(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider
) -> None:
    config_id = _config(app, op, jit=True, allowed_domains="corp.example")
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "de-DE,de;q=0.9"
    refused = _sign_in(client, config_id, "dave")
    assert location(refused) == "/oauth/link"
    page = client.get("/oauth/link").get_data(as_text=True)
    assert "Konten für other.example können hier nicht erstellt werden." in page


def test_without_jit_an_unknown_person_can_only_link(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    config_id = _config(app, op)
    refused = _sign_in(client, config_id, "dave")
    assert location(refused) == "/oauth/link"
    page = client.get("/oauth/link").get_data(as_text=True)
    assert "No AMI Auth account uses this address." in page and "ask an administrator for an invitation" in page
    assert _signed_in_as(client) is None
    assert db.scalars(select(User)).all() == []
    # Someone with an AMI account under another address links it with its password.
    make_user("dave.at.work@example.com")
    linked = client.post(
        "/oauth/link",
        data={"email": "dave.at.work@example.com", "password": PASSWORD, "csrf_token": page_csrf(page)},
    )
    assert location(linked) == "/account/"
    assert _signed_in_as(client) == "dave.at.work@example.com"


def test_jit_needs_a_verified_email(app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider) -> None:
    config_id = _config(app, op, jit=True)
    refused = _sign_in(client, config_id, "bob")
    assert location(refused) == "/oauth/link"
    assert "did not confirm a verified email address" in client.get("/oauth/link").get_data(as_text=True)
    assert db.scalars(select(User)).all() == []


def test_claim_mapping_picks_the_configured_user_id(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider
) -> None:
    config_id = _config(app, op, jit=True, user_id_claim="employee_id", groups_claim="groups")
    done = _sign_in(client, config_id, "carol")
    assert location(done) == "/account/"
    [identity] = _identities(db)
    assert identity.subject == "E-42"


def test_a_callback_works_once(app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider) -> None:
    config_id = _config(app, op, jit=True)
    start = client.get(f"/oauth/{config_id}/login")
    callback = op_login(location(start), "carol")
    assert follow_callback(client, callback).status_code == 302
    client.post("/signout", data={"csrf_token": page_csrf(client.get("/account/").get_data(as_text=True))})
    replay = follow_callback(client, callback)
    assert replay.status_code == 422
    assert "does not belong to this browser session" in replay.get_data(as_text=True)
    assert _signed_in_as(client) is None


def test_sign_in_can_be_turned_off_per_provider(app: Flask, client: FlaskClient, op: OpenIDProvider) -> None:
    config_id = _config(app, op, signin=False)
    assert "Continue with" not in client.get("/signin").get_data(as_text=True)
    assert client.get(f"/oauth/{config_id}/login").status_code == 404


def test_mfa_still_applies_after_an_oauth_sign_in(
    app: Flask, settings: Settings, client: FlaskClient, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    user = make_user("alice@example.com")
    secret = enrol_totp(app, settings, user)
    config_id = _config(app, op, trust_email=True)
    done = _sign_in(client, config_id, "alice")
    assert location(done) == "/signin/mfa"
    assert _signed_in_as(client) is None  # no session before the second factor
    token = page_csrf(client.get("/signin/mfa").get_data(as_text=True))
    second = client.post("/signin/mfa/totp", data={"code": pyotp.TOTP(secret).now(), "csrf_token": token})
    assert location(second) == "/account/"
    assert _signed_in_as(client) == "alice@example.com"


def _wrong_passwords(client: FlaskClient, email: str, count: int) -> list[int]:
    """Wrong passwords on the sign-in page, each from another address (a guesser spread over many)."""
    statuses = []
    for n in range(count):
        token = page_csrf(client.get("/signin").get_data(as_text=True))
        response = client.post(
            "/signin",
            data={"email": email, "password": "a stranger's guess", "csrf_token": token},
            environ_base={"REMOTE_ADDR": f"198.18.0.{n + 1}"},
        )
        statuses.append(response.status_code)
    return statuses


def test_a_password_lock_does_not_block_sign_in_with_a_provider(
    app: Flask, client: FlaskClient, op: OpenIDProvider, make_user: UserFactory
) -> None:
    make_user("alice@example.com")
    config_id = _config(app, op, trust_email=True)
    assert _wrong_passwords(app.test_client(), "alice@example.com", 5) == [401] * 4 + [429]
    done = _sign_in(client, config_id, "alice")
    assert location(done) == "/account/"
    assert _signed_in_as(client) == "alice@example.com"
    # The provider's sign-in did not lift the strangers' lock.
    assert _wrong_passwords(app.test_client(), "alice@example.com", 1) == [429]


def test_the_link_page_checks_passwords_under_the_sign_in_throttle(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    # Anyone who can sign in at the provider reaches the link page: it must not be a way around the lock.
    make_user("victim@example.com")
    config_id = _config(app, op)
    assert location(_sign_in(client, config_id, "dave")) == "/oauth/link"
    statuses = []
    for _ in range(5):
        page = client.get("/oauth/link").get_data(as_text=True)
        response = client.post(
            "/oauth/link",
            data={"email": "victim@example.com", "password": "a guess at it", "csrf_token": page_csrf(page)},
        )
        statuses.append(response.status_code)
    assert statuses == [401] * 4 + [429]
    assert "Too many failed sign-ins for this account." in response.get_data(as_text=True)
    page = client.get("/oauth/link").get_data(as_text=True)
    right = client.post(
        "/oauth/link", data={"email": "victim@example.com", "password": PASSWORD, "csrf_token": page_csrf(page)}
    )
    assert right.status_code == 429 and int(right.headers["Retry-After"]) >= 1
    assert _identities(db) == [] and _signed_in_as(client) is None
    locked = db.scalars(select(AuditEvent).where(AuditEvent.action == "account.locked")).one()
    assert locked.details["source"] == "unfamiliar"


@pytest.mark.parametrize(
    ("login", "email"),
    [("erin", "erin@corp.local"), ("finn", "finn@host.internal"), ("gail", "gail@lab.test")],
)
def test_jit_accepts_a_directory_address_on_a_special_use_domain(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, login: str, email: str
) -> None:
    config_id = _config(app, op, jit=True)
    done = _sign_in(client, config_id, login)
    assert location(done) == "/account/"
    assert _signed_in_as(client) == email
    user = db.scalars(select(User).where(User.email == email)).one()
    assert user.email_verified_at is not None and user.password_hash is None
    # Next time the linked identity signs the same user in.
    client.post("/signout", data={"csrf_token": page_csrf(client.get("/account/").get_data(as_text=True))})
    assert location(_sign_in(client, config_id, login)) == "/account/"
    assert db.scalars(select(User).where(User.email == email)).one().id == user.id


def test_jit_says_exactly_which_address_it_refused_and_why(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider
) -> None:
    config_id = _config(app, op, jit=True)
    refused = _sign_in(client, config_id, "hal")
    assert location(refused) == "/oauth/link"
    page = client.get("/oauth/link").get_data(as_text=True)
    assert "Corp ID gave the address “hal@@corp.local”, which is not a valid email address" in page
    assert "The part after the @-sign contains invalid characters: &#39;@&#39;." in page
    assert "highlighted" not in page
    assert db.scalars(select(User)).all() == []


def test_a_userinfo_answer_about_someone_else_is_refused_with_a_clear_message(
    app: Flask, client: FlaskClient, db: Session
) -> None:
    registered = OPClient(
        "ami-auth", "op-secret:with+chars", extra={"redirect_uris": [f"{BASE}/oauth/{i}/callback" for i in range(1, 4)]}
    )
    with running_op(clients=[registered], accounts=ACCOUNTS, claims=CLAIMS, userinfoSub={"alice": "mallory"}) as bad:
        config_id = _config(app, bad, jit=True)
        response = _sign_in(client, config_id, "alice")
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "The provider&#39;s user information is about a different user than the one who signed in" in html
    assert "userinfo URL may point at another provider" in html and "highlighted" not in html
    assert _signed_in_as(client) is None and db.scalars(select(User)).all() == []
