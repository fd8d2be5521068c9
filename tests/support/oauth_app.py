"""Provider configs for the OAuth tests, made the way an admin makes them (catalog validation, vault),
pointing at the real OP (tests/support/op.py) or the Google/GitHub/Microsoft stand-ins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app import audit
from app.extensions import get_cipher, get_database, get_settings
from app.models import ConnectedAccount, ProviderConfig, utcnow
from app.oauth.connections import save_tokens
from app.oauth.runtime import redirect_uri
from app.oauth.tokens import TokenSet
from app.providers import configs
from app.providers.registry import entry
from app.providers.validation import validate_submission
from app.vault import Cipher
from tests.support.op import OPClient


def create_config(app: Flask, provider_type: str, name: str, values: Mapping[str, Any], *, enabled: bool = True) -> int:
    """Validate ``values`` with the catalog (as the console does), store the config, return its id."""
    provider = entry(provider_type)
    clean, errors = validate_submission(provider, "config", dict(values))
    assert not errors, errors
    with app.app_context():
        db = get_database(app).session()
        cfg = configs.create_config(
            db, get_cipher(app), get_settings(app), audit.AuditContext(actor="test"), provider, name, clean
        )
        if enabled:
            configs.set_enabled(db, audit.AuditContext(actor="test"), cfg, True)
        db.commit()
        return cfg.id


def add_due_accounts(
    db: Session, cipher: Cipher, config_id: int, user_id: int, refresh_tokens: Sequence[str]
) -> list[ConnectedAccount]:
    """One connected account per refresh token (real ones, minted at the OP), its access token expired a minute
    ago: due for the refresh job. Flushed, not committed."""
    past = utcnow() - timedelta(minutes=1)
    due = [
        ConnectedAccount(
            provider_config_id=config_id,
            user_id=user_id,
            label=f"due-{i}",
            subject="alice",
            scopes=["openid", "offline_access"],
            expires_at=past,
        )
        for i in range(len(refresh_tokens))
    ]
    db.add_all(due)
    db.flush()
    for account, token in zip(due, refresh_tokens, strict=True):
        save_tokens(db, cipher, account.id, TokenSet("expired", expires_at=past, refresh_token=token))
    return due


def next_config_id(app: Flask) -> int:
    """The id the next config will get (so an OP can be started with the right redirect URI first)."""
    with Session(get_database(app).engine) as db:
        last = db.query(ProviderConfig.id).order_by(ProviderConfig.id.desc()).first()
        return (last[0] if last else 0) + 1


def callback_for(app: Flask, config_id: int) -> str:
    return redirect_uri(get_settings(app), config_id)


def op_client_for(app: Flask, config_id: int, client_id: str = "ami-auth", secret: str = "op-secret") -> OPClient:
    return OPClient(client_id, secret, redirect_uri=callback_for(app, config_id))


def generic_values(issuer: str, client: OPClient, **extra: Any) -> dict[str, Any]:
    return {
        "endpoint_source": "discovery",
        "issuer": issuer,
        "client_id": client.client_id,
        "token_auth_method": client.auth_method,
        "client_secret": client.client_secret,
        "scopes": "openid email profile",
        **extra,
    }


def location(response: Any) -> str:
    value = response.headers.get("Location")
    assert value, f"no redirect (status {response.status_code}): {response.get_data(as_text=True)[:400]}"
    return str(value)


def follow_callback(client: FlaskClient, callback_url: str) -> TestResponse:
    """GET the app's callback (the URL the provider redirected to) with the test client."""
    parts = urlsplit(callback_url)
    return client.get(parts.path, query_string=dict(parse_qsl(parts.query, keep_blank_values=True)))


def page_csrf(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)
