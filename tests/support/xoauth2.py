"""SMTP XOAUTH2 fixtures shared by the integration and browser tests: a connected OpenID account whose
refresh token the real OP issued, and the mail server's check of a bearer token (the OP's userinfo must
name the mailbox being logged into, as Gmail and Exchange Online check Google's and Microsoft's tokens)."""

from __future__ import annotations

from datetime import timedelta

import httpx
from flask import Flask
from sqlalchemy.orm import Session

from app.extensions import get_cipher
from app.models import ConnectedAccount, utcnow
from app.oauth.connections import save_tokens
from app.oauth.tokens import TokenSet
from tests.support.oauth_app import create_config, generic_values
from tests.support.op import OpenIDProvider
from tests.support.smtp import TokenCheck

MAILBOX = "alice@example.test"  # the OP's generated claims for login "alice"


def opens_mailbox(op: OpenIDProvider) -> TokenCheck:
    """The mail server's check: the provider's userinfo for this bearer token names this mailbox."""
    userinfo = httpx.get(op.discovery_url, timeout=5.0).json()["userinfo_endpoint"]

    def check(user: str, token: str) -> bool:
        response = httpx.get(userinfo, headers={"Authorization": f"Bearer {token}"}, timeout=5.0)
        return response.status_code == 200 and response.json().get("email") == user

    return check


def mailbox_account(
    app: Flask, db: Session, op: OpenIDProvider, user_id: int, *, expired: bool = True, config_name: str = "Corp ID"
) -> int:
    """A connected OIDC account of ``user_id`` holding a real refresh token for alice (scope includes email);
    ``expired``: its access token is past due, so the first use refreshes it at the OP."""
    config_id = create_config(app, "generic_oidc", config_name, generic_values(op.issuer, op.client))
    [refresh_token] = op.mint_refresh_tokens(1, scope="openid offline_access email")
    expires = utcnow() + (timedelta(minutes=-5) if expired else timedelta(hours=1))
    account = ConnectedAccount(
        provider_config_id=config_id,
        user_id=user_id,
        label=MAILBOX,
        subject="alice",
        scopes=["openid", "offline_access", "email"],
        expires_at=expires,
    )
    db.add(account)
    db.flush()
    save_tokens(db, get_cipher(app), account.id, TokenSet("stale", expires_at=expires, refresh_token=refresh_token))
    db.commit()
    return account.id
