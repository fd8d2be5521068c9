"""The proof that provider types are data: made-up catalog entries, one per auth mode, loaded from
tests/fixtures/catalog/ (``AMI_AUTH_CATALOG_DIR``) — not the shipped catalog — and driven through every
surface: the schema API, the console's generated forms, ``providers apply``, the console's pages, the
sign-in button and flow, connect, refresh, revoke and headers. No code in the app names these ids; a new
entry that some surface ignored would fail here. SQLite and PostgreSQL.

The OAuth entries talk to the real OpenID Provider (tests/peers/op.mjs): ``acme_id`` by discovery with ID
tokens, ``acme_hub`` as plain OAuth 2.0 by its endpoints, its user read from a small API that checks the
entry's header templates and the token (by RFC 7662 introspection at the OP). ``acme_keys`` talks to a small
API that checks its header templates; ``acme_mail`` to aiosmtpd. This file is the worked example of
docs/adding-a-provider.md.
"""

from __future__ import annotations

import re
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from flask import Flask, jsonify, request
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from app.api import tokens
from app.audit import AuditContext
from app.models import ConnectedAccount, ProviderConfig
from app.providers import configs, registry
from app.providers.types import AuthProviderType
from app.settings import Settings
from tests.conftest import PASSWORD, UserFactory, make_settings, sign_in
from tests.support.accounts import csrf_of, dialog_path, post_dialog, result_code
from tests.support.live import free_port, serve
from tests.support.oauth_app import follow_callback, location, page_csrf
from tests.support.op import OPClient, OpenIDProvider, op_login, running_op
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, TlsFiles, run_smtp_server

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "tests" / "fixtures" / "catalog"
BASE = "http://127.0.0.1:5000"  # the test settings' AMI_AUTH_BASE_URL
ADMIN = "admin@example.com"
OP_SECRET = "acme-op-secret"
ACCOUNTS = {
    "alice": {"email": "alice@acme.example", "email_verified": True, "name": "Alice Acme"},
    "bob": {"email": "bob@acme.example", "email_verified": True, "name": "Bob Acme"},
}
# id → (display name, auth mode): every file of the fixture folder, one per auth mode.
SYNTHETIC = {
    "acme_id": ("Acme ID", "oidc"),
    "acme_hub": ("Acme Hub", "oauth2"),
    "acme_keys": ("Acme Keys", "api_key"),
    "acme_mail": ("Acme Mail", "smtp"),
    "acme_local": ("Acme local accounts", "password"),
}
CTX = AuditContext(actor="test")


# ------------------------------------------------------------------------------------------------ peers


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    # Each test's database starts empty: its provider configs are #1, #2, …; register their callbacks.
    client = OPClient(
        "ami-auth", OP_SECRET, extra={"redirect_uris": [f"{BASE}/oauth/{i}/callback" for i in range(1, 9)]}
    )
    with running_op(clients=[client], accounts=ACCOUNTS) as provider:
        yield provider


@dataclass
class Api:
    """A small HTTP API in a thread: what it saw, per path."""

    url: str
    seen: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # API key → user name
    revoked: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self) -> None:
        with self.lock:
            entry = {k.lower(): v for k, v in request.headers.items()}
            entry.update({f"form.{k}": v for k, v in request.form.items()})
            self.seen.setdefault(request.path, []).append(entry)

    def last(self, path: str) -> dict[str, str]:
        with self.lock:
            return self.seen[path][-1]


@pytest.fixture(scope="module")
def hub_api(op: OpenIDProvider) -> Iterator[Api]:
    """Acme Hub's API: ``GET /user`` answers about the token's owner, with the headers acme_hub.yaml declares."""
    api = Flask("acme-hub-api")
    port = free_port()
    state = Api(f"http://127.0.0.1:{port}")
    http = httpx.Client(timeout=10, trust_env=False)

    @api.get("/user")
    def user() -> Response | tuple[Response, int]:
        state.record()
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if request.headers.get("X-Acme-Api-Version") != "2024-06-01" or not token:
            return jsonify(error="bad_request"), 400
        # RFC 7662: the resource server asks the authorization server whether the token is active.
        found = http.post(f"{op.issuer}/token/introspection", data={"token": token}, auth=("ami-auth", OP_SECRET))
        claims = found.json()
        if not claims.get("active"):
            return jsonify(error="invalid_token"), 401
        sub = claims["sub"]
        return jsonify(id=f"hub-{sub}", login=sub, **ACCOUNTS[sub])

    with serve(api, port):
        yield state
    http.close()


@pytest.fixture(scope="module")
def keys_api() -> Iterator[Api]:
    """Acme's key API: checks ``Authorization: Token <key>`` and ``X-Acme-Team`` exactly as acme_keys.yaml says."""
    api = Flask("acme-keys-api")
    port = free_port()
    state = Api(f"http://127.0.0.1:{port}", keys={"acme_good_key_1": "robot"})

    def key() -> str | None:
        value = request.headers.get("Authorization", "")
        found = value.removeprefix("Token ") if value.startswith("Token ") else None
        return found if found in state.keys and found not in state.revoked else None

    @api.get("/v1/whoami")
    def whoami() -> Response | tuple[Response, int]:
        state.record()
        found = key()
        if found is None:
            return jsonify(error={"code": "invalid_key"}), 401
        return jsonify(name=state.keys[found])

    @api.post("/v1/keys/revoke")
    def revoke() -> Response | tuple[Response, int]:
        state.record()
        found = key()
        if found is None or request.form.get("key") != found:
            return jsonify(error={"code": "invalid_key"}), 401
        state.revoked.add(found)
        return jsonify(revoked=True)

    with serve(api, port):
        yield state


# ---------------------------------------------------------------------------------------------- the app


@pytest.fixture
def settings(tmp_path: Path, database_url: str, smtp_tls_files: TlsFiles) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        AMI_AUTH_CATALOG_DIR=str(CATALOG),
        AMI_AUTH_SMTP_CA_FILE=str(smtp_tls_files.ca_file),
        AMI_AUTH_OUTBOUND_RETRIES="0",
    )


@pytest.fixture(autouse=True)
def _shipped_catalog_afterwards() -> Iterator[None]:
    yield
    registry.activate(())  # the next test's app activates its own catalog anyway; this one is not left behind


def _token(db: Session, *scopes: str) -> dict[str, str]:
    raw = tokens.create_token(db, CTX, name="CMS", scopes=list(scopes), created_by=None).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


def _admin(client: FlaskClient, make_user: UserFactory) -> None:
    make_user(ADMIN, role="admin")
    assert sign_in(client, ADMIN, PASSWORD).status_code == 302


def _run(app: Flask, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=list(args), env=env)
    return result.exit_code, result.output


def _apply(app: Flask, tmp_path: Path, body: str, env: dict[str, str]) -> str:
    path = tmp_path / "providers.yaml"
    path.write_text(textwrap.dedent(body))
    code, out = _run(app, "providers", "apply", str(path), env=env)
    assert code == 0, out
    return out


def _config_id(db: Session, name: str) -> int:
    db.expire_all()
    cfg = configs.find_by_name(db, name)
    assert cfg is not None, name
    return cfg.id


def _signed_in_as(client: FlaskClient) -> str | None:
    html = client.get("/account/").get_data(as_text=True)
    match = re.search(r'<span class="who">([^<]+)</span>', html)
    return match.group(1) if match else None


def _sign_in_with(client: FlaskClient, config_id: int, login: str) -> None:
    start = client.get(f"/oauth/{config_id}/login?next=/account/")
    done = follow_callback(client, op_login(location(start), login))
    assert location(done) == "/account/", done.get_data(as_text=True)[:600]


def _connect(client: FlaskClient, db: Session, config_id: int, login: str) -> ConnectedAccount:
    start = client.get(f"/account/connections/connect/{config_id}")
    done = follow_callback(client, op_login(location(start), login))
    assert "#account-" in location(done), done.get_data(as_text=True)[:600]
    db.expire_all()
    return db.scalars(select(ConnectedAccount).where(ConnectedAccount.provider_config_id == config_id)).one()


# ---------------------------------------------------------------------------- the catalog's own surfaces


def test_every_synthetic_type_reaches_the_schema_api_the_forms_apply_and_the_console(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, op: OpenIDProvider, tmp_path: Path
) -> None:
    catalog = registry.get_catalog()
    assert set(SYNTHETIC) <= set(catalog.ids())
    assert {catalog[AuthProviderType(i)].source.parent for i in SYNTHETIC} == {CATALOG}

    # The schema API (what the CMS builds its forms from): each type, its fields, secrets write-only.
    body = client.get("/api/account-manager/providers/schema", headers=_token(db, "providers:read")).get_json()
    listed = {p["id"]: p for p in body["providers"]}
    for provider_id, (display_name, mode) in SYNTHETIC.items():
        entry = catalog[AuthProviderType(provider_id)]
        shown = listed[provider_id]
        assert (shown["display_name"], shown["auth_mode"]) == (display_name, mode)
        for which in ("config", "account"):
            assert shown[which]["x-field-order"] == [spec.name for spec in entry.fields(which)]
            for spec in entry.fields(which):
                assert shown[which]["properties"][spec.name].get("writeOnly", False) is spec.secret
    # Field groups arrive expanded: acme_id's sign-in policy, acme_keys' rotation reminder (its default the entry's).
    assert {"signin", "trust_email", "jit", "allowed_domains", "device_flow"} <= set(
        listed["acme_id"]["config"]["properties"]
    )
    assert listed["acme_keys"]["config"]["properties"]["rotation_days"]["default"] == 30

    # The console's generated forms: every type offered, every config field rendered.
    _admin(client, make_user)
    offered = client.get("/admin/providers/new").get_data(as_text=True)
    for provider_id, (display_name, _mode) in SYNTHETIC.items():
        assert f'href="/admin/providers/new/{provider_id}"' in offered and display_name in offered
        form = client.get(f"/admin/providers/new/{provider_id}").get_data(as_text=True)
        for spec in catalog[AuthProviderType(provider_id)].config_fields:
            assert re.search(rf'\bname="{spec.name}"', form), (provider_id, spec.name)

    # `providers apply`: one config of each type from a file, secrets from the environment.
    env = {"ACME_OP_SECRET": OP_SECRET}
    out = _apply(
        app,
        tmp_path,
        f"""
        providers:
          - {{name: Acme ID, type: acme_id, enabled: true,
              config: {{issuer: "{op.issuer}", client_id: ami-auth, client_secret: "${{env:ACME_OP_SECRET}}"}}}}
          - {{name: Acme Hub, type: acme_hub, enabled: true,
              config: {{client_id: ami-auth, client_secret: "${{env:ACME_OP_SECRET}}", server_url: "{op.issuer}"}}}}
          - {{name: Acme Keys, type: acme_keys, enabled: true, config: {{base_url: "https://api.acme.example"}}}}
          - {{name: Acme Mail, type: acme_mail, enabled: true, config: {{host: smtp.acme.example}}}}
          - {{name: Acme local, type: acme_local, enabled: true, config: {{welcome: Hello}}}}
        """,
        env,
    )
    assert "applied: 5 created, 0 updated, 0 unchanged" in out
    assert OP_SECRET not in out
    stored = {cfg.provider_type: cfg for cfg in db.scalars(select(ProviderConfig))}
    assert set(stored) == set(SYNTHETIC) and all(cfg.enabled for cfg in stored.values())
    assert stored["acme_mail"].config["security"] == "starttls"  # a default from the entry
    # Its connectivity test follows the entry's verification kind, not its id.
    code, out = _run(app, "providers", "test", "Acme ID")
    assert code == 0 and "Acme ID: ok" in out and f"Issuer: {op.issuer}" in out, out
    code, out = _run(app, "providers", "test", "Acme local")
    assert "nothing to test: Acme local accounts are built in" in out, out
    code, out = _run(app, "providers", "test", "Acme Hub")
    assert "Acme Hub has nothing to fetch without a user" in out, out

    # The console lists them, and edits each with its own fields.
    listing = client.get("/admin/providers/").get_data(as_text=True)
    for provider_id, (_name, mode) in SYNTHETIC.items():
        cfg = stored[provider_id]
        assert f"/admin/providers/{cfg.id}" in listing and mode in listing
        edit = client.get(f"/admin/providers/{cfg.id}").get_data(as_text=True)
        assert cfg.name in edit
        oauth_setup = f"/admin/providers/{cfg.id}/oauth" in edit
        assert oauth_setup is (mode in ("oauth2", "oidc")), provider_id


# ---------------------------------------------------------------------------------------- OAuth entries


def test_the_oidc_entry_signs_in_connects_refreshes_and_revokes(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, op: OpenIDProvider, tmp_path: Path
) -> None:
    _apply(
        app,
        tmp_path,
        f"""
        providers:
          - name: Corp Acme
            type: acme_id
            enabled: true
            config: {{issuer: "{op.issuer}", client_id: ami-auth, client_secret: "${{env:S}}", jit: true,
                      device_flow: true}}
        """,
        {"S": OP_SECRET},
    )
    config_id = _config_id(db, "Corp Acme")

    # The sign-in button: the entry's label and logo.
    page = client.get("/signin").get_data(as_text=True)
    assert "Sign in with Corp Acme" in page and f'href="/oauth/{config_id}/login' in page
    assert '<img class="oauth-logo" src="/static/favicon.svg"' in page
    # The flow: the OP's login and consent, an ID token checked, a user created on first sign-in.
    _sign_in_with(client, config_id, "alice")
    assert _signed_in_as(client) == "alice@acme.example"

    # Connect: a refresh token asked for (offline_access + consent); the entry's connect note shown.
    connections = client.get("/account/connections/").get_data(as_text=True)
    assert "Connect Corp Acme" in connections and "Acme ID asks for your consent each time you connect." in connections
    assert "Connect with a code" in connections  # the device-flow capability, turned on in the config
    account = _connect(client, db, config_id, "alice")
    assert account.label == "alice@acme.example" and "offline_access" in account.scopes
    account_id = account.id

    # Refresh now: a refresh-token grant at the OP.
    op.reset_counts()
    page = client.get("/account/connections/").get_data(as_text=True)
    done = client.post(f"/account/connections/{account_id}/refresh", data={"csrf_token": page_csrf(page)})
    assert location(done).endswith(f"#account-{account_id}")
    assert op.grant_count("refresh_token") == 1
    assert "the new access token is valid until" in client.get("/account/connections/").get_data(as_text=True)

    # Revoke: disconnecting revokes the grant at the OP (RFC 7009, its URL from discovery), then forgets it.
    page = client.get(f"/account/connections/{account_id}/disconnect").get_data(as_text=True)
    done = client.post(f"/account/connections/{account_id}/disconnect", data={"csrf_token": page_csrf(page)})
    assert location(done) == "/account/connections/"
    assert op.request_count("POST", "/token/revocation") == 1
    assert "revoked its access at the provider" in client.get("/account/connections/").get_data(as_text=True)
    db.expire_all()
    assert db.get(ConnectedAccount, account_id) is None

    # The console's OAuth setup page: the entry's setup notes, and "Test connection" by discovery.
    admin = app.test_client()
    _admin(admin, make_user)
    setup = admin.get(f"/admin/providers/{config_id}/oauth").get_data(as_text=True)
    assert "Register a <em>confidential</em> client at Acme ID" in setup
    assert f"{BASE}/oauth/{config_id}/callback" in setup
    tested = admin.post(f"/admin/providers/{config_id}/test-oauth", data={"csrf_token": page_csrf(setup)})
    html = tested.get_data(as_text=True)
    assert tested.status_code == 200 and "The provider answered" in html and op.issuer in html


def test_the_oauth2_entry_signs_in_through_its_api_connects_refreshes_and_revokes(
    app: Flask,
    client: FlaskClient,
    db: Session,
    make_user: UserFactory,
    op: OpenIDProvider,
    hub_api: Api,
    tmp_path: Path,
) -> None:
    _apply(
        app,
        tmp_path,
        f"""
        providers:
          - name: Acme Hub
            type: acme_hub
            enabled: true
            config: {{client_id: ami-auth, client_secret: "${{env:S}}", server_url: "{op.issuer}",
                      api_url: "{hub_api.url}", jit: true}}
        """,
        {"S": OP_SECRET},
    )
    config_id = _config_id(db, "Acme Hub")
    page = client.get("/signin").get_data(as_text=True)
    assert "Continue with Acme Hub" in page  # the default label; this entry has no logo

    # No ID token: who signed in comes from the API's /user, called with the entry's headers.
    _sign_in_with(client, config_id, "bob")
    assert _signed_in_as(client) == "bob@acme.example"
    seen = hub_api.last("/user")
    assert seen["authorization"].startswith("Bearer ") and seen["x-acme-api-version"] == "2024-06-01"

    account = _connect(client, db, config_id, "bob")
    assert account.subject == "hub-bob" and account.provider_data["userinfo"]["login"] == "bob"
    rw = _token(db, "accounts:write", "accounts:read")
    op.reset_counts()
    refreshed = client.post(f"/api/account-manager/accounts/{account.id}/refresh", headers=rw).get_json()
    assert refreshed["refresh"]["outcome"] == "refreshed" and op.grant_count("refresh_token") == 1
    revoked = client.post(f"/api/account-manager/accounts/{account.id}/revoke", headers=rw).get_json()
    assert revoked["revocation"]["outcome"] == "revoked" and revoked["account"]["status"] == "consent_required"
    assert op.request_count("POST", "/token/revocation") == 1

    admin = app.test_client()
    _admin(admin, make_user)
    setup = admin.get(f"/admin/providers/{config_id}/oauth").get_data(as_text=True)
    assert "Create an OAuth app in Acme Hub" in setup
    tested = admin.post(f"/admin/providers/{config_id}/test-oauth", data={"csrf_token": page_csrf(setup)})
    html = tested.get_data(as_text=True)
    assert "Acme Hub publishes no discovery document" in html and f"{op.issuer}/token" in html
    assert "Acme Hub tokens that never expire stay valid until revoked." in html
    # Nothing to fetch without a user: the test says it could not test (the entry's data, not its id).
    assert "Acme Hub cannot be tested from here: nothing was contacted." in html and "The provider answered" not in html


# -------------------------------------------------------------------------------- API-key and SMTP entries


def test_the_api_key_entry_verifies_gives_its_headers_and_revokes(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, keys_api: Api, tmp_path: Path
) -> None:
    _apply(
        app,
        tmp_path,
        f"""
        providers:
          - {{name: Acme Keys, type: acme_keys, enabled: true, config: {{base_url: "{keys_api.url}"}}}}
        """,
        {},
    )
    config_id = _config_id(db, "Acme Keys")
    keys_api.revoked.clear()  # the API outlives one test (SQLite, then PostgreSQL); its key starts valid
    _admin(client, make_user)
    settings_page = client.get(f"/admin/providers/{config_id}").get_data(as_text=True)
    assert "Create a key in the Acme console under <em>Settings → API keys</em>" in settings_page
    offered = client.get("/admin/accounts/new").get_data(as_text=True)
    assert f"/admin/accounts/new/{config_id}" in offered
    form = client.get(f"/admin/accounts/new/{config_id}").get_data(as_text=True)
    assert re.search(r'\bname="team"', form) and not re.search(r'\bname="api_key"', form)
    created = client.post(
        f"/admin/accounts/new/{config_id}", data={"csrf_token": csrf_of(form), "label": "Robot", "team": "research"}
    )
    assert created.status_code == 302 and created.headers["Location"].startswith(dialog_path(1).rsplit("/", 2)[0])
    account = db.scalars(select(ConnectedAccount)).one()

    # A wrong key: the API answers 401, blamed on the key field; nothing stored.
    status, panel = post_dialog(client, account.id, {"api_key": "acme_wrong"}, test=True, htmx=True)
    assert status == 200 and result_code(panel) == "invalid_credentials", panel
    # The right key: verified with exactly the headers the entry's templates say, then stored.
    status, _page = post_dialog(client, account.id, {"api_key": "acme_good_key_1"})
    assert status == 302
    seen = keys_api.last("/v1/whoami")
    assert (seen["authorization"], seen["x-acme-team"]) == ("Token acme_good_key_1", "research")
    db.refresh(account)
    assert account.status == "active" and account.provider_data["user_name"] == "robot"

    # Headers for the CMS: the same templates, rendered with the stored key.
    headers = client.get(
        f"/api/account-manager/accounts/{account.id}/headers", headers=_token(db, "accounts:headers")
    ).get_json()["headers"]
    assert headers["Authorization"] == "Token acme_good_key_1" and headers["X-Acme-Team"] == "research"

    rw = _token(db, "accounts:write", "accounts:read")
    refreshed = client.post(f"/api/account-manager/accounts/{account.id}/refresh", headers=rw).get_json()
    assert refreshed["refresh"]["outcome"] == "verified"
    # Revoke: the entry's revoke request (bearer auth, the key in the body), then the key is forgotten here.
    revoked = client.post(f"/api/account-manager/accounts/{account.id}/revoke", headers=rw).get_json()
    assert revoked["revocation"]["outcome"] == "revoked" and revoked["account"]["status"] == "disabled"
    seen = keys_api.last("/v1/keys/revoke")
    assert (seen["authorization"], seen["form.key"]) == ("Token acme_good_key_1", "acme_good_key_1")
    assert "acme_good_key_1" in keys_api.revoked


def test_the_smtp_entry_logs_in_and_sends_a_test_mail(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory, smtp_tls_files: TlsFiles, tmp_path: Path
) -> None:
    with run_smtp_server(smtp_tls_files) as server:
        _apply(
            app,
            tmp_path,
            f"""
            providers:
              - {{name: Acme Mail, type: acme_mail, enabled: true, config: {{host: 127.0.0.1, port: {server.port}}}}}
            """,
            {},
        )
        config_id = _config_id(db, "Acme Mail")
        _admin(client, make_user)
        form = client.get(f"/admin/accounts/new/{config_id}").get_data(as_text=True)
        data = {
            "csrf_token": csrf_of(form),
            "label": "Robot mailbox",
            "from_address": "robot@acme.example",
            "username": SMTP_USER,
            "auth_mechanism": "PLAIN",
        }
        assert client.post(f"/admin/accounts/new/{config_id}", data=data).status_code == 302
        account = db.scalars(select(ConnectedAccount)).one()
        dialog = client.get(dialog_path(account.id)).get_data(as_text=True)
        assert "also send a test mail" in dialog  # the SMTP verification kind's option, not an id check
        status, _page = post_dialog(client, account.id, {"password": SMTP_PASSWORD})
        assert status == 302 and server.logins == [f"PLAIN:{SMTP_USER}"]

        detail = client.get(f"/admin/accounts/{account.id}").get_data(as_text=True)
        sent = client.post(f"/admin/accounts/{account.id}/test-mail", data={"csrf_token": csrf_of(detail)})
        assert sent.status_code in (200, 302), sent.get_data(as_text=True)[:500]
        message = server.wait_for(ADMIN)
        assert message["From"].endswith("robot@acme.example>") or "robot@acme.example" in message["From"]

        # "Refresh" of an SMTP account is a fresh login with the stored password.
        rw = _token(db, "accounts:write", "accounts:read")
        logins = len(server.logins)
        refreshed = client.post(f"/api/account-manager/accounts/{account.id}/refresh", headers=rw).get_json()
        assert refreshed["refresh"]["outcome"] == "verified" and len(server.logins) == logins + 1
