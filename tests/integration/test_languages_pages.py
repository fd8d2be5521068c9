"""The end-user side in other languages: every page and mail marked for translation (the pseudo-locale finds any
word that is not), German and French where a user reads them, the language picker, mails in the recipient's
language."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import create_app
from app.audit import AuditContext
from app.auth import users
from app.extensions import get_cipher, get_database, get_settings
from app.idp import clients
from app.models import AuditEvent, User
from tests.conftest import PASSWORD, UserFactory, csrf_token, dispose_app, make_settings, sign_in
from tests.support.i18n import PSEUDO_LOCALE, pseudo_translations, unmarked_text, use_pseudo_locale
from tests.support.mailbox import last_mail
from tests.support.mfa import enrol_totp, sign_in_with_totp

PSEUDO = {"Accept-Language": PSEUDO_LOCALE}
GERMAN = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}
ENGLISH = {"Accept-Language": "en-US,en;q=0.9"}
EMAIL = "lena@example.com"
# What a page shows that is data, not text to translate: the product's name, the user's address and role, each
# language in its own name (the picker), time zones and the browser a session came from.
DATA = ("AMI Auth", EMAIL, "member", "English", "Deutsch", "Français", "Esperanto", "UTC", "Werkzeug", "Other")


@pytest.fixture(scope="module")
def pseudo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Extracting every marked string takes seconds: once for the module."""
    return pseudo_translations(tmp_path_factory.mktemp("translations"))


@pytest.fixture
def pseudo_app(tmp_path: Path, sqlite_url: str, pseudo_catalog: Path) -> Iterator[Flask]:
    """Sign-up open and mailed codes on (so their pages render), serving the pseudo-locale too."""
    settings = make_settings(tmp_path, sqlite_url, AMI_AUTH_SIGNUP="open", AMI_AUTH_EMAIL_CODE_SIGNIN="true")
    application = create_app(settings)
    use_pseudo_locale(application, pseudo_catalog)
    yield application
    dispose_app(application)


def _user(app: Flask, email: str = EMAIL, locale: str | None = None) -> User:
    with app.app_context():
        session = get_database(app).session()
        user = users.create_user(session, get_settings(), email=email, password=PASSWORD, verified=True)
        user.locale = locale
        session.commit()
        return user


def _page(client: FlaskClient, path: str, status: int = 200) -> str:
    response = client.get(path, headers=PSEUDO)
    assert response.status_code == status, path
    html = response.get_data(as_text=True)
    assert f'<html lang="{PSEUDO_LOCALE}">' in html, path
    return html


ANONYMOUS_PAGES = ["/signin", "/signup", "/reset", "/signin/unlock", "/signin/code"]
SIGNED_IN_PAGES = ["/account/", "/account/mfa"]


@pytest.mark.parametrize("path", ANONYMOUS_PAGES)
def test_every_word_of_a_sign_in_page_is_marked_for_translation(pseudo_app: Flask, path: str) -> None:
    html = _page(pseudo_app.test_client(), path)
    assert unmarked_text(html, allowed=DATA) == []


@pytest.mark.parametrize("path", SIGNED_IN_PAGES)
def test_every_word_of_an_account_page_is_marked_for_translation(pseudo_app: Flask, path: str) -> None:
    _user(pseudo_app)
    client = pseudo_app.test_client()
    sign_in(client, EMAIL)
    html = _page(client, path)
    assert unmarked_text(html, allowed=DATA) == []


@pytest.mark.parametrize(
    ("path", "form", "shows"),
    [
        ("/reset", {"email": EMAIL}, "reset-sent"),
        ("/signin/unlock", {"email": EMAIL}, "unlock-sent"),
        ("/signin/code", {"email": EMAIL}, "code-enter"),
        ("/signup", {"email": "new@example.com", "password": "a long enough passphrase 9"}, "signup-sent"),
    ],
)
def test_the_pages_after_a_mail_went_out_are_marked(
    pseudo_app: Flask, path: str, form: dict[str, str], shows: str
) -> None:
    _user(pseudo_app)
    client = pseudo_app.test_client()
    token = csrf_token(client, path)
    response = client.post(path, data={**form, "csrf_token": token}, headers=PSEUDO, follow_redirects=True)
    html = response.get_data(as_text=True)
    assert f'data-page="{shows}"' in html
    assert unmarked_text(html, allowed=(*DATA, "new@example.com")) == []


def test_the_second_step_and_the_authenticator_set_up_are_marked(pseudo_app: Flask) -> None:
    user = _user(pseudo_app)
    enrol_totp(pseudo_app, get_settings(pseudo_app), user)
    client = pseudo_app.test_client()
    sign_in(client, EMAIL)
    assert unmarked_text(_page(client, "/signin/mfa"), allowed=DATA) == []
    other = _user(pseudo_app, "sam@example.com")
    assert other.email == "sam@example.com"
    second = pseudo_app.test_client()
    sign_in(second, "sam@example.com")
    token = csrf_token(second, "/account/mfa")
    second.post("/account/mfa/totp", data={"csrf_token": token}, headers=PSEUDO)
    setup = _page(second, "/account/mfa/totp")
    secret = re.search(r'id="totp-secret">([^<]+)<', setup)
    assert secret is not None
    assert unmarked_text(setup, allowed=(*DATA, "sam@example.com", secret.group(1))) == []


def test_the_openid_provider_pages_are_marked(pseudo_app: Flask) -> None:
    _user(pseudo_app)
    client = pseudo_app.test_client()
    refused = _page(client, "/oauth2/authorize?client_id=nobody&response_type=code", status=400)
    assert "⟦This sign-in request cannot be used⟧" in refused
    # The protocol library's own description of the error is data here (it stays as the library wrote it).
    description = re.search(r'<p class="lead">([^<]*)</p>', refused)
    assert description is not None
    assert unmarked_text(refused, allowed=(*DATA, description.group(1), "invalid_client", "invalid_request")) == []
    sign_in(client, EMAIL)
    logout = _page(client, "/oauth2/logout")
    assert "⟦An app asks to sign you out.⟧" in logout
    assert unmarked_text(logout, allowed=DATA) == []


def test_an_error_page_and_a_refused_form_are_marked_too(pseudo_app: Flask) -> None:
    client = pseudo_app.test_client()
    missing = _page(client, "/no-such-page", status=404)
    assert unmarked_text(missing, allowed=(*DATA, "not_found")) == []
    token = csrf_token(client, "/signin")
    refused = client.post("/signin", data={"email": EMAIL, "password": "wrong", "csrf_token": token}, headers=PSEUDO)
    html = refused.get_data(as_text=True)
    assert "⟦Email or password is not right.⟧" in html
    assert unmarked_text(html, allowed=DATA) == []


def test_the_reset_mail_is_marked_for_translation(pseudo_app: Flask) -> None:
    _user(pseudo_app)
    client = pseudo_app.test_client()
    token = csrf_token(client, "/reset")
    client.post("/reset", data={"email": EMAIL, "csrf_token": token}, headers=PSEUDO)
    with pseudo_app.app_context():
        mail = last_mail(get_database(pseudo_app).session(), EMAIL)
    assert mail.subject == "⟦Reset your password⟧"
    assert mail.html is not None
    links = tuple(re.findall(r"https?://[^\s<>\"]+", mail.html))
    assert unmarked_text(mail.html, allowed=(*DATA, *links)) == []
    words = [w for w in re.sub(r"⟦[^⟧]*⟧|https?://\S+", " ", mail.text).split() if re.search(r"[A-Za-z]{2,}", w)]
    assert [w for w in words if w not in DATA] == []


def test_a_german_browser_gets_the_sign_in_page_in_german(client: FlaskClient) -> None:
    html = client.get("/signin", headers=GERMAN).get_data(as_text=True)
    assert '<html lang="de">' in html
    assert "<h1>Anmelden</h1>" in html
    assert "Passwort vergessen?" in html
    assert "Mit einem Passkey anmelden" in html
    token = csrf_token(client, "/signin")
    refused = client.post("/signin", data={"email": EMAIL, "password": "wrong", "csrf_token": token}, headers=GERMAN)
    assert "E-Mail-Adresse oder Passwort ist nicht richtig." in refused.get_data(as_text=True)


def test_a_user_who_chose_german_reads_german_whatever_the_browser_says(
    app: Flask, client: FlaskClient, make_user: UserFactory
) -> None:
    _user(app, locale="de")
    client.environ_base["HTTP_USER_AGENT"] = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"
    sign_in(client, EMAIL)
    html = client.get("/account/", headers=ENGLISH).get_data(as_text=True)
    assert '<html lang="de">' in html
    assert "<h1>Mein Konto</h1>" in html
    assert "Firefox unter Linux" in html  # the session list's device, in German too
    assert '<option selected value="de">Deutsch</option>' in html


def test_picking_french_on_the_account_page_saves_it_audits_it_and_shows_french(
    app: Flask, db: Session, client: FlaskClient, make_user: UserFactory
) -> None:
    make_user(EMAIL)
    sign_in(client, EMAIL)
    page = client.get("/account/", headers=ENGLISH).get_data(as_text=True)
    assert "<h1>My account</h1>" in page
    assert '<option selected value="">Browser default</option>' in page
    assert '<option value="fr">Français</option>' in page
    token = csrf_token(client, "/account/")
    saved = client.post("/account/language", data={"locale": "fr", "csrf_token": token}, headers=ENGLISH)
    assert saved.status_code == 302
    french = client.get("/account/", headers=ENGLISH).get_data(as_text=True)
    assert '<html lang="fr">' in french
    assert "<h1>Mon compte</h1>" in french
    assert "Votre langue a été enregistrée." in french
    db.expire_all()
    user = db.scalars(select(User).where(User.email == EMAIL)).one()
    assert user.locale == "fr"
    event = db.scalars(select(AuditEvent).where(AuditEvent.action == "user.update")).all()[-1]
    assert event.details == {"fields": ["locale"], "by": "self"}
    # Back to the browser's choice: None, and the page follows Accept-Language again.
    token = csrf_token(client, "/account/")
    client.post("/account/language", data={"locale": "", "csrf_token": token}, headers=GERMAN)
    db.expire_all()
    assert db.scalars(select(User.locale).where(User.email == EMAIL)).one() is None
    assert "<h1>Mein Konto</h1>" in client.get("/account/", headers=GERMAN).get_data(as_text=True)


@pytest.mark.parametrize("value", ["xx", "eo", "FR", "de" * 40, "../fr"])
def test_a_language_that_is_not_shipped_is_a_field_error(
    app: Flask, db: Session, client: FlaskClient, make_user: UserFactory, value: str
) -> None:
    make_user(EMAIL)
    sign_in(client, EMAIL)
    token = csrf_token(client, "/account/")
    refused = client.post("/account/language", data={"locale": value, "csrf_token": token}, headers=ENGLISH)
    assert refused.status_code == 422
    html = refused.get_data(as_text=True)
    assert '<p class="error" id="locale-error" data-field="locale">Choose one of the languages in the list.</p>' in html
    db.expire_all()
    assert db.scalars(select(User.locale).where(User.email == EMAIL)).one() is None


def test_the_language_form_needs_its_csrf_token(client: FlaskClient, make_user: UserFactory) -> None:
    make_user(EMAIL)
    sign_in(client, EMAIL)
    assert client.post("/account/language", data={"locale": "de"}).status_code == 400


def test_a_reset_mail_to_a_user_who_chose_german_is_german_whoever_asks(
    app: Flask, db: Session, client: FlaskClient, make_user: UserFactory
) -> None:
    _user(app, locale="de")
    token = csrf_token(client, "/reset")
    client.post("/reset", data={"email": EMAIL, "csrf_token": token}, headers=ENGLISH)
    mail = last_mail(db, EMAIL)
    assert mail.subject == "Passwort zurücksetzen"
    assert "Wählen Sie hier ein neues Passwort:" in mail.text
    assert mail.html is not None and '<html lang="de">' in mail.html
    assert "Neues Passwort wählen" in mail.html


def test_a_mail_to_an_address_without_an_account_follows_the_requesters_language(
    db: Session, client: FlaskClient
) -> None:
    token = csrf_token(client, "/reset")
    client.post("/reset", data={"email": "nobody@example.com", "csrf_token": token}, headers=GERMAN)
    mail = last_mail(db, "nobody@example.com")
    assert mail.subject == "Zurücksetzen des Passworts angefordert"
    assert "für diese Adresse gibt es kein Konto" in mail.text


def test_the_consent_page_and_the_recovery_codes_page_are_marked(pseudo_app: Flask) -> None:
    user = _user(pseudo_app)
    secret = enrol_totp(pseudo_app, get_settings(pseudo_app), user)  # recovery codes come with a second factor
    with pseudo_app.app_context():
        db = get_database(pseudo_app).session()
        callback = "https://blog.example.com/callback"
        rp = clients.create_client(db, AuditContext(actor="test"), {"name": "Blog", "redirect_uris": [callback]})
        client_id = rp.client.client_id
        db.commit()
        db.close()
    client = pseudo_app.test_client()
    sign_in_with_totp(client, EMAIL, secret)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": callback,
            "scope": "openid email profile",
            "state": "s1",
            "code_challenge": "c" * 43,
            "code_challenge_method": "S256",
        }
    )
    consent = client.get(f"/oauth2/authorize?{query}", headers=PSEUDO, follow_redirects=True).get_data(as_text=True)
    assert "Blog" in consent and 'name="csrf_token"' in consent  # a third-party app: the user is asked
    assert unmarked_text(consent, allowed=(*DATA, "Blog", "blog.example.com", callback)) == []

    token = csrf_token(client, "/account/mfa")
    codes_page = client.post("/account/mfa/recovery-codes", data={"csrf_token": token}, headers=PSEUDO)
    html = codes_page.get_data(as_text=True)
    codes = re.findall(r"\b[a-z0-9]{5}-[a-z0-9]{5}\b", html)
    assert codes_page.status_code == 200 and codes
    assert unmarked_text(html, allowed=(*DATA, *codes)) == []


def _google(app: Flask, name: str, **values: str) -> None:
    """A Google config offered for sign-in (the catalog's default: a "Continue with …" button)."""
    from tests.support.accounts import make_config  # (test-local: only these tests need a provider config)

    with app.app_context():
        db = get_database(app).session()
        make_config(
            db,
            get_cipher(app),
            get_settings(app),
            "google",
            {"client_id": "123-signin.apps.googleusercontent.com", "client_secret": "GOCSPX-x", **values},
            name=name,
        )
        db.close()


def test_the_sign_in_buttons_default_label_is_translated_and_an_admins_label_is_not(pseudo_app: Flask) -> None:
    _google(pseudo_app, "Google")
    _google(pseudo_app, "Staff Google", button_label="Sign in with Acme SSO")
    html = _page(pseudo_app.test_client(), "/signin")
    assert "⟦Continue with Google⟧" in html
    assert "Sign in with Acme SSO" in html and "⟦Sign in with Acme SSO⟧" not in html  # as the admin typed it
    assert unmarked_text(html, allowed=(*DATA, "Google", "Sign in with Acme SSO")) == []


def test_a_german_browser_reads_the_sign_in_buttons_default_label_in_german(app: Flask, client: FlaskClient) -> None:
    _google(app, "Google")
    html = client.get("/signin", headers=GERMAN).get_data(as_text=True)
    assert "Weiter mit Google" in html and "Continue with Google" not in html
    assert "Continue with Google" in client.get("/signin", headers=ENGLISH).get_data(as_text=True)
