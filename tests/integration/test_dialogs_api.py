"""``POST /api/account-manager/dialogs`` and the dialog pages it links to, on SQLite and PostgreSQL: scopes per
kind, the return_to allow-list, hashed single-use links (reuse, expiry, another session), sign-in guidance,
and Save / Cancel returning to the CMS with the outcome — for each kind of dialog."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import create_app
from app.api import tokens
from app.audit import AuditContext
from app.extensions import get_cipher, get_settings
from app.models import AuditEvent, ConnectedAccount, DialogToken, ProviderConfig, StoredSecret, utcnow
from app.providers import configs
from app.providers.registry import entry
from app.settings import Settings
from app.vault import get_secret
from tests.conftest import PASSWORD, UserFactory, dispose_app, make_settings, sign_in
from tests.support.accounts import csrf_of, make_account, make_config
from tests.support.vendors.anthropic import Anthropic

pytest_plugins = ("tests.support.vendor_fixtures",)

PATH = "/api/account-manager/dialogs"
CMS = "https://cms.example.com"
RETURN_TO = f"{CMS}/settings/ai?tab=keys"
ADMIN = "root@example.com"
GOOGLE_ID = "1234567890-abcdefghijklmnop.apps.googleusercontent.com"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_CMS_ORIGINS=f"{CMS},http://localhost:3000")


def _token(db: Session, *scopes: str) -> dict[str, str]:
    raw = tokens.create_token(db, AuditContext(actor="test"), name="CMS", scopes=list(scopes), created_by=None).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def cms(db: Session) -> dict[str, str]:
    return _token(db, "accounts:write", "providers:write")


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error: dict[str, Any] = response.get_json()["error"]
    assert error["code"] == code
    return error


def _anthropic_config(app: Flask, db: Session) -> ProviderConfig:
    return make_config(db, get_cipher(app), get_settings(app), "anthropic", {})


def _dialog(client: FlaskClient, auth: dict[str, str], **body: Any) -> str:
    response = client.post(PATH, json={"return_to": RETURN_TO, **body}, headers=auth)
    assert response.status_code == 201, response.get_data(as_text=True)
    url: str = response.get_json()["url"]
    return url


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _admin(app: Flask, make_user: UserFactory, email: str = ADMIN) -> FlaskClient:
    make_user(email, role="admin")
    browser = app.test_client()
    assert sign_in(browser, email).status_code == 302
    return browser


def _form(html: str, action_contains: str) -> str:
    """The form action (or a button's formaction) that contains ``action_contains`` (HTML-unescaped)."""
    for action in re.findall(r'<form[^>]*\saction="([^"]+)"|formaction="([^"]+)"', html):
        action = "".join(action)
        action = action.replace("&amp;", "&")
        if action_contains in action:
            return action
    raise AssertionError(f"no form posting to …{action_contains}… in the page")


def _returned(response: Any) -> dict[str, list[str]]:
    """The CMS URL a Save/Cancel redirected to, as query parameters (after checking where it points)."""
    assert response.status_code == 303, response.get_data(as_text=True)[:600]
    target = response.headers["Location"]
    assert target.startswith(f"{CMS}/settings/ai?")
    return parse_qs(urlsplit(target).query)


# --- the API ------------------------------------------------------------------------------------------------


def test_a_dialog_url_is_short_lived_and_stored_hashed(
    app: Flask, client: FlaskClient, db: Session, cms: dict[str, str]
) -> None:
    cfg = _anthropic_config(app, db)
    response = client.post(
        PATH, json={"kind": "add_account", "provider_config_id": cfg.id, "return_to": RETURN_TO}, headers=cms
    )
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"url", "expires_at"}
    url = urlsplit(body["url"])
    assert f"{url.scheme}://{url.netloc}" == get_settings(app).base_url and url.path == "/dialogs/cms"
    raw = parse_qs(url.query)["dialog"][0]
    [record] = db.scalars(select(DialogToken)).all()
    assert record.token_hash == hashlib.sha256(raw.encode()).hexdigest()
    columns = [str(getattr(record, c.key)) for c in DialogToken.__table__.columns]
    assert all(raw not in value for value in columns)
    assert timedelta(minutes=9) < record.expires_at - utcnow() <= timedelta(minutes=10)
    assert record.kind == "add_account" and record.provider_config_id == cfg.id and record.return_to == RETURN_TO
    [event] = db.scalars(select(AuditEvent).where(AuditEvent.action == "dialog.issue")).all()
    assert event.actor.startswith("service_token:") and raw not in str(event.details)
    assert event.details["return_origin"] == CMS


def test_each_kind_needs_its_scope(app: Flask, client: FlaskClient, db: Session, make_user: UserFactory) -> None:
    cfg = _anthropic_config(app, db)
    google = configs.create_config(
        db,
        get_cipher(app),
        get_settings(app),
        AuditContext(actor="test"),
        entry("google"),
        "Google",
        {"client_id": GOOGLE_ID},
    )
    db.commit()
    accounts_only = _token(db, "accounts:write")
    providers_only = _token(db, "providers:write")
    add = {"kind": "add_account", "provider_config_id": cfg.id, "return_to": RETURN_TO}
    edit = {"kind": "edit_provider_config", "provider_config_id": google.id, "return_to": RETURN_TO}
    error = _error(client.post(PATH, json=add, headers=providers_only), 403, "permission_denied")
    assert "'accounts:write'" in error["message"]
    error = _error(client.post(PATH, json=edit, headers=accounts_only), 403, "permission_denied")
    assert "'providers:write'" in error["message"]
    assert client.post(PATH, json=add, headers=accounts_only).status_code == 201
    assert client.post(PATH, json=edit, headers=providers_only).status_code == 201
    assert client.post(PATH, json=add).status_code == 401
    make_user("ann@example.com")
    sign_in(client, "ann@example.com")
    csrf = client.get("/api/auth/session").get_json()["csrf_token"]
    _error(client.post(PATH, json=add, headers={"X-CSRFToken": csrf}), 403, "permission_denied")


@pytest.mark.parametrize(
    "return_to",
    [
        "https://evil.example/settings",
        "https://cms.example.com.evil.example/",
        "https://cms.example.com@evil.example/",
        "https://cms.example.comevil/",
        "http://cms.example.com/settings",  # another scheme is another origin
        "https://cms.example.com:8443/settings",  # and so is another port
        "https://CMS.example.com/settings",  # exactly as configured
        "https://cms.example.com/settings#top",
        "https://cms.example.com/a b",
        "https://cms.example.com/\u00e9",
        "/settings",
        "javascript:alert(1)",
        "",
    ],
)
def test_return_to_must_start_with_a_cms_origin_exactly(
    app: Flask, client: FlaskClient, db: Session, cms: dict[str, str], return_to: str
) -> None:
    cfg = _anthropic_config(app, db)
    response = client.post(
        PATH, json={"kind": "add_account", "provider_config_id": cfg.id, "return_to": return_to}, headers=cms
    )
    error = _error(response, 422, "validation_failed")
    assert set(error["fields"]) == {"return_to"}
    assert db.scalars(select(DialogToken)).all() == []


def test_return_to_accepts_each_configured_origin_with_any_path_or_query(
    app: Flask, client: FlaskClient, db: Session, cms: dict[str, str]
) -> None:
    cfg = _anthropic_config(app, db)
    for return_to in (CMS, f"{CMS}/", f"{CMS}?x=1", "http://localhost:3000/a/b?c=d&e=f"):
        body = {"kind": "add_account", "provider_config_id": cfg.id, "return_to": return_to}
        assert client.post(PATH, json=body, headers=cms).status_code == 201, return_to
    # The OpenAPI document states the allow-list as the schema of return_to.
    schema = client.get("/api/openapi.json").get_json()["components"]["schemas"]["DialogReturnTo"]
    assert re.fullmatch(schema["pattern"], RETURN_TO) and not re.fullmatch(schema["pattern"], "https://evil.example/")


def test_targets_must_exist_and_fit_the_kind(
    app: Flask, client: FlaskClient, db: Session, cms: dict[str, str], anthropic_standin: Anthropic
) -> None:
    cfg = _anthropic_config(app, db)
    account = make_account(db, cfg, {"base_url": anthropic_standin.url})
    oidc = ProviderConfig(provider_type="generic_oidc", name="Corp", enabled=True, config={})
    off = ProviderConfig(provider_type="openai", name="Off", enabled=False, config={})
    db.add_all([oidc, off])
    db.commit()
    oauth_account = ConnectedAccount(provider_config_id=oidc.id, label="alice")
    db.add(oauth_account)
    db.commit()

    def post(**body: Any) -> Any:
        return client.post(PATH, json={"return_to": RETURN_TO, **body}, headers=cms)

    _error(post(kind="add_account", provider_config_id=9999), 404, "not_found")
    _error(post(kind="replace_secret", account_id=9999), 404, "not_found")
    assert (
        "provider_config_id" in _error(post(kind="add_account", provider_config_id=oidc.id), 409, "conflict")["fields"]
    )
    assert "disabled" in _error(post(kind="add_account", provider_config_id=off.id), 409, "conflict")["message"]
    assert "account_id" in _error(post(kind="replace_secret", account_id=oauth_account.id), 409, "conflict")["fields"]
    _error(post(kind="edit_provider_config", provider_config_id=cfg.id), 409, "conflict")  # no secret fields
    assert post(kind="replace_secret", account_id=account.id).status_code == 201
    wrong = _error(post(kind="add_account", account_id=account.id), 422, "validation_failed")
    assert set(wrong["fields"]) == {"account_id", "provider_config_id"}
    _error(post(kind="steal"), 422, "validation_failed")
    _error(post(kind="add_account", provider_config_id=True), 422, "validation_failed")
    _error(client.post(PATH, json={"kind": "add_account"}, headers=cms), 422, "validation_failed")


# --- the pages: add an account -------------------------------------------------------------------------------


def test_add_account_dialog_saves_a_verified_key_and_returns_to_the_cms(
    app: Flask,
    client: FlaskClient,
    db: Session,
    cms: dict[str, str],
    make_user: UserFactory,
    anthropic_standin: Anthropic,
) -> None:
    cfg = _anthropic_config(app, db)
    url = _dialog(client, cms, kind="add_account", provider_config_id=cfg.id)
    browser = _admin(app, make_user)
    page = browser.get(_path(url))
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    # Frameable by the CMS origins only; Save and Cancel leave the frame.
    csp = page.headers["Content-Security-Policy"]
    assert f"frame-ancestors {CMS} http://localhost:3000" in csp and "X-Frame-Options" not in page.headers
    assert re.search(r'<form[^>]*id="dialog-form"[^>]*target="_top"|<form[^>]*target="_top"[^>]*id="dialog-form"', html)
    assert 'target="_top"' in html.split("dialog-cancel")[0].rsplit("<form", 1)[1]
    assert "<script>" not in html and "API key" in html
    key = anthropic_standin.add_key()
    data = {"csrf_token": csrf_of(html), "label": "Claude (CMS)", "api_key": key, "base_url": anthropic_standin.url}
    data.update({"region": "global", "anthropic_version": "2023-06-01"})
    # "Test connection" (htmx) answers the result panel only and stores nothing.
    panel = browser.post(_form(html, "/dialogs/cms/test"), data=data, headers={"HX-Request": "true"})
    assert 'data-code="ok"' in panel.get_data(as_text=True) and "<html" not in panel.get_data(as_text=True)
    assert db.scalars(select(ConnectedAccount)).all() == []
    saved = browser.post(_form(html, "/dialogs/cms?"), data=data)
    query = _returned(saved)
    assert query["status"] == ["saved"] and query["tab"] == ["keys"]
    account_id = int(query["account"][0])
    account = db.get(ConnectedAccount, account_id)
    assert account is not None and account.status == "active" and account.label == "Claude (CMS)"
    stored = get_secret(db, get_cipher(app), "connected_account", account_id, "api_key")
    assert stored is not None and stored.reveal() == key
    # The link is spent: a second use shows an error page and redirects nowhere.
    again = browser.get(_path(url))
    assert again.status_code == 410 and "Location" not in again.headers
    assert "already been used" in again.get_data(as_text=True)
    assert browser.post(_form(html, "/dialogs/cms?"), data=data).status_code == 410
    assert len(db.scalars(select(ConnectedAccount)).all()) == 1
    record = db.scalars(select(DialogToken)).one()
    db.refresh(record)
    assert record.outcome == "saved" and record.result_account_id == account_id and record.used_at is not None
    actions = [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert {"dialog.issue", "dialog.open", "account.create", "account.secret.set", "dialog.saved"} <= set(actions)
    assert "dialog.refused" in actions


def test_a_refused_key_saves_nothing_and_the_dialog_stays_open(
    app: Flask,
    client: FlaskClient,
    db: Session,
    cms: dict[str, str],
    make_user: UserFactory,
    anthropic_standin: Anthropic,
) -> None:
    cfg = _anthropic_config(app, db)
    url = _dialog(client, cms, kind="add_account", provider_config_id=cfg.id)
    browser = _admin(app, make_user)
    html = browser.get(_path(url)).get_data(as_text=True)
    wrong = "sk-ant-api03-not-a-key-the-provider-knows"
    data = {"csrf_token": csrf_of(html), "api_key": wrong, "base_url": anthropic_standin.url}
    data.update({"region": "global", "anthropic_version": "2023-06-01"})
    refused = browser.post(_form(html, "/dialogs/cms?"), data=data)
    assert refused.status_code == 401 and "Location" not in refused.headers
    page = refused.get_data(as_text=True)
    assert 'data-code="invalid_credentials"' in page and wrong not in page
    assert db.scalars(select(ConnectedAccount)).all() == []
    assert db.scalars(select(StoredSecret)).all() == []
    # Same session, same link: it is still usable for the retry.
    data["api_key"] = anthropic_standin.add_key()
    assert _returned(browser.post(_form(html, "/dialogs/cms?"), data=data))["status"] == ["saved"]


def test_cancel_spends_the_link_and_returns_cancelled(
    app: Flask, client: FlaskClient, db: Session, cms: dict[str, str], make_user: UserFactory
) -> None:
    cfg = _anthropic_config(app, db)
    url = _dialog(client, cms, kind="add_account", provider_config_id=cfg.id)
    browser = _admin(app, make_user)
    html = browser.get(_path(url)).get_data(as_text=True)
    cancel = _form(html, "/dialogs/cms/cancel")
    forged = browser.post(cancel, data={})
    assert forged.status_code == 400
    query = _returned(browser.post(cancel, data={"csrf_token": csrf_of(html)}))
    assert query["status"] == ["cancelled"] and "account" not in query
    assert browser.get(_path(url)).status_code == 410
    assert db.scalars(select(ConnectedAccount)).all() == []


# --- the pages: who may open a link --------------------------------------------------------------------------


def test_without_a_session_the_dialog_offers_a_top_level_sign_in_that_comes_back(
    app: Flask, client: FlaskClient, db: Session, cms: dict[str, str], make_user: UserFactory
) -> None:
    cfg = _anthropic_config(app, db)
    url = _dialog(client, cms, kind="add_account", provider_config_id=cfg.id)
    anonymous = app.test_client()
    page = anonymous.get(_path(url))
    assert page.status_code == 401 and "frame-ancestors " + CMS in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    link = re.search(r'<a[^>]*href="([^"]+)"[^>]*target="_top"[^>]*id="dialog-signin"', html)
    assert link is not None
    signin = link.group(1).replace("&amp;", "&")
    assert signin.startswith("/signin?next=")
    # Unclaimed: signing in and following `next` opens the very same link.
    make_user(ADMIN, role="admin")
    form = anonymous.get(signin).get_data(as_text=True)
    done = anonymous.post(signin, data={"email": ADMIN, "password": PASSWORD, "csrf_token": csrf_of(form)})
    assert done.status_code == 302 and done.headers["Location"] == _path(url)
    assert "Add an account" in anonymous.get(done.headers["Location"]).get_data(as_text=True)


def test_a_link_belongs_to_the_first_admin_session_that_opens_it(
    app: Flask, client: FlaskClient, db: Session, cms: dict[str, str], make_user: UserFactory
) -> None:
    cfg = _anthropic_config(app, db)
    url = _dialog(client, cms, kind="add_account", provider_config_id=cfg.id)
    make_user("ann@example.com")
    member = app.test_client()
    sign_in(member, "ann@example.com")
    refused = member.get(_path(url))
    assert refused.status_code == 403 and "for administrators" in refused.get_data(as_text=True)
    first = _admin(app, make_user)
    assert first.get(_path(url)).status_code == 200
    assert first.get(_path(url)).status_code == 200  # a reload in the same session is fine
    second = _admin(app, make_user, "other-admin@example.com")
    elsewhere = second.get(_path(url))
    assert elsewhere.status_code == 409 and "another browser session" in elsewhere.get_data(as_text=True)
    assert "Location" not in elsewhere.headers


def test_expired_unknown_and_disallowed_links_show_an_error_page_and_redirect_nowhere(
    app: Flask,
    client: FlaskClient,
    db: Session,
    cms: dict[str, str],
    make_user: UserFactory,
    tmp_path: Path,
    database_url: str,
) -> None:
    cfg = _anthropic_config(app, db)
    url = _dialog(client, cms, kind="add_account", provider_config_id=cfg.id)
    browser = _admin(app, make_user)
    record = db.scalars(select(DialogToken)).one()
    record.expires_at = utcnow() - timedelta(seconds=1)
    db.commit()
    expired = browser.get(_path(url))
    assert expired.status_code == 410 and "has expired" in expired.get_data(as_text=True)
    assert "Location" not in expired.headers and CMS not in expired.get_data(as_text=True)
    unknown = browser.get("/dialogs/cms?dialog=" + "A" * 43)
    assert unknown.status_code == 404 and "not valid" in unknown.get_data(as_text=True)
    assert browser.get("/dialogs/cms").status_code == 404
    # The allow-list changed after the link was issued: the page refuses to send anyone to the old origin.
    url = _dialog(client, cms, kind="add_account", provider_config_id=cfg.id)
    narrower = create_app(make_settings(tmp_path, database_url, AMI_AUTH_CMS_ORIGINS="http://localhost:3000"))
    try:
        other = narrower.test_client()
        make_user("third@example.com", role="admin")
        sign_in(other, "third@example.com")
        refused = other.get(_path(url))
        assert refused.status_code == 403 and "Location" not in refused.headers
        assert "no longer in AMI_AUTH_CMS_ORIGINS" in refused.get_data(as_text=True)
    finally:
        dispose_app(narrower)


# --- the pages: replace a secret, a provider config's secrets -----------------------------------------------


def test_replace_secret_dialog_verifies_then_replaces_and_returns_the_account(
    app: Flask,
    client: FlaskClient,
    db: Session,
    cms: dict[str, str],
    make_user: UserFactory,
    anthropic_standin: Anthropic,
) -> None:
    cfg = _anthropic_config(app, db)
    account = make_account(db, cfg, {"base_url": anthropic_standin.url})
    url = _dialog(client, cms, kind="replace_secret", account_id=account.id)
    browser = _admin(app, make_user)
    html = browser.get(_path(url)).get_data(as_text=True)
    assert "Replace the secret" in html and "Test account" in html
    key = anthropic_standin.add_key()
    query = _returned(browser.post(_form(html, "/dialogs/cms?"), data={"csrf_token": csrf_of(html), "api_key": key}))
    assert query == {"status": ["saved"], "account": [str(account.id)], "tab": ["keys"]}
    db.expire_all()
    assert db.get(ConnectedAccount, account.id).status == "active"  # type: ignore[union-attr]
    stored = get_secret(db, get_cipher(app), "connected_account", account.id, "api_key")
    assert stored is not None and stored.reveal() == key


def test_edit_provider_config_dialog_sets_its_secret_so_it_can_be_enabled(
    app: Flask, client: FlaskClient, db: Session, cms: dict[str, str], make_user: UserFactory
) -> None:
    created = client.post(
        "/api/account-manager/provider-configs",
        json={"provider_type": "google", "name": "Google", "config": {"client_id": GOOGLE_ID}},
        headers=cms,
    ).get_json()
    url = _dialog(client, cms, kind="edit_provider_config", provider_config_id=created["id"])
    browser = _admin(app, make_user)
    html = browser.get(_path(url)).get_data(as_text=True)
    assert "Client secret" in html and "Client ID" not in html  # its secret fields only
    assert "/dialogs/cms/test" not in html
    empty = browser.post(_form(html, "/dialogs/cms?"), data={"csrf_token": csrf_of(html), "client_secret": ""})
    assert empty.status_code == 422 and "Location" not in empty.headers
    secret = "GOCSPX-dialog-typed-secret-value"
    saved = browser.post(_form(html, "/dialogs/cms?"), data={"csrf_token": csrf_of(html), "client_secret": secret})
    query = _returned(saved)
    assert query["status"] == ["saved"] and query["provider_config"] == [str(created["id"])]
    enabled = client.patch(
        f"/api/account-manager/provider-configs/{created['id']}",
        json={"enabled": True},
        headers=_token(db, "providers:read", "providers:write"),
    )
    assert enabled.status_code == 200 and secret not in enabled.get_data(as_text=True)
    cfg = db.get(ProviderConfig, created["id"])
    assert cfg is not None
    read = configs.read_secrets(db, get_cipher(app), entry("google"), cfg)["client_secret"]
    assert read is not None and read.reveal() == secret
