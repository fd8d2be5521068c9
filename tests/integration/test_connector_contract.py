"""The connector contract: every catalog entry whose accounts hold an API key or an SMTP login goes through
the same checks, against a local stand-in that speaks the vendor's documented API (tests/support/vendors/)
or a real aiosmtpd server.

Adding a provider type with ``auth_mode: api_key`` (or ``smtp``) adds ONE row to CONNECTORS below; a test
fails until it has one. Generic API keys have a row per ``auth_type``, since each sends the key differently.

Per row: the add-account form renders (non-secret fields only) and the secure dialog asks for the secret
with ``autocomplete="off"``; bad input is rejected on its field; the secret never appears in any page;
save → encrypted in the vault → decrypted for use (headers endpoint) and the stand-in received exactly the
documented headers; verification success and each failure (401, 403, 429 + Retry-After, timeout, DNS
failure, refused connection) maps to its taxonomy code on the right field.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import create_app
from app.connectors.headers import OWNER, clear_cache
from app.extensions import get_cipher, get_database
from app.models import AuditEvent, ConnectedAccount, StoredSecret
from app.providers.registry import get_catalog
from app.providers.types import AuthMode
from app.providers.validation import ValuesByScope, effective_values, visibility
from app.settings import Settings
from app.vault import get_secret
from tests.conftest import dispose_app, make_settings, sign_in
from tests.support.accounts import (
    blamed_fields,
    csrf_of,
    dialog_path,
    field_error,
    headers_token,
    make_account,
    make_config,
    post_dialog,
    reload,
    result_code,
)
from tests.support.live import free_port
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, SmtpServer, TlsFiles, run_smtp_server
from tests.support.vendors.anthropic import Anthropic
from tests.support.vendors.base import StartVendor, Vendor
from tests.support.vendors.generic import GenericApi
from tests.support.vendors.huggingface import HuggingFace
from tests.support.vendors.openai import OpenAI

pytest_plugins = ("tests.support.vendor_fixtures",)

ADMIN = "admin@example.com"
# Every header a connector could send a credential or account setting in (compared as a set, so an
# extra credential header — a key sent twice, or to the wrong header — fails the test too).
WATCHED = ("authorization", "x-api-key", "anthropic-version", "openai-organization", "openai-project", "x-custom-key")


@dataclass(frozen=True)
class Connector:
    provider_id: str
    vendor: Callable[[], Vendor]
    config: Callable[[Vendor], dict[str, Any]]
    account: Callable[[Vendor], dict[str, Any]]
    enroll: Callable[[Vendor], dict[str, str]]  # a working credential, registered at the stand-in
    wrong: dict[str, str]  # well-formed values the stand-in does not know (→ 401)
    malformed: dict[str, str]  # values the field's own rules reject (→ validation, nothing sent)
    bad_detail: tuple[str, str]  # a non-secret field and a value the add-account form rejects
    verify_path: str
    base_field: str  # where "could not reach" errors belong (config.x for a provider-config field)
    expected: Callable[[Vendor, dict[str, str]], tuple[dict[str, str], dict[str, str]]]
    query_param: str | None = None
    extra_secret_fields: tuple[str, ...] = field(default=())


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _openai_enroll(v: Vendor) -> dict[str, str]:
    assert isinstance(v, OpenAI)
    return {"api_key": v.add_key(organization="org-Contract1", projects=["proj_Contract1"])}


def _anthropic_enroll(v: Vendor) -> dict[str, str]:
    assert isinstance(v, Anthropic)
    return {"api_key": v.add_key(workspace_id="wrkspc_contract")}


def _hf_enroll(v: Vendor) -> dict[str, str]:
    assert isinstance(v, HuggingFace)
    v.add_user("alice", fullname="Alice Example", orgs=[("acme-research", "write")])
    return {"api_token": v.add_token("alice", role="write", display_name="cms")}


def _generic_enroll(v: Vendor) -> dict[str, str]:
    assert isinstance(v, GenericApi)
    if v.auth_type == "basic":
        secret = "contract-basic-secret-77"
        return {"api_key": v.add_key(secret=secret), "api_secret": secret}
    return {"api_key": v.add_key()}


def _generic(auth_type: str, **kw: str) -> Connector:
    def expected(v: Vendor, s: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        if auth_type == "bearer":
            return {"authorization": f"Bearer {s['api_key']}"}, {}
        if auth_type == "header":
            return {"x-custom-key": s["api_key"]}, {}
        if auth_type == "basic":
            return {"authorization": _basic(s["api_key"], s["api_secret"])}, {}
        return {}, {"key": s["api_key"]}

    return Connector(
        provider_id="generic_api_key",
        vendor=lambda: GenericApi(auth_type=auth_type, header_name="X-Custom-Key", query_param="key", paths=["/v1/me"]),
        config=lambda v: {"base_url": v.url, "auth_type": auth_type, "verify_path": "/v1/me", **kw},
        account=lambda v: {"label": f"Generic {auth_type}"},
        enroll=_generic_enroll,
        wrong={"api_key": "gk_not_known_here", **({"api_secret": "wrong-secret"} if auth_type == "basic" else {})},
        malformed={"api_key": "has a space"},
        bad_detail=("label", "x" * 201),
        verify_path="/v1/me",
        base_field="config.base_url",
        expected=expected,
        query_param="key" if auth_type == "query" else None,
    )


CONNECTORS: dict[str, Connector] = {
    "openai": Connector(
        provider_id="openai",
        vendor=OpenAI,
        config=lambda v: {"rotation_days": 30},
        account=lambda v: {
            "base_url": v.url,
            "organization_id": "org-Contract1",
            "project_id": "proj_Contract1",
            "environment": "ci",
        },
        enroll=_openai_enroll,
        wrong={"api_key": "sk-proj-not-known-here"},
        malformed={"api_key": "pk-not-an-openai-key"},
        bad_detail=("organization_id", "Acme Corp"),
        verify_path="/v1/models",
        base_field="base_url",
        expected=lambda v, s: (
            {
                "authorization": f"Bearer {s['api_key']}",
                "openai-organization": "org-Contract1",
                "openai-project": "proj_Contract1",
            },
            {},
        ),
    ),
    "anthropic": Connector(
        provider_id="anthropic",
        vendor=Anthropic,
        config=lambda v: {"rotation_days": 60},
        account=lambda v: {"base_url": v.url},
        enroll=_anthropic_enroll,
        wrong={"api_key": "sk-ant-api03-not-known-here"},
        malformed={"api_key": "sk-proj-not-anthropic"},
        bad_detail=("anthropic_version", "June 2023"),
        verify_path="/v1/models",
        base_field="base_url",
        expected=lambda v, s: ({"x-api-key": s["api_key"], "anthropic-version": "2023-06-01"}, {}),
    ),
    "huggingface": Connector(
        provider_id="huggingface",
        vendor=HuggingFace,
        config=lambda v: {"rotation_days": 180},
        account=lambda v: {"base_url": v.url, "required_role": "write", "organization": "acme-research"},
        enroll=_hf_enroll,
        wrong={"api_token": "hf_not_known_here"},
        malformed={"api_token": "not-a-hub-token"},
        bad_detail=("default_repo", "no-slash-here"),
        verify_path="/api/whoami-v2",
        base_field="base_url",
        expected=lambda v, s: ({"authorization": f"Bearer {s['api_token']}"}, {}),
    ),
    "generic_api_key:bearer": _generic("bearer"),
    "generic_api_key:header": _generic("header", header_name="X-Custom-Key"),
    "generic_api_key:basic": _generic("basic"),
    "generic_api_key:query": _generic("query", query_param="key"),
}
ROWS = list(CONNECTORS)
CONNECTABLE = sorted(e.id for e in get_catalog() if e.auth_mode in (AuthMode.API_KEY, AuthMode.SMTP))


def test_every_connectable_catalog_entry_has_a_row() -> None:
    covered = {row.provider_id for row in CONNECTORS.values()} | {"smtp" for _ in SMTP_ROWS}
    assert sorted(covered) == CONNECTABLE


# ------------------------------------------------------------------------------------------- fixtures


def _env(tls: TlsFiles) -> dict[str, str]:
    # No retries and a short timeout: a failure shows at once, and the hang tests stay short. The SMTP
    # test server's certificate comes from a throw-away CA, which the mailer must trust explicitly.
    return {
        "AMI_AUTH_OUTBOUND_TIMEOUT": "1",
        "AMI_AUTH_OUTBOUND_RETRIES": "0",
        "AMI_AUTH_SMTP_CA_FILE": str(tls.ca_file),
    }


@pytest.fixture
def settings(tmp_path: Path, database_url: str, smtp_tls_files: TlsFiles) -> Settings:
    return make_settings(tmp_path, database_url, **_env(smtp_tls_files))


@pytest.fixture
def sqlite_app(tmp_path: Path, sqlite_url: str, smtp_tls_files: TlsFiles) -> Iterator[Flask]:
    """For the failure mapping, which does not depend on the database: SQLite only."""
    application = create_app(make_settings(tmp_path, sqlite_url, **_env(smtp_tls_files)))
    application.config["TESTING"] = True
    yield application
    dispose_app(application)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


def _admin(app: Flask, client: FlaskClient) -> None:
    from app.auth import users
    from tests.conftest import PASSWORD

    with app.app_context():
        db = get_database(app).session()
        users.create_user(
            db, app.extensions["ami_settings"], email=ADMIN, password=PASSWORD, role="admin", verified=True
        )
        db.commit()
    assert sign_in(client, ADMIN).status_code == 302


@dataclass
class Setup:
    app: Flask
    client: FlaskClient
    db: Session
    row: Connector
    vendor: Vendor
    cfg_id: int


def _setup(app: Flask, start_vendor: StartVendor, row_id: str, **config: Any) -> Setup:
    row = CONNECTORS[row_id]
    vendor = start_vendor(row.vendor())
    client = app.test_client()
    _admin(app, client)
    db = Session(get_database(app).engine, expire_on_commit=False)
    cfg = make_config(
        db, get_cipher(app), app.extensions["ami_settings"], row.provider_id, {**row.config(vendor), **config}
    )
    return Setup(app, client, db, row, vendor, cfg.id)


def _pending(s: Setup, **overrides: Any) -> ConnectedAccount:
    from app.models import ProviderConfig

    cfg = s.db.get(ProviderConfig, s.cfg_id)
    assert cfg is not None
    return make_account(s.db, cfg, {**s.row.account(s.vendor), **overrides})


def _auth_seen(vendor: Vendor, path: str) -> tuple[dict[str, str], dict[str, str]]:
    request = vendor.last_request(path)
    return {k: v for k, v in request.headers.items() if k in WATCHED}, dict(request.query)


# ----------------------------------------------------------------------------------- forms and pages


@pytest.mark.parametrize("row_id", ROWS)
def test_add_account_form_asks_only_for_non_secret_fields_then_the_dialog_for_the_secret(
    app: Flask, start_vendor: StartVendor, row_id: str
) -> None:
    s = _setup(app, start_vendor, row_id)
    provider = get_catalog()[s.row.provider_id]  # type: ignore[index]
    html = s.client.get(f"/admin/accounts/new/{s.cfg_id}").get_data(as_text=True)
    for spec in provider.account_fields:
        present = re.search(rf'\bname="{spec.name}"', html) is not None
        if spec.secret:
            assert not present, f"the add-account form must not ask for {spec.name}"
        elif not (spec.visible_when and any(t.scope == "config" for t in spec.visible_when.terms)):
            assert present, f"{spec.name} missing from the add-account form"
    # Submitting it creates a pending account and opens the secure dialog.
    values = s.row.account(s.vendor)
    data = {"csrf_token": csrf_of(html), **{k: str(v) for k, v in values.items()}}
    if "label" not in values:
        data["label"] = "Contract account"
    response = s.client.post(f"/admin/accounts/new/{s.cfg_id}", data=data)
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    assert response.headers["Location"].startswith("/dialogs/accounts/")
    account = s.db.scalars(select(ConnectedAccount)).one()
    assert account.status == "pending" and account.identifiers.get(next(iter(values))) is not None
    dialog = s.client.get(response.headers["Location"])
    page = dialog.get_data(as_text=True)
    assert dialog.status_code == 200
    assert "frame-ancestors" in dialog.headers["Content-Security-Policy"]
    context: ValuesByScope = {"config": effective_values(provider, "config", s.row.config(s.vendor))}
    shown = visibility(provider, "account", effective_values(provider, "account", values), context)
    for spec in provider.secret_fields("account"):
        tag = re.search(rf'<input[^>]*\bname="{spec.name}"[^>]*>', page)
        if not shown[spec.name]:
            assert tag is None, f"the dialog must not ask for the hidden {spec.name}"
            continue
        assert tag is not None, f"the dialog must ask for {spec.name}"
        assert 'type="password"' in tag.group(0) and 'autocomplete="off"' in tag.group(0)
        assert "disabled" not in tag.group(0), f"{spec.name} is rendered hidden"
    assert re.search(r'<form[^>]*method="post"[^>]*autocomplete="off"', page)
    assert "never shown again" in page
    for spec in provider.account_fields:
        if not spec.secret:
            assert not re.search(rf'<input[^>]*\bname="{spec.name}"', page), f"the dialog must not edit {spec.name}"
    s.db.close()


@pytest.mark.parametrize("row_id", ROWS)
def test_bad_input_is_rejected_on_its_field(app: Flask, start_vendor: StartVendor, row_id: str) -> None:
    s = _setup(app, start_vendor, row_id)
    # The add-account form: a bad non-secret value is refused on its field, the rest survives.
    path = f"/admin/accounts/new/{s.cfg_id}"
    values = {k: str(v) for k, v in s.row.account(s.vendor).items()}
    name, bad = s.row.bad_detail
    response = s.client.post(
        path, data={"csrf_token": csrf_of(s.client.get(path).get_data(as_text=True)), **values, name: bad}
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert field_error(html, name), f"no error on {name}"
    for other, value in values.items():
        if other != name and len(value) < 100:
            assert f'value="{value}"' in html or f">{value}<" in html, f"{other} did not survive"
    assert s.db.scalar(select(ConnectedAccount)) is None
    # The secret dialog: a malformed secret is refused on its field, never echoed, and nothing is sent.
    account = _pending(s)
    status, html = post_dialog(s.client, account.id, s.row.malformed)
    assert status == 422
    for secret_name, value in s.row.malformed.items():
        assert field_error(html, secret_name), f"no error on {secret_name}"
        assert value not in html
    assert s.vendor.requests == []
    assert reload(s.app, s.db, account.id).status == "pending"
    s.db.close()


@pytest.mark.parametrize("row_id", ROWS)
def test_save_encrypts_verifies_and_serves_exact_headers_without_rendering_the_secret(
    app: Flask, start_vendor: StartVendor, row_id: str
) -> None:
    s = _setup(app, start_vendor, row_id)
    account = _pending(s)
    secrets = s.row.enroll(s.vendor)
    # Test connection (htmx): a success panel, nothing stored yet.
    status, panel = post_dialog(s.client, account.id, secrets, test=True, htmx=True)
    assert status == 200 and result_code(panel) == "ok", panel
    assert "<html" not in panel
    assert _auth_seen(s.vendor, s.row.verify_path) == s.row.expected(s.vendor, secrets)
    assert s.db.scalar(select(StoredSecret).where(StoredSecret.owner_id == account.id)) is None
    # Save: verified again server-side, then stored.
    status, _html = post_dialog(s.client, account.id, secrets)
    assert status == 302
    assert len(s.vendor.requests_to(s.row.verify_path)) == 2
    account = reload(s.app, s.db, account.id)
    assert account.status == "active" and account.last_verified_at is not None and account.rotated_at is not None
    # Encrypted at rest, decrypted on use.
    cipher = get_cipher(s.app)
    for name, value in secrets.items():
        rows = s.db.scalars(
            select(StoredSecret).where(StoredSecret.owner_type == OWNER, StoredSecret.field == name)
        ).all()
        assert len(rows) == 1 and value.encode() not in rows[0].ciphertext + rows[0].wrapped_key
        stored = get_secret(s.db, cipher, OWNER, account.id, name)
        assert stored is not None and stored.reveal() == value
    # The headers endpoint returns what the vendor expects, and the vendor accepts it.
    body = s.client.get(f"/api/account-manager/accounts/{account.id}/headers", headers=headers_token(s.db)).get_json()
    headers, query = s.row.expected(s.vendor, secrets)
    assert {k.lower(): v for k, v in body["headers"].items() if k.lower() in WATCHED} == headers
    assert body["query"] == query
    # The secret appears in no page the console renders for this account.
    pages = [
        "/admin/accounts/",
        f"/admin/accounts/{account.id}",
        f"/admin/accounts/{account.id}/edit",
        dialog_path(account.id),
    ]
    for page in pages:
        html = s.client.get(page).get_data(as_text=True)
        for value in secrets.values():
            assert value not in html, f"{page} shows a secret"
    events = s.db.scalars(select(AuditEvent).where(AuditEvent.target == f"connected_account:{account.id}")).all()
    actions = [e.action for e in events]
    assert "account.secret.test" in actions and "account.secret.set" in actions
    assert "account.headers.disclosed" in actions
    for event in events:
        for value in secrets.values():
            assert value not in str(event.details)
    s.db.close()


# ------------------------------------------------------------------------------------ failure mapping


@dataclass(frozen=True)
class Failure:
    code: str
    where: str  # "secret": the credential fields; "base": the base URL field; "": no field
    retry_after: int | None = None


FAILURES = ["401", "403", "429", "timeout", "dns", "refused"]


EXPECTED = {
    "401": Failure("invalid_credentials", "secret"),
    "403": Failure("permission_denied", "secret"),
    "429": Failure("rate_limited", "", retry_after=90),
    "timeout": Failure("provider_unreachable", "base"),
    "dns": Failure("provider_unreachable", "base"),
    "refused": Failure("provider_unreachable", "base"),
}


def _unreachable_url(kind: str) -> str | None:
    if kind == "dns":
        return "http://api.contract-test.invalid"  # RFC 6761: .invalid never resolves
    if kind == "refused":
        return f"http://127.0.0.1:{free_port()}"  # nothing listens there
    return None


def _inject(s: Setup, kind: str) -> None:
    """Make the stand-in answer the next verification request with the failure."""
    if kind == "403":
        s.vendor.fail_next(403, path=s.row.verify_path)
    elif kind == "429":
        s.vendor.fail_next(429, path=s.row.verify_path, retry_after=90)
    elif kind == "timeout":
        s.vendor.hang_next(path=s.row.verify_path, seconds=5)


@pytest.mark.parametrize("kind", FAILURES)
@pytest.mark.parametrize("row_id", ROWS)
def test_each_failure_maps_to_its_code_on_the_right_field(
    sqlite_app: Flask, start_vendor: StartVendor, row_id: str, kind: str
) -> None:
    row = CONNECTORS[row_id]
    expected = EXPECTED[kind]
    url = _unreachable_url(kind)
    on_config = url is not None and row.base_field.startswith("config.")
    s = _setup(sqlite_app, start_vendor, row_id, **({"base_url": url} if on_config else {}))
    secrets = s.row.wrong if kind == "401" else s.row.enroll(s.vendor)
    account = _pending(s, **({"base_url": url} if url is not None and not on_config else {}))
    _inject(s, kind)
    status, panel = post_dialog(s.client, account.id, secrets, test=True, htmx=True)
    s.vendor.release()
    assert status == 200
    assert result_code(panel) == expected.code, panel
    blamed = blamed_fields(panel)
    if expected.where == "secret":
        assert blamed and set(blamed) <= set(secrets), blamed
    elif expected.where == "base":
        assert list(blamed) == [row.base_field], blamed
    else:
        assert blamed == {}
    if expected.retry_after is not None:
        assert f'data-retry-after="{expected.retry_after}"' in panel
    for value in secrets.values():
        assert value not in panel
    # Save is refused the same way, with the message on the field, and nothing is stored.
    _inject(s, kind)
    status, page = post_dialog(s.client, account.id, secrets)
    s.vendor.release()
    assert status >= 400 and result_code(page) == expected.code, page
    assert blamed_fields(page) == blamed  # the full page names the same fields as the htmx panel
    for key in blamed:
        if key in secrets:
            assert field_error(page, key), f"no inline error on {key}"
    for value in secrets.values():
        assert value not in page
    assert s.db.scalar(select(StoredSecret).where(StoredSecret.owner_id == account.id)) is None
    assert reload(s.app, s.db, account.id).status == "pending"
    s.db.close()


# ---------------------------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class SmtpRow:
    """One way to reach a real aiosmtpd server (tests/support/smtp.py)."""

    security: str  # the catalog's: starttls | ssl | none
    mechanism: str  # PLAIN | LOGIN
    server: dict[str, Any]  # run_smtp_server options; {"plain": True}: no TLS and no AUTH (a local relay)

    @property
    def login(self) -> bool:
        return not self.server.get("plain")


SMTP_ROWS: dict[str, SmtpRow] = {
    "smtp:starttls-plain": SmtpRow("starttls", "PLAIN", {}),
    "smtp:starttls-login": SmtpRow("starttls", "LOGIN", {"auth_exclude_mechanism": ["PLAIN"]}),
    "smtp:ssl-plain": SmtpRow("ssl", "PLAIN", {"implicit_tls": True}),
    "smtp:none-relay": SmtpRow("none", "PLAIN", {"plain": True}),
}


@contextmanager
def _smtp(row: SmtpRow, tls: TlsFiles) -> Iterator[SmtpServer]:
    if not row.login:
        from aiosmtpd.controller import Controller

        from tests.support.smtp import RecordingHandler

        handler = RecordingHandler()
        server = SmtpServer("127.0.0.1", free_port(), handler)
        controller = Controller(handler, hostname=server.host, port=server.port)
        controller.start()
        try:
            yield server
        finally:
            controller.stop()
        return
    with run_smtp_server(tls, **row.server) as server:
        yield server


def _smtp_config(row: SmtpRow, host: str, port: int) -> dict[str, Any]:
    config: dict[str, Any] = {"host": host, "port": port, "security": row.security}
    if row.security == "none":
        config["allow_insecure"] = True
    return config


def _smtp_account(row: SmtpRow) -> dict[str, Any]:
    account: dict[str, Any] = {
        "from_address": "mailer@example.com",
        "from_name": "AMI Auth",
        "auth_mechanism": row.mechanism,
    }
    if row.login:
        account["username"] = SMTP_USER
    return account


@dataclass
class SmtpSetup:
    app: Flask
    client: FlaskClient
    db: Session
    cfg_id: int


def _smtp_setup(app: Flask, config: dict[str, Any]) -> SmtpSetup:
    client = app.test_client()
    _admin(app, client)
    db = Session(get_database(app).engine, expire_on_commit=False)
    cfg = make_config(db, get_cipher(app), app.extensions["ami_settings"], "smtp", config, name="SMTP test")
    return SmtpSetup(app, client, db, cfg.id)


def _smtp_pending(s: SmtpSetup, values: dict[str, Any]) -> ConnectedAccount:
    from app.models import ProviderConfig

    cfg = s.db.get(ProviderConfig, s.cfg_id)
    assert cfg is not None
    return make_account(s.db, cfg, values, label="Mailer")


@pytest.mark.parametrize("row_id", list(SMTP_ROWS))
def test_smtp_forms_save_and_round_trip(app: Flask, smtp_tls_files: TlsFiles, row_id: str) -> None:
    row = SMTP_ROWS[row_id]
    with _smtp(row, smtp_tls_files) as server:
        s = _smtp_setup(app, _smtp_config(row, server.host, server.port))
        html = s.client.get(f"/admin/accounts/new/{s.cfg_id}").get_data(as_text=True)
        assert re.search(r'\bname="from_address"', html) and not re.search(r'\bname="password"', html)
        # A bad from address is refused on its field.
        values = {k: str(v) for k, v in _smtp_account(row).items()}
        bad = s.client.post(
            f"/admin/accounts/new/{s.cfg_id}", data={"csrf_token": csrf_of(html), **values, "from_address": "nope"}
        )
        assert bad.status_code == 422 and "email address" in field_error(bad.get_data(as_text=True), "from_address")
        account = _smtp_pending(s, _smtp_account(row))
        dialog = s.client.get(dialog_path(account.id)).get_data(as_text=True)
        tag = re.search(r'<input[^>]*\bname="password"[^>]*>', dialog)
        assert tag is not None and 'type="password"' in tag.group(0) and 'autocomplete="off"' in tag.group(0)
        assert "disabled" not in tag.group(0)
        # A password with a line break is refused on the field and never echoed.
        status, page = post_dialog(s.client, account.id, {"password": "line one\nline two"})
        assert status == 422 and field_error(page, "password") and "line one" not in page
        secrets = {"password": SMTP_PASSWORD} if row.login else {}
        status, panel = post_dialog(s.client, account.id, secrets, test=True, htmx=True)
        assert result_code(panel) == "ok", panel
        assert f"{server.host}:{server.port}" in panel
        status, _page = post_dialog(s.client, account.id, secrets)
        assert status == 302
        if row.login:
            assert server.logins[-2:] == [f"{row.mechanism}:{SMTP_USER}"] * 2
        account = reload(s.app, s.db, account.id)
        assert account.status == "active" and account.last_verified_at is not None
        cipher = get_cipher(s.app)
        stored = get_secret(s.db, cipher, OWNER, account.id, "password")
        if row.login:
            assert stored is not None and stored.reveal() == SMTP_PASSWORD
            rows = s.db.scalars(select(StoredSecret).where(StoredSecret.owner_id == account.id)).all()
            assert all(SMTP_PASSWORD.encode() not in r.ciphertext for r in rows)
        else:
            assert stored is None
        detail = f"/admin/accounts/{account.id}"
        for page_path in ("/admin/accounts/", detail, f"{detail}/edit", dialog_path(account.id)):
            assert SMTP_PASSWORD not in s.client.get(page_path).get_data(as_text=True)
        # Mail accounts have no request headers to hand out: the account's kind does not allow it (409).
        response = s.client.get(f"/api/account-manager/accounts/{account.id}/headers", headers=headers_token(s.db))
        assert response.status_code == 409 and response.get_json()["error"]["code"] == "conflict"
        s.db.close()


SMTP_FAILURES = ["wrong-password", "refused", "dns", "timeout", "untrusted-certificate"]


@contextmanager
def _silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (no SMTP greeting)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.mark.parametrize("kind", SMTP_FAILURES)
def test_smtp_failures_map_to_their_code_on_the_right_field(
    tmp_path: Path, sqlite_url: str, smtp_tls_files: TlsFiles, kind: str
) -> None:
    env = _env(smtp_tls_files)
    if kind == "untrusted-certificate":
        env.pop("AMI_AUTH_SMTP_CA_FILE")  # the server's CA is not trusted: TLS must fail, not fall back
    app = create_app(make_settings(tmp_path, sqlite_url, **env))
    row = SMTP_ROWS["smtp:starttls-plain"]
    expected = {
        "wrong-password": ("invalid_credentials", "password"),
        "refused": ("provider_unreachable", "config.host"),
        "dns": ("provider_unreachable", "config.host"),
        "timeout": ("provider_unreachable", "config.host"),
        "untrusted-certificate": ("provider_unreachable", "config.host"),
    }[kind]
    try:
        with run_smtp_server(smtp_tls_files) as server, _silent_server() as silent:
            host, port = server.host, server.port
            if kind == "refused":
                port = free_port()
            elif kind == "dns":
                host = "smtp.contract-test.invalid"
            elif kind == "timeout":
                port = silent
            s = _smtp_setup(app, _smtp_config(row, host, port))
            account = _smtp_pending(s, _smtp_account(row))
            password = "not the password" if kind == "wrong-password" else SMTP_PASSWORD
            status, panel = post_dialog(s.client, account.id, {"password": password}, test=True, htmx=True)
            assert result_code(panel) == expected[0], panel
            assert list(blamed_fields(panel)) == [expected[1]], panel
            assert password not in panel
            status, page = post_dialog(s.client, account.id, {"password": password})
            assert status >= 400 and result_code(page) == expected[0]
            if expected[1] == "password":
                assert "did not accept" in field_error(page, "password")
            assert password not in page
            assert s.db.scalar(select(StoredSecret).where(StoredSecret.owner_id == account.id)) is None
            s.db.close()
    finally:
        dispose_app(app)
