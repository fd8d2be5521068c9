"""The catalog contract: every provider type goes through the same checks, on SQLite and PostgreSQL.

Adding a provider type adds ONE row to CONTRACT below (valid sample values for its config and account
fields); every test here then runs for it. The secrets in the rows are made-up test values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import unescape
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.extensions import get_cipher
from app.models import ConnectedAccount, ProviderConfig, StoredSecret
from app.providers import configs
from app.providers.entries import FieldSpec, ProviderEntry
from app.providers.forms import initial_data
from app.providers.registry import get_catalog, load_schema
from app.providers.types import AuthProviderType, FieldType, Which
from app.providers.validation import (
    FieldError,
    coerce,
    effective_values,
    split_secrets,
    validate_submission,
    visibility,
)
from app.vault import get_secret, put_secret
from tests.conftest import UserFactory, csrf_token, sign_in


@dataclass(frozen=True)
class Row:
    config: dict[str, Any]
    account: dict[str, Any] = field(default_factory=dict)


# One row per provider type: a valid config and a valid account (typed values, as the JSON API takes them).
CONTRACT: dict[str, Row] = {
    "ami_credentials": Row(config={"show_on_signin": True}),
    "google": Row(
        config={
            "client_id": "1234567890-contract.apps.googleusercontent.com",
            "client_secret": "GOCSPX-contract-google-7f3a9c",
            "hosted_domain": "example.com",
            "jit": True,
            "allowed_domains": ["example.com", "example.org"],
        }
    ),
    "github": Row(config={"client_id": "Ov23liContract0001", "client_secret": "contract-github-5be2d41f"}),
    "azure_ad": Row(
        config={
            "tenant": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "client_id": "00000000-1111-2222-3333-444444444444",
            "client_secret": "contract~azure~e1c04b",
        }
    ),
    "generic_oidc": Row(
        config={
            "endpoint_source": "manual",
            "issuer": "https://id.example.com",
            "authorization_url": "https://id.example.com/authorize",
            "token_url": "https://id.example.com/token",
            "jwks_uri": "https://id.example.com/jwks",
            "client_id": "ami-auth",
            "client_secret": "contract-oidc-90d1aa",
            "scopes": ["openid", "email", "offline_access"],
        }
    ),
    "openai": Row(
        config={"rotation_days": 30},
        account={"api_key": "sk-proj-contract-openai-3e8d", "organization_id": "org-Contract1", "environment": "ci"},
    ),
    "anthropic": Row(config={}, account={"api_key": "sk-ant-api03-contract-a1b2"}),
    "huggingface": Row(config={}, account={"api_token": "hf_contractToken4c5d", "required_role": "write"}),
    "generic_api_key": Row(
        config={"base_url": "https://api.example.com", "auth_type": "basic", "verify_path": "/v1/me"},
        account={"api_key": "contract-key-77aa", "api_secret": "contract-basic-secret-77bb"},
    ),
    "smtp": Row(
        config={"host": "smtp.example.com", "security": "ssl"},
        account={
            "from_address": "mailer@example.com",
            "username": "mailer@example.com",
            "password": "contract-smtp-password-42",
        },
    ),
}

CATALOG = list(get_catalog())
IDS = [e.id for e in CATALOG]
WITH_CONFIG_SECRETS = [e.id for e in CATALOG if e.secret_fields("config")]
WITH_SECRETS = [e.id for e in CATALOG if e.has_secrets]
ADMIN = "admin@example.com"


def _entry(provider_id: str) -> ProviderEntry:
    return get_catalog()[AuthProviderType(provider_id)]


def _admin(client: FlaskClient, make_user: UserFactory) -> None:
    make_user(ADMIN, role="admin")
    assert sign_in(client, ADMIN).status_code == 302


def _form_value(spec: FieldSpec, value: Any) -> str | None:
    """How a browser sends a typed value (None: not sent, like an unchecked box)."""
    if spec.type == FieldType.BOOLEAN:
        return "y" if value else None
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(value)
    return str(value)


def _form_post(provider: ProviderEntry, values: dict[str, Any], name: str, token: str) -> dict[str, str]:
    """Start from what the create form shows, apply ``values``, leave out what the form hides."""
    data: dict[str, Any] = {}
    initial = initial_data(provider, "config")
    for spec in provider.config_fields:
        if spec.secret:
            data[spec.name] = values.get(spec.name, "")
        elif spec.name in values:
            data[spec.name] = values[spec.name]
        else:
            data[spec.name] = spec.default if spec.type == FieldType.BOOLEAN else initial[spec.name]
    typed = {}
    for spec in provider.config_fields:
        try:
            typed[spec.name] = coerce(spec, data[spec.name])
        except FieldError:
            typed[spec.name] = None
    shown = visibility(provider, "config", typed)
    post = {"name": name, "csrf_token": token}
    for spec in provider.config_fields:
        if not shown[spec.name]:
            continue  # the browser disables hidden fields, so they are not sent
        sent = _form_value(spec, data[spec.name]) if not isinstance(data[spec.name], str) else data[spec.name]
        if sent is not None:
            post[spec.name] = sent
    return post


def _field_error(html: str, name: str) -> str:
    match = re.search(rf'<p class="error" id="{name}-error" data-field="{name}">([^<]*)</p>', html)
    return unescape(match.group(1)) if match else ""


# ------------------------------------------------------------------------------------------- the table


def test_the_table_has_one_row_per_catalog_entry() -> None:
    assert set(CONTRACT) == set(get_catalog().ids()) == set(IDS)


@pytest.mark.parametrize("provider_id", IDS)
def test_entry_is_schema_valid_and_row_values_are_accepted(provider_id: str) -> None:
    provider = _entry(provider_id)
    errors = list(Draft202012Validator(load_schema()).iter_errors(dict(provider.raw)))
    assert errors == []
    row = CONTRACT[provider_id]
    clean, problems = validate_submission(provider, "config", row.config)
    assert problems == {}
    assert set(row.config) <= set(clean)
    context: dict[Which, dict[str, Any]] = {"config": effective_values(provider, "config", clean)}
    _, account_problems = validate_submission(provider, "account", row.account, context=context)
    assert account_problems == {}


# ----------------------------------------------------------------------------------------- the console


@pytest.mark.parametrize("provider_id", IDS)
def test_config_form_renders_every_field(client: FlaskClient, make_user: UserFactory, provider_id: str) -> None:
    provider = _entry(provider_id)
    _admin(client, make_user)
    response = client.get(f"/admin/providers/new/{provider_id}")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f"New {provider.display_name} provider" in unescape(html)
    assert 'name="name"' in html and 'name="csrf_token"' in html
    for spec in provider.config_fields:
        assert f'data-field="{spec.name}"' in html, spec.name
        assert f'for="{spec.name}"' in html or 'class="check"' in html
        if spec.secret:
            tag = re.search(rf'<(input|textarea)[^>]*\bname="{spec.name}"[^>]*>', html)
            assert tag is not None and 'autocomplete="off"' in tag.group(0)
            assert tag.group(1) == "textarea" or 'type="password"' in tag.group(0)
    for warning in provider.admin_warnings:
        assert warning in unescape(html)


def _bad_value(spec: FieldSpec) -> tuple[str, str] | None:
    """(value to send, text the field's error must contain) for a malformed value, if the type has one."""
    if spec.type == FieldType.ENUM:
        return "definitely-not-an-option", "Choose one of"
    if spec.type == FieldType.URL:
        return "not a url", "http(s) URL"
    if spec.type == FieldType.EMAIL:
        return "not-an-email", "email address"
    if spec.type == FieldType.INTEGER:
        return ("99999999", "Use a number") if spec.max is not None else ("12abc", "whole number")
    if spec.pattern is not None:
        for candidate in ("not valid!", "-", "@@", "UPPER CASE/..", "x"):
            try:
                coerce(spec, candidate)
            except FieldError as exc:
                return candidate, exc.message
    return None


def _controllers(provider: ProviderEntry) -> set[str]:
    return {
        t.field for s in provider.config_fields if s.visible_when for t in s.visible_when.terms if t.scope == "config"
    }


def _cases(provider: ProviderEntry) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(label, overrides, {field: expected error text}) covering required, format, enum and URL checks."""
    row = CONTRACT[provider.id].config
    typed = effective_values(provider, "config", {**row})
    shown = visibility(provider, "config", typed)
    controllers = _controllers(provider)
    cases: list[tuple[str, dict[str, Any], dict[str, str]]] = []
    required: dict[str, Any] = {}
    required_expect: dict[str, str] = {}
    malformed: dict[str, Any] = {}
    malformed_expect: dict[str, str] = {}
    for spec in provider.config_fields:
        if not shown[spec.name]:
            continue
        bad = _bad_value(spec)
        if spec.name in controllers:
            if bad is not None:
                cases.append((f"bad {spec.name}", {spec.name: bad[0]}, {spec.name: bad[1]}))
            continue
        if spec.required and spec.type == FieldType.BOOLEAN:
            cases.append((f"unticked {spec.name}", {spec.name: False}, {spec.name: "must be turned on"}))
        elif spec.required:
            required[spec.name] = ""
            required_expect[spec.name] = "This field is required."
        if bad is not None:
            malformed[spec.name] = bad[0]
            malformed_expect[spec.name] = bad[1]
    # A required field the row's values hide: switch its controllers so it shows, then leave it out.
    for spec in provider.config_fields:
        if shown[spec.name] or not spec.required or spec.visible_when is None:
            continue
        switch = {t.field: t.raw[0] for t in spec.visible_when.terms if t.scope == "config"}
        if not visibility(provider, "config", {**typed, **switch})[spec.name]:
            continue
        blank: Any = False if spec.type == FieldType.BOOLEAN else ""
        text = "must be turned on" if spec.type == FieldType.BOOLEAN else "This field is required."
        cases.append((f"{spec.name} shown and missing", {**switch, spec.name: blank}, {spec.name: text}))
    if required:
        cases.append(("required missing", required, required_expect))
    if malformed:
        cases.append(("malformed", malformed, malformed_expect))
    return cases


@pytest.mark.parametrize("provider_id", IDS)
def test_bad_input_is_rejected_on_each_field_and_typing_survives(
    client: FlaskClient, make_user: UserFactory, db: Session, provider_id: str
) -> None:
    provider = _entry(provider_id)
    _admin(client, make_user)
    path = f"/admin/providers/new/{provider_id}"
    cases = _cases(provider)
    if provider.config_fields and any(s.required or s.pattern or s.enum for s in provider.config_fields):
        assert cases, "an entry with rules must produce at least one bad-input case"
    for label, overrides, expected in cases:
        values = {**CONTRACT[provider_id].config, **overrides}
        post = _form_post(provider, values, f"Contract {provider_id}", csrf_token(client, path))
        response = client.post(path, data=post)
        html = response.get_data(as_text=True)
        assert response.status_code == 422, label
        for name, text in expected.items():
            assert text in _field_error(html, name), f"{label}: {name} shows {_field_error(html, name)!r}"
            assert re.search(rf'\bname="{name}"[^>]*aria-invalid="true"|aria-invalid="true"[^>]*\bname="{name}"', html)
        # What the admin typed is still there (except secrets, which the page asks to type again).
        assert f'value="Contract {provider_id}"' in html
        for spec in provider.config_fields:
            sent = post.get(spec.name)
            if spec.secret:
                if sent:
                    assert sent not in html
                    assert "Secret values are never sent back" in html
            elif sent and spec.type not in (FieldType.BOOLEAN, FieldType.ENUM, FieldType.STRING_LIST):
                assert f'value="{sent}"' in unescape(html) or f">{sent}</textarea>" in unescape(html), spec.name
    assert db.scalar(select(ProviderConfig)) is None


@pytest.mark.parametrize("provider_id", WITH_CONFIG_SECRETS)
def test_secret_is_never_rendered_and_survives_an_edit(
    app: Flask, client: FlaskClient, make_user: UserFactory, db: Session, provider_id: str
) -> None:
    provider = _entry(provider_id)
    row = CONTRACT[provider_id].config
    secret_values = {s.name: row[s.name] for s in provider.secret_fields("config") if s.name in row}
    assert secret_values, "the row must give a value for the entry's config secrets"
    _admin(client, make_user)
    path = f"/admin/providers/new/{provider_id}"
    response = client.post(path, data=_form_post(provider, row, "Contract", csrf_token(client, path)))
    assert response.status_code == 302, response.get_data(as_text=True)
    edit_path = response.headers["Location"]
    html = client.get(edit_path).get_data(as_text=True)
    for name, value in secret_values.items():
        assert value not in html
        state = re.search(rf'id="{name}-state">(.*?)</p>', html, re.S)
        assert state is not None and "set" in state.group(1) and "last changed" in state.group(1)
        assert "Replace" in state.group(1)
    # Saving the edit form with the secret left blank keeps the stored value.
    cfg = db.scalars(select(ProviderConfig)).one()
    token = csrf_token(client, edit_path)
    edited = {**row, **dict.fromkeys(secret_values, "")}
    post = _form_post(provider, edited, "Contract renamed", token)
    assert client.post(edit_path, data=post).status_code == 302
    db.expire_all()
    cipher = get_cipher(app)
    for name, value in secret_values.items():
        stored = get_secret(db, cipher, configs.OWNER, cfg.id, name)
        assert stored is not None and stored.reveal() == value
    assert db.get(ProviderConfig, cfg.id).name == "Contract renamed"  # type: ignore[union-attr]
    html = client.get(edit_path).get_data(as_text=True)
    assert all(value not in html for value in secret_values.values())


@pytest.mark.parametrize("provider_id", WITH_SECRETS)
def test_secrets_round_trip_through_the_vault(app: Flask, db: Session, provider_id: str) -> None:
    provider = _entry(provider_id)
    row = CONTRACT[provider_id]
    cipher = get_cipher(app)
    clean, problems = validate_submission(provider, "config", row.config)
    assert problems == {}
    plain, _ = split_secrets(provider, "config", clean)
    cfg = ProviderConfig(provider_type=provider_id, name="Vault contract", config=plain)
    db.add(cfg)
    db.flush()
    context: dict[Which, dict[str, Any]] = {"config": effective_values(provider, "config", plain)}
    account_clean, account_problems = validate_submission(provider, "account", row.account, context=context)
    assert account_problems == {}
    account = ConnectedAccount(provider_config_id=cfg.id, label="contract")
    db.add(account)
    db.flush()
    expected: dict[tuple[str, int, str], str] = {}
    for which, owner, owner_id, values in (
        ("config", configs.OWNER, cfg.id, clean),
        ("account", configs.ACCOUNT_OWNER, account.id, account_clean),
    ):
        for spec in provider.secret_fields(which):  # type: ignore[arg-type]
            if spec.name in values:
                put_secret(db, cipher, owner, owner_id, spec.name, values[spec.name], grace=None)
                expected[(owner, owner_id, spec.name)] = values[spec.name].reveal()
    db.commit()
    assert expected
    stored_config = str(db.get(ProviderConfig, cfg.id).config)  # type: ignore[union-attr]
    for (owner, owner_id, name), plaintext in expected.items():
        stored = get_secret(db, cipher, owner, owner_id, name)
        assert stored is not None and stored.reveal() == plaintext
        rows = db.scalars(select(StoredSecret).where(StoredSecret.owner_type == owner)).all()
        assert rows and all(plaintext.encode() not in r.ciphertext + r.wrapped_key for r in rows)
        assert plaintext not in stored_config


# ---------------------------------------------------------------------------------------- the schema API


@pytest.mark.parametrize("provider_id", IDS)
def test_schema_api_lists_it_with_write_only_secrets(
    client: FlaskClient, make_user: UserFactory, provider_id: str
) -> None:
    provider = _entry(provider_id)
    _admin(client, make_user)
    response = client.get("/api/account-manager/providers/schema")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    listed = {p["id"]: p for p in body["providers"]}
    assert list(listed) == IDS
    item = listed[provider_id]
    assert item["display_name"] == provider.display_name and item["auth_mode"] == provider.auth_mode.value
    row = CONTRACT[provider_id]
    for which, values in (("config", row.config), ("account", row.account)):
        schema = item[which]
        Draft202012Validator.check_schema(schema)
        for spec in provider.fields(which):  # type: ignore[arg-type]
            prop = schema["properties"][spec.name]
            assert prop.get("writeOnly", False) is spec.secret
            assert prop["x-order"] == spec.order
            assert prop.get("x-suggest") == spec.suggest  # SMTP's oauth_account_id: oauth_accounts
            if spec.secret:
                assert "default" not in prop and "examples" not in prop
        assert schema["x-field-order"] == [s.name for s in provider.fields(which)]  # type: ignore[arg-type]
        validator = Draft202012Validator(schema)
        errors = [e.message for e in validator.iter_errors(values)]
        assert errors == [], f"{which}: the row fails the published schema: {errors}"
    # The secret values themselves never appear in the API.
    for value in [*row.config.values(), *row.account.values()]:
        if isinstance(value, str) and ("secret" in value or value.startswith(("sk-", "hf_", "GOCSPX"))):
            assert value not in response.get_data(as_text=True)
