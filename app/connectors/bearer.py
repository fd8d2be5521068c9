"""An OAuth account's current access token, for the proxy, the token handout and the headers endpoint.

A token that expires within :data:`MARGIN` is refreshed first, through the same claimed refresh the job and
"Refresh now" use (:func:`app.oauth.renewal.refresh_access_token`), so a rotated refresh token is stored
before the new access token is used and two refreshes never race. When another worker holds the claim
(``conflict``), this waits for its result a moment instead of failing the caller: the claim ends in seconds.

An upstream 401 for a bearer token (:func:`note_unauthorized`) is answered as the refresh job answers a
refused token: one forced refresh; if the provider refuses the refresh token too, the refresh marks the
account ``consent_required`` and mails the owner (once). A refresh that works means the old access token was
revoked early; the account stays active.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.orm import Session

from app.errors import AppError
from app.models import ConnectedAccount, utcnow
from app.oauth.connections import ACTIVE, load_tokens
from app.oauth.renewal import refresh_access_token
from app.oauth.runtime import OAuthRuntime
from app.oauth.tokens import TokenSet
from app.providers.entries import ProviderEntry
from app.providers.types import AuthMode

__all__ = ["MARGIN", "OAUTH_MODES", "AccessToken", "current_token", "database_key", "note_unauthorized"]

OAUTH_MODES: Final = frozenset({AuthMode.OAUTH2, AuthMode.OIDC})
# A token this close to expiry is refreshed before it is handed out or sent: the call must not outlive it.
MARGIN: Final = timedelta(seconds=60)
# How long to wait for another worker's refresh of the same account before giving up with its conflict.
CLAIM_WAIT: Final = 5.0
# At most one forced refresh per account and process in this window, however many 401s come back.
UNAUTHORIZED_REFRESH_EVERY: Final = 60.0

# (database, account id) → when this process last forced a refresh for it.
_last_forced: dict[tuple[str, int], float] = {}
_forced_lock = threading.Lock()


def database_key(db: Session) -> str:
    """Which database an account id belongs to (a process may serve more than one, e.g. tests)."""
    return db.get_bind().engine.url.render_as_string(hide_password=True)


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    token_type: str
    expires_at: datetime | None
    scopes: tuple[str, ...]


def check_oauth_account(provider: ProviderEntry, account: ConnectedAccount) -> None:
    """``conflict`` for a disabled provider config, ``consent_required`` for an account to reconnect."""
    if not account.provider_config.enabled:
        raise AppError(
            "conflict",
            f"The provider config “{account.provider_config.name}” is disabled.",
            "An admin can enable it again under Providers.",
        )
    if account.status != ACTIVE:
        raise AppError(
            "consent_required",
            f"The connected account “{account.label}” needs to be reconnected ({account.status}).",
            "Its owner reconnects it under Connections; calls with it fail until then.",
        )


def _refreshed(db: Session, rt: OAuthRuntime, account: ConnectedAccount, used: TokenSet) -> TokenSet:
    deadline = time.monotonic() + CLAIM_WAIT
    while True:
        try:
            return refresh_access_token(db, account, rt)
        except AppError as exc:
            if exc.code != "conflict" or time.monotonic() > deadline:
                raise
        # Another worker holds the claim: its refresh lands in a moment.
        time.sleep(0.2)
        db.rollback()
        current = load_tokens(db, rt.cipher, account.id)
        if current is not None and current.access_token != used.access_token:
            return current


def current_token(db: Session, rt: OAuthRuntime, provider: ProviderEntry, account: ConnectedAccount) -> AccessToken:
    """The account's access token, refreshed first when it expires within :data:`MARGIN`. May commit (a
    refresh commits its own transaction). The caller audits the hand-out."""
    check_oauth_account(provider, account)
    tokens = load_tokens(db, rt.cipher, account.id)
    if tokens is None:
        raise AppError(
            "consent_required",
            f"The connected account “{account.label}” holds no token.",
            "Its owner reconnects it under Connections.",
        )
    if tokens.expires_at is not None and tokens.expires_at <= utcnow() + MARGIN:
        tokens = _refreshed(db, rt, account, tokens)
    return AccessToken(tokens.access_token, tokens.token_type or "Bearer", tokens.expires_at, tokens.scopes)


def note_unauthorized(db: Session, rt: OAuthRuntime, account: ConnectedAccount, sent: str) -> str:
    """The provider answered 401 to access token ``sent``: refresh once (see the module docstring).

    Returns what happened, for the audit event: ``refreshed``, ``consent_required``, ``skipped`` (a refresh
    for this account ran less than a minute ago, or the stored token is already another one) or the error
    code of a failed refresh.
    """
    now = time.monotonic()
    key = (database_key(db), account.id)
    with _forced_lock:
        last = _last_forced.get(key)
        if last is not None and now - last < UNAUTHORIZED_REFRESH_EVERY:
            return "skipped"
        _last_forced[key] = now
    current = load_tokens(db, rt.cipher, account.id)
    if current is None or current.access_token != sent:
        return "skipped"
    try:
        _refreshed(db, rt, account, current)
    except AppError as exc:
        return exc.code
    return "refreshed"
