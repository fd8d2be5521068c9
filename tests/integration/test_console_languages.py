"""The admin console, the secure dialogs and the connections page in other languages.

Every page here is rendered in the pseudo-locale (tests/support/i18n.py: each marked message shows as
``⟦message⟧``) with data in it, and what a person reads outside the brackets must be data: names, emails, ids,
codes. Pages on base.html are checked inside ``<main>`` and in their ``<title>``; the top bar and navigation
belong to base.html, which has its own check. The catalog's own words (field labels, help texts, descriptions,
notes) are part of it: the forms translate them when they render. A German admin then sees German.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from app.api import dialog_links, tokens
from app.audit import AuditContext
from app.extensions import get_cipher, get_database, get_settings
from app.idp import clients
from app.models import ConnectedAccount, utcnow
from app.oauth.connections import save_tokens
from app.oauth.tokens import TokenSet
from app.providers.registry import get_catalog
from app.services import webhooks
from app.settings import Settings
from tests.conftest import UserFactory, make_settings, sign_in
from tests.support.accounts import make_account, make_config
from tests.support.i18n import pseudo_translations, unmarked_text, use_pseudo_locale

ADMIN = "admin@example.com"
MEMBER = "member@example.com"
CMS = "https://cms.example.com"
CTX = AuditContext(actor="test")
# Data or notation on every page: the product's name, the time zone, the catalog's product names and auth modes
# (brands and identifiers), signing algorithms.
COMMON = (
    "AMI Auth",
    "UTC",
    *(provider.display_name for provider in get_catalog()),
    *{provider.auth_mode for provider in get_catalog()},
    "ES256",
    "RS256",
)


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """Languages do not depend on the database: SQLite only."""
    return sqlite_url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_CMS_ORIGINS=CMS)


@pytest.fixture(scope="session")
def pseudo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pseudo_translations(tmp_path_factory.mktemp("pseudo"))


@pytest.fixture
def pseudo(app: Flask, pseudo_dir: Path) -> Flask:
    use_pseudo_locale(app, pseudo_dir)
    return app


def _seed(app: Flask, make_user: UserFactory) -> dict[str, Any]:
    """An admin and a member, an OpenAI config with an account, a Google config, a service token, a webhook
    endpoint, an app, and the audit events all this leaves: every list has rows and every detail page exists."""
    admin = make_user(ADMIN, role="admin", display_name="Ada Admin")
    member = make_user(MEMBER, display_name="Max Member")
    settings = get_settings(app)
    cipher = get_cipher(app)
    with app.app_context():
        db: Session = get_database(app).session()
        openai = make_config(db, cipher, settings, "openai", {"rotation_days": 90}, name="OpenAI (staff)")
        account = make_account(db, openai, {"environment": "production"}, label="OpenAI prod")
        google = make_config(
            db,
            cipher,
            settings,
            "google",
            {
                "client_id": "123-console.apps.googleusercontent.com",
                "client_secret": "GOCSPX-x",
                "scopes": "openid",
                "end_users_connect": True,
            },
            name="Google (staff)",
        )
        # The admin's own Google account on the connections page: connected, with a failed refresh to explain.
        connected = ConnectedAccount(
            provider_config_id=google.id,
            user_id=admin.id,
            label="ada@gmail.example",
            subject="1234",
            scopes=["openid", "email"],
            expires_at=utcnow() + timedelta(hours=1),
            rotated_at=utcnow(),
            last_error_code="provider_unreachable",
            last_error_at=utcnow(),
            error_attempts=2,
            next_attempt_at=utcnow() + timedelta(minutes=5),
        )
        db.add(connected)
        db.flush()
        save_tokens(db, cipher, connected.id, TokenSet("at", expires_at=connected.expires_at, refresh_token="rt"))
        tokens.create_token(db, CTX, name="CMS production", scopes=["accounts:read"], created_by=admin.id)
        endpoint = webhooks.create_endpoint(
            db, settings, cipher, CTX, url="http://127.0.0.1:9/hooks", events=["account.connected"]
        )
        app_client = clients.create_client(
            db,
            CTX,
            {"name": "CMS", "client_type": "confidential", "redirect_uris": ["https://cms.example.com/cb"]},
        )
        link = dialog_links.issue(
            db, settings, CTX, kind="replace_secret", target_id=account.id, return_to=f"{CMS}/settings"
        )
        connect = dialog_links.issue_connect(
            db, settings, CTX, provider_config_id=google.id, user_id=admin.id, return_to=f"{CMS}/settings"
        )
        db.commit()
        seeded = {
            "admin": admin.id,
            "member": member.id,
            "openai": openai.id,
            "google": google.id,
            "account": account.id,
            "connected": connected.id,
            "endpoint": endpoint.endpoint.id,
            "client": app_client.client.client_id,
            "dialog": parse_qs(urlsplit(link.url).query)["dialog"][0],
            "connect": parse_qs(urlsplit(connect.url).query)["dialog"][0],
        }
    return seeded


_INNERMOST = re.compile("⟦[^⟦⟧]*⟧")
_TAG = re.compile(r"<[^>]*>")
_AUDIT_ROW = re.compile(r'<tr class="outcome-[^"]*">.*?</tr>', re.S)
_BADGE = re.compile(r'<span class="badge[^"]*">[^<]*</span>')


def _flattened(html: str) -> str:
    """A marked message may hold markup (a link, <code>, <strong>): drop the tags inside each ⟦…⟧, so the
    message reads as one piece of text (tests/support/i18n.py reads text node by text node)."""
    held: list[str] = []

    def hold(match: re.Match[str]) -> str:
        held.append(_TAG.sub("", match.group(0)))
        return f"\x00{len(held) - 1}\x00"

    while True:
        flat = _INNERMOST.sub(hold, html)
        if flat == html:
            break
        html = flat
    while "\x00" in html:
        html = re.sub("\x00(\\d+)\x00", lambda m: held[int(m.group(1))], html)
    return html


def _shown(html: str) -> str:
    """A console page's own part: its <title> and its <main> (base.html's bar and navigation are not in it).
    An audit row is data (actor, action, target, details) but for its outcome."""
    title = re.search(r"<title>(.*?)</title>", html, re.S)
    main = re.search(r"<main\b.*?</main>", html, re.S)
    assert title is not None and main is not None
    own = _AUDIT_ROW.sub(lambda row: "".join(_BADGE.findall(row.group(0))), main.group(0))
    return _flattened(f"<p>{title.group(1)}</p>{own}")


def _pages(s: dict[str, Any]) -> list[str]:
    return [
        "/admin/",
        "/admin/audit",
        "/admin/users",
        "/admin/users/new",
        f"/admin/users/{s['member']}",
        f"/admin/users/{s['member']}/delete",
        "/admin/outbox",
        "/admin/providers/",
        "/admin/providers/new",
        "/admin/providers/new/openai",
        "/admin/providers/new/google",
        "/admin/providers/new/smtp",
        f"/admin/providers/{s['openai']}",
        f"/admin/providers/{s['google']}",
        f"/admin/providers/{s['google']}/oauth",
        f"/admin/providers/{s['openai']}/delete",
        "/admin/accounts/",
        "/admin/accounts/new",
        f"/admin/accounts/new/{s['openai']}",
        f"/admin/accounts/{s['account']}",
        f"/admin/accounts/{s['account']}/edit",
        f"/admin/accounts/{s['account']}/delete",
        "/admin/tokens/",
        "/admin/clients/",
        "/admin/clients/new",
        f"/admin/clients/{s['client']}",
        "/admin/webhooks/",
        f"/admin/webhooks/{s['endpoint']}",
        "/admin/compliance/",
        "/account/connections/",
        f"/account/connections/{s['connected']}/disconnect",
    ]


# Data each page shows: what the seed named, ids and codes from the catalog and the audit log.
DATA = (
    ADMIN,
    MEMBER,
    "Ada Admin",
    "Max Member",
    "OpenAI (staff)",
    "OpenAI prod",
    "Google (staff)",
    "CMS production",
    "ada@gmail.example",
    "provider_unreachable",
    "google",
    "CMS",
    "production",
    "http://127.0.0.1:9/hooks",
    "https://cms.example.com/cb",
    "https://api.openai.com",
    "http://localhost/oauth/",
    "openid",
    "email",
    "profile",
    "account.connected",
    "accounts:read",
    "member",
    "admin",
)
# Audit actions, targets and detail keys are identifiers (provider_config.create, user:1, rotation_days); URLs
# and a token's shown prefix (amis_Ab3dE…) are data too.
IDENTIFIER = re.compile(r"^([\w.:-]*[_.:][\w.:-]*|https?://\S+|[\w-]+…)$")


def _allowed(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """Longest first, so "OpenAI (staff)" goes before "OpenAI" does."""
    return tuple(sorted({text for group in groups for text in group}, key=len, reverse=True))


def _unmarked(html: str, *extra: str, whole: bool = False) -> list[str]:
    """What the page shows outside every marked message, less data (``extra``: this run's ids). ``whole``: a
    page on its own layout (the secure dialogs), read top to bottom."""
    shown = _flattened(html) if whole else _shown(html)
    found = unmarked_text(shown, allowed=_allowed(COMMON, DATA, extra))
    return [text for text in found if not all(IDENTIFIER.match(word) for word in text.split())]


def test_every_console_page_marks_its_words(
    pseudo: Flask, client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    seeded = _seed(pseudo, make_user)
    sign_in(client, ADMIN)
    found, pages = {}, {}
    for path in _pages(seeded):
        response = client.get(path, headers={"Accept-Language": "eo"})
        assert response.status_code == 200, path
        html = response.get_data(as_text=True)
        assert '<html lang="eo">' in html, path
        if words := _unmarked(html, seeded["client"]):
            found[path] = words
        pages[path] = html
    assert found == {}
    # The pages had their data in them: the connected account with its failed refresh, the API-key account.
    connections = pages["/account/connections/"]
    assert "ada@gmail.example" in connections
    assert "⟦The last refresh failed; it is retried automatically.⟧" in connections
    assert "OpenAI prod" in pages[f"/admin/accounts/{seeded['account']}"]


def test_the_secure_dialogs_mark_their_words(
    pseudo: Flask, client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    seeded = _seed(pseudo, make_user)
    eo = {"Accept-Language": "eo"}
    # Not signed in: the CMS dialog asks to sign in first; a bad link says so and sends nobody anywhere.
    signin = client.get(f"/dialogs/cms?dialog={seeded['dialog']}", headers=eo)
    assert signin.status_code == 401
    bogus = client.get("/dialogs/cms?dialog=not-a-link", headers=eo)
    assert bogus.status_code == 404
    sign_in(client, ADMIN)
    secret = client.get(f"/dialogs/accounts/{seeded['account']}/secret", headers=eo)
    cms = client.get(f"/dialogs/cms?dialog={seeded['dialog']}", headers=eo)
    oauth = client.get(f"/dialogs/cms?dialog={seeded['connect']}", headers=eo)
    assert secret.status_code == 200 and cms.status_code == 200 and oauth.status_code == 200
    assert "⟦Continue to Google⟧" in oauth.get_data(as_text=True)
    found = {
        name: words
        for name, response in (
            ("signin", signin),
            ("unknown", bogus),
            ("secret", secret),
            ("cms", cms),
            ("connect with Google", oauth),
        )
        if (words := _unmarked(response.get_data(as_text=True), whole=True))
    }
    assert found == {}


def test_a_test_result_in_the_dialog_is_marked(
    pseudo: Flask, client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    """The test panel after a refused key: the blamed field, by its translated label."""
    seeded = _seed(pseudo, make_user)
    sign_in(client, ADMIN)
    path = f"/dialogs/accounts/{seeded['account']}/secret"
    page = client.get(path, headers={"Accept-Language": "eo"}).get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert token is not None
    response = client.post(
        path + "/test",
        data={"csrf_token": token.group(1), "api_key": "not-a-key"},
        headers={"Accept-Language": "eo", "HX-Request": "true"},
    )
    html = response.get_data(as_text=True)
    assert "⟦API key⟧" in html
    assert _unmarked(html, whole=True) == []


def test_a_german_admin_sees_the_console_and_the_catalog_in_german(
    client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    make_user(ADMIN, role="admin")
    sign_in(client, ADMIN)
    de = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}
    listing = client.get("/admin/providers/", headers=de).get_data(as_text=True)
    assert '<html lang="de">' in listing
    assert "<h1>Anbieter</h1>" in listing and "Anbieter hinzufügen" in listing
    assert "Noch keine Anbieter." in listing
    form = client.get("/admin/providers/new/openai", headers=de).get_data(as_text=True)
    # The catalog's words: the type's description and a field's label and help, in German.
    assert "API-Schlüssel für die OpenAI-Plattform" in form
    assert "Rotationserinnerung (Tage)" in form
    assert "Endbenutzer ihre eigenen Konten verbinden lassen" in form
    english = client.get("/admin/providers/new/openai").get_data(as_text=True)
    assert "API keys for the OpenAI platform" in english


# A registration the Apps form refuses: an ftp:// redirect URI (the rules of app.idp.clients blame that field).
REFUSED_APP = {
    "name": "CMS",
    "client_type": "confidential",
    "auth_method": "client_secret_basic",
    "redirect_uris": "ftp://cms.example.com/cb",
    "grant_types": ["authorization_code", "refresh_token"],
    "scopes": "openid profile",
    "require_pkce": "y",
    "id_token_alg": "ES256",
    "access_token_ttl": "600",
    "refresh_token_ttl": "2592000",
    "id_token_ttl": "3600",
    "enabled": "y",
}


def _refused_app(client: FlaskClient, headers: dict[str, str], **changed: str) -> str:
    page = client.get("/admin/clients/new", headers=headers).get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert token is not None
    response = client.post(
        "/admin/clients/new", data={**REFUSED_APP, **changed, "csrf_token": token.group(1)}, headers=headers
    )
    assert response.status_code == 422
    return response.get_data(as_text=True)


def test_a_refused_apps_form_is_marked(pseudo: Flask, client: FlaskClient, make_user: UserFactory, db: Session) -> None:
    """The field errors of app.idp.clients on the console's Apps form: a bad redirect URI, a TTL out of range."""
    make_user(ADMIN, role="admin")
    sign_in(client, ADMIN)
    eo = {"Accept-Language": "eo"}
    html = _refused_app(client, eo)
    assert (
        'data-field="redirect_uris">⟦&#39;ftp://cms.example.com/cb&#39; must be an absolute https:// address.⟧' in html
    )
    assert _unmarked(html, "ftp://cms.example.com/cb") == []
    html = _refused_app(client, eo, redirect_uris="https://cms.example.com/cb", access_token_ttl="5")
    assert 'data-field="access_token_ttl">⟦Enter between 60 and ' in html
    assert _unmarked(html) == []


def test_a_german_admin_reads_the_apps_form_errors_in_german(
    client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    make_user(ADMIN, role="admin")
    sign_in(client, ADMIN)
    de = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}
    html = _refused_app(client, de)
    assert "&#39;ftp://cms.example.com/cb&#39; muss eine absolute https://-Adresse sein." in html
    html = _refused_app(client, de, redirect_uris="https://cms.example.com/cb", scopes="profile")
    assert "Nehmen Sie openid auf: Apps, die Personen anmelden, benötigen es." in html
    english = _refused_app(client, {})
    assert "&#39;ftp://cms.example.com/cb&#39; must be an absolute https:// address." in english


def test_a_german_admin_reads_a_members_sessions_devices_in_german(
    app: Flask, client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    make_user(ADMIN, role="admin")
    member = make_user(MEMBER)
    browser = app.test_client()
    browser.environ_base["HTTP_USER_AGENT"] = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"
    assert sign_in(browser, MEMBER).status_code == 302
    sign_in(client, ADMIN)
    html = client.get(f"/admin/users/{member.id}", headers={"Accept-Language": "de-DE,de;q=0.9"}).get_data(as_text=True)
    assert "Firefox unter Linux" in html and "Firefox on Linux" not in html
