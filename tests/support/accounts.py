"""Helpers for connected-account tests: provider configs and accounts made through the logic layer, and
reading what the console and the secure dialog render."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from app.audit import AuditContext
from app.connectors import accounts
from app.models import ConnectedAccount, ProviderConfig
from app.providers import configs
from app.providers.registry import entry
from app.providers.validation import ValuesByScope, effective_values, validate_submission
from app.settings import Settings
from app.vault import Cipher

CTX = AuditContext(actor="test")


def headers_token(db: Session) -> dict[str, str]:
    """The Authorization header of a new service token with the scope accounts:headers (the only way to the
    headers endpoint: it answers no browser session)."""
    from app.api import tokens

    raw = tokens.create_token(db, CTX, name="CMS headers", scopes=["accounts:headers"], created_by=None).raw
    db.commit()
    return {"Authorization": f"Bearer {raw}"}


def make_config(
    db: Session, cipher: Cipher, settings: Settings, provider_id: str, values: dict[str, Any], name: str = ""
) -> ProviderConfig:
    provider = entry(provider_id)
    clean, errors = validate_submission(provider, "config", values)
    assert errors == {}, errors
    cfg = configs.create_config(
        db, cipher, settings, CTX, provider, name or f"{provider.display_name} test", clean, enabled=True
    )
    db.commit()
    return cfg


def make_account(
    db: Session, cfg: ProviderConfig, values: dict[str, Any], label: str = "Test account"
) -> ConnectedAccount:
    """A pending account (no secret yet) with the given non-secret values."""
    provider = configs.entry_for(cfg)
    context: ValuesByScope = {"config": effective_values(provider, "config", cfg.config)}
    secret_names = [s.name for s in provider.secret_fields("account")]
    clean, errors = validate_submission(provider, "account", values, context=context, secrets_set=secret_names)
    assert errors == {}, errors
    account = accounts.create_account(db, CTX, cfg, label, clean)
    db.commit()
    return account


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def dialog_path(account_id: int) -> str:
    return f"/dialogs/accounts/{account_id}/secret"


def post_dialog(
    client: FlaskClient, account_id: int, secrets: dict[str, str], *, test: bool = False, htmx: bool = False
) -> tuple[int, str]:
    """Open the secret dialog, type ``secrets``, press Test connection (``test``) or Save."""
    page = client.get(dialog_path(account_id))
    assert page.status_code == 200, page.get_data(as_text=True)[:500]
    data = {"csrf_token": csrf_of(page.get_data(as_text=True)), **secrets}
    path = dialog_path(account_id) + ("/test" if test else "")
    headers = {"HX-Request": "true"} if htmx else {}
    response = client.post(path, data=data, headers=headers)
    return response.status_code, response.get_data(as_text=True)


def result_code(html: str) -> str | None:
    match = re.search(r'class="test-result[^"]*"[^>]*data-code="([^"]+)"', html)
    return match.group(1) if match else None


def blamed_fields(html: str) -> dict[str, str]:
    """The result panel's per-field messages: {field key: text}."""
    panel = re.search(r'<ul class="test-fields">(.*?)</ul>', html, re.S)
    if panel is None:
        return {}
    found = {}
    for key, body in re.findall(r'<li data-field="([^"]+)">(.*?)</li>', panel.group(1), re.S):
        found[key] = unescape(re.sub(r"<[^>]+>", "", body)).strip()
    return found


def field_error(html: str, name: str) -> str:
    match = re.search(
        rf'<p class="error" id="{re.escape(name)}-error" data-field="{re.escape(name)}">([^<]*)</p>', html
    )
    return unescape(match.group(1)) if match else ""


def reload(app: Flask, db: Session, account_id: int) -> ConnectedAccount:
    db.expire_all()
    account = db.get(ConnectedAccount, account_id)
    assert account is not None
    return account
