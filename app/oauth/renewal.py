"""Refreshing a connected OAuth account's tokens without ever losing one (RFC 6749 §6).

The account is leased first (:mod:`app.oauth.leases`): by the refresh job for a batch
(app/jobs/refresh.py), or here for one (:func:`refresh_access_token`: "Refresh now", SMTP XOAUTH2, the API).

**Never losing a token.** The new token set (with a rotated refresh token, or the old one when the
response omits it, RFC 6749 §6) is written in the same transaction that releases the lease. On
``invalid_grant`` the row is re-read first: if its refresh token is no longer the one that failed,
another worker (or a reconnect) already replaced it and nothing is marked. Transient failures
(``provider_unreachable``, ``rate_limited``, …) keep the old tokens and back off exponentially
(``next_attempt_at``, ``error_attempts``); ``consent_required`` is final until the user reconnects,
and the owner is told once (the status moves away from ``active`` exactly once), through the runtime's mail.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal, cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from app import audit, metrics, webhook_events
from app.errors import N_, AppError
from app.models import ConnectedAccount, ProviderConfig, StoredSecret, User, utcnow
from app.oauth.connections import ACTIVE, CONSENT_REQUIRED, EXPIRED, OWNER, TOKEN_FIELD, load_tokens
from app.oauth.leases import claim_one, lock_row, new_owner, release
from app.oauth.provider import DEVICE_CLIENT_MARK, OAuthProvider
from app.oauth.runtime import OAuthRuntime, build_provider
from app.oauth.tokens import TokenSet, refresh, token_set_from_json, token_set_json
from app.vault import Envelope, SecretUnreadable, aad_for

__all__ = [
    "SYSTEM",
    "Claimed",
    "Outcome",
    "ProviderCache",
    "RefreshResult",
    "load_claimed",
    "refresh_access_token",
    "refresh_claimed",
]

log = logging.getLogger("ami_auth.jobs.refresh")

BACKOFF_BASE: Final = timedelta(seconds=30)
BACKOFF_CAP: Final = timedelta(hours=1)
SYSTEM: Final = audit.AuditContext(actor="system:token-refresh")

Outcome = Literal["refreshed", "consent_required", "expired", "retry_later", "skipped"]


def _backoff(attempts: int, retry_after: int | None) -> timedelta:
    delay: timedelta = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(max(attempts - 1, 0), 20)))
    if retry_after is not None:
        delay = max(delay, timedelta(seconds=retry_after))
    return delay


@dataclass
class ProviderCache:
    """Providers built once per run (decrypting the client secret and reading discovery once)."""

    rt: OAuthRuntime
    built: dict[int, OAuthProvider | AppError] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, db: Session, config_id: int) -> OAuthProvider:
        with self.lock:
            found = self.built.get(config_id)
        if found is None:
            try:
                cfg = db.get(ProviderConfig, config_id)
                if cfg is None:
                    raise AppError("not_found", N_("The provider config was deleted."))
                found = build_provider(db, self.rt, cfg)
            except SecretUnreadable as exc:
                found = AppError("secret_unreadable", exc.text)
            except AppError as exc:
                found = exc
            with self.lock:
                self.built[config_id] = found
        if isinstance(found, AppError):
            raise found
        return found


@dataclass(frozen=True)
class RefreshResult:
    outcome: Outcome
    tokens: TokenSet | None = None
    error: AppError | None = None


def _record_failure(db: Session, account_id: int, owner: str, attempts: int, exc: AppError, now: datetime) -> None:
    """A transient or configuration failure: keep the tokens, note it, try again later."""
    ca = ConnectedAccount
    db.execute(
        update(ca)
        .where(ca.id == account_id, ca.lease_owner == owner)
        .values(
            last_error_code=exc.code,
            last_error_hint=(exc.text + " " + exc.help)[:500],
            last_error_at=now,
            error_attempts=attempts + 1,
            next_attempt_at=now + _backoff(attempts + 1, exc.retry_after),
            lease_owner=None,
            lease_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    webhook_events.emit_state(db, "account.refresh_failed", f"connected_account:{account_id}")
    db.commit()


def _mark_terminal(
    db: Session,
    rt: OAuthRuntime,
    account_id: int,
    owner: str,
    used_refresh_token: str | None,
    status: str,
    exc: AppError,
    now: datetime,
) -> Outcome:
    """``consent_required`` or ``expired``, after re-reading the row under its lock: when its refresh token
    is no longer the one that failed, someone replaced it meanwhile and the account is fine."""
    lock_row(db, account_id)
    current = load_tokens(db, rt.cipher, account_id)
    if current is not None and current.refresh_token != used_refresh_token:
        release(db, account_id, owner)
        db.commit()
        return "skipped"
    # (No token set at all is as final as a refused one: only a reconnect helps.)
    ca = ConnectedAccount
    moved = db.execute(
        update(ca)
        .where(ca.id == account_id, ca.status == ACTIVE)
        .values(
            status=status,
            last_error_code=exc.code,
            last_error_hint=(exc.text + " " + exc.help)[:500],
            last_error_at=now,
            error_attempts=ca.error_attempts + 1,
            next_attempt_at=None,
            lease_owner=None,
            lease_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    first_time = getattr(moved, "rowcount", 0) == 1
    if not first_time:
        release(db, account_id, owner)
    elif status == CONSENT_REQUIRED:
        audit.record(
            db,
            SYSTEM,
            "connected_account.consent_required",
            target=f"connected_account:{account_id}",
            outcome="failure",
            details={"code": exc.code},
        )
    else:
        webhook_events.emit_state(db, "account.refresh_failed", f"connected_account:{account_id}")
    db.commit()
    if first_time and status == CONSENT_REQUIRED:
        _notify_owner(db, rt, account_id)
    return "consent_required" if status == CONSENT_REQUIRED else "expired"


def _notify_owner(db: Session, rt: OAuthRuntime, account_id: int) -> None:
    """One mail to the owner with a reconnect link, sent after the status change is committed (it moves
    away from ``active`` once, so this runs once per failure, not once per attempt)."""
    account = db.get(ConnectedAccount, account_id)
    if account is None or account.user_id is None:
        return
    user = db.get(User, account.user_id)
    if user is None:
        return
    link = f"{rt.settings.base_url.rstrip('/')}/account/connections/#account-{account_id}"
    name = account.provider_config.name if account.provider_config is not None else "a provider"
    subject = f"Reconnect your {name} account"
    text = (
        f"Hello,\n\n{name} no longer accepts the access AMI Auth had to your account {account.label}.\n"
        f"Until you reconnect it, services that use it through AMI Auth cannot reach it.\n\n"
        f"Reconnect: {link}\n\nIf you removed the access on purpose, disconnect the account there instead.\n"
    )
    if rt.mail is None:
        log.warning("reconnect mail for connected account %s not sent: this runtime has no mailer", account_id)
        return
    try:
        rt.mail(db, user.email, subject, text)
    except AppError as exc:
        # The account page shows the failure either way; a mail problem must not undo the status change.
        log.warning("reconnect mail for connected account %s not sent: %s", account_id, exc)


# The write of a successful refresh is the job's hot path: statements built once (plain Core on the tables,
# so no ORM unit of work per account), executed with parameters.
_ACCOUNTS = cast(Table, ConnectedAccount.__table__)
_SECRETS = cast(Table, StoredSecret.__table__)
_STORE_ACCOUNT = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("account_id"), _ACCOUNTS.c.lease_owner == bindparam("owner"))
    .values(
        expires_at=bindparam("expires_at"),
        scopes=bindparam("scopes"),
        status=ACTIVE,
        last_error_code=None,
        last_error_hint=None,
        last_error_at=None,
        error_attempts=0,
        next_attempt_at=None,
        lease_owner=None,
        lease_until=None,
        rotated_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
)
_REPLACE_TOKENS = (
    update(_SECRETS)
    .where(
        _SECRETS.c.owner_type == OWNER,
        _SECRETS.c.owner_id == bindparam("account_id"),
        _SECRETS.c.field == TOKEN_FIELD,
        _SECRETS.c.retired_at.is_(None),
    )
    .values(
        key_id=bindparam("key_id"),
        version=bindparam("version"),
        wrapped_key=bindparam("wrapped_key"),
        ciphertext=bindparam("ciphertext"),
        updated_at=bindparam("now"),
    )
)
_ADD_TOKENS = insert(_SECRETS).values(
    owner_type=OWNER,
    owner_id=bindparam("account_id"),
    field=TOKEN_FIELD,
    key_id=bindparam("key_id"),
    version=bindparam("version"),
    wrapped_key=bindparam("wrapped_key"),
    ciphertext=bindparam("ciphertext"),
    created_at=bindparam("now"),
    updated_at=bindparam("now"),
)


def _store_refreshed(
    db: Session,
    rt: OAuthRuntime,
    account_id: int,
    owner: str,
    used_refresh_token: str | None,
    fresh: TokenSet,
    now: datetime,
    *,
    after_failures: bool = False,
) -> Outcome:
    """Write the new token set and release the lease in one transaction.

    The new token set is encrypted with the active key and bound to its slot by the AAD, like
    ``app.vault.put_secret(..., grace=None)``, but overwrites the current row in place (as the vault's
    rewrap does) instead of deleting and inserting: one statement, no index churn. Superseded tokens are
    not kept. The rotated refresh token is held nowhere but in this transaction until it commits.
    """
    conn = db.connection()
    params = {
        "account_id": account_id,
        "owner": owner,
        "expires_at": fresh.expires_at,
        "scopes": list(fresh.scopes),
        "now": now,
    }
    written = conn.execute(_STORE_ACCOUNT, params)
    if written.rowcount != 1:
        # Our lease ran out and another worker claimed the account. Keep our tokens only if nobody stored
        # newer ones since we read them (the refresh token we used is still the stored one).
        lock_row(db, account_id)
        current = load_tokens(db, rt.cipher, account_id)
        if current is None or current.refresh_token != used_refresh_token:
            db.rollback()
            return "skipped"
        ca = _ACCOUNTS
        conn.execute(update(ca).where(ca.c.id == account_id).values(lease_owner=owner))
        conn.execute(_STORE_ACCOUNT, params)
    envelope = rt.cipher.encrypt(token_set_json(fresh).encode(), aad_for(OWNER, account_id, TOKEN_FIELD))
    secret = {
        "account_id": account_id,
        "key_id": envelope.key_id,
        "version": envelope.version,
        "wrapped_key": envelope.wrapped_key,
        "ciphertext": envelope.ciphertext,
        "now": now,
    }
    if conn.execute(_REPLACE_TOKENS, secret).rowcount != 1:
        # No current row (or, after a crash between two writes elsewhere, more than one): start clean.
        conn.execute(
            delete(_SECRETS).where(
                _SECRETS.c.owner_type == OWNER,
                _SECRETS.c.owner_id == account_id,
                _SECRETS.c.field == TOKEN_FIELD,
                _SECRETS.c.retired_at.is_(None),
            )
        )
        conn.execute(_ADD_TOKENS, secret)
    if after_failures:
        # Only after failures: the hot path of a healthy account does not read the outbox.
        webhook_events.emit_state(db, "account.recovered", f"connected_account:{account_id}")
    db.commit()
    return "refreshed"


@dataclass(frozen=True)
class Claimed:
    """A claimed account as read in one batch: its row fields and its decrypted token set (or why not)."""

    account_id: int
    config_id: int
    attempts: int
    tokens: TokenSet | None
    unreadable: AppError | None = None
    # Connected through the device flow's own client (Google): refreshed with that client.
    device_client: bool = False


def load_claimed(db: Session, rt: OAuthRuntime, ids: list[int], owner: str) -> list[Claimed]:
    """Rows and token sets of the accounts this owner holds, two queries for the whole batch; the read
    transaction ends before any provider is asked (nothing is held while it answers)."""
    ca = ConnectedAccount
    rows = db.execute(
        select(ca.id, ca.provider_config_id, ca.error_attempts, ca.provider_data).where(
            ca.id.in_(ids), ca.lease_owner == owner
        )
    ).all()
    secrets = db.execute(
        select(
            StoredSecret.owner_id,
            StoredSecret.key_id,
            StoredSecret.version,
            StoredSecret.wrapped_key,
            StoredSecret.ciphertext,
        )
        .where(
            StoredSecret.owner_type == OWNER,
            StoredSecret.field == TOKEN_FIELD,
            StoredSecret.retired_at.is_(None),
            StoredSecret.owner_id.in_(ids),
        )
        .order_by(StoredSecret.id)
    ).all()
    db.rollback()
    # The newest current row wins, as in app.vault.get_secret.
    envelopes = {s.owner_id: Envelope(s.key_id, s.version, s.wrapped_key, s.ciphertext) for s in secrets}
    order = {account_id: i for i, account_id in enumerate(ids)}
    claimed: list[Claimed] = []
    for account_id, config_id, attempts, data in sorted(rows, key=lambda r: order[r[0]]):
        envelope = envelopes.get(account_id)
        tokens: TokenSet | None = None
        unreadable: AppError | None = None
        if envelope is not None:
            try:
                raw = rt.cipher.decrypt(envelope, aad_for(OWNER, account_id, TOKEN_FIELD)).decode()
                tokens = token_set_from_json(raw)
            except SecretUnreadable as exc:
                unreadable = AppError("secret_unreadable", exc.text)
        via_device = isinstance(data, dict) and data.get(DEVICE_CLIENT_MARK) == "device"
        claimed.append(Claimed(account_id, config_id, attempts, tokens, unreadable, via_device))
    return claimed


def refresh_claimed(
    db: Session, rt: OAuthRuntime, providers: ProviderCache, item: Claimed, owner: str, *, forced: bool = False
) -> RefreshResult:
    """Refresh one account this worker holds the lease on; every path releases the lease. Counted in
    ``ami_auth_token_refreshes_total`` by provider type and outcome (the type is ``unknown`` when the provider
    config itself failed to load)."""
    result = _refresh_claimed(db, rt, providers, item, owner, forced=forced)
    built = providers.built.get(item.config_id)
    provider_type = built.type if isinstance(built, OAuthProvider) else "unknown"
    metrics.TOKEN_REFRESHES.labels(provider_type=provider_type, outcome=result.outcome).inc()
    return result


def _refresh_claimed(
    db: Session, rt: OAuthRuntime, providers: ProviderCache, item: Claimed, owner: str, *, forced: bool
) -> RefreshResult:
    now = utcnow()
    account_id, tokens = item.account_id, item.tokens
    try:
        if item.unreadable is not None:
            raise item.unreadable
        provider = providers.get(db, item.config_id)
        if item.device_client:
            provider = provider.for_device()
        db.rollback()
    except AppError as exc:
        db.rollback()
        _record_failure(db, account_id, owner, item.attempts, exc, now)
        return RefreshResult("retry_later", error=exc)
    if tokens is None or not tokens.refresh_token:
        if tokens is not None and not forced and tokens.expires_at is not None and tokens.expires_at > now:
            # Due within the margin but not refreshable: look again when it really expires.
            ca = ConnectedAccount
            db.execute(
                update(ca)
                .where(ca.id == account_id, ca.lease_owner == owner)
                .values(lease_owner=None, lease_until=None, next_attempt_at=tokens.expires_at)
                .execution_options(synchronize_session=False)
            )
            db.commit()
            return RefreshResult("skipped")
        error = AppError(
            "token_expired",
            N_("The access token expired and the provider gave no refresh token"),
            N_("Reconnect the account to get a new token"),
        )
        return RefreshResult(_mark_terminal(db, rt, account_id, owner, None, EXPIRED, error, now), error=error)
    try:
        fresh = refresh(
            rt.client,
            provider.metadata,
            provider.credentials,
            tokens,
            default_expires_in=provider.default_expires_in,
            keys=provider.keys,
            policy=provider.policy,
        )
    except AppError as exc:
        if exc.code == "consent_required":
            outcome = _mark_terminal(db, rt, account_id, owner, tokens.refresh_token, CONSENT_REQUIRED, exc, utcnow())
            return RefreshResult(outcome, error=exc)
        _record_failure(db, account_id, owner, item.attempts, exc, utcnow())
        return RefreshResult("retry_later", error=exc)
    outcome = _store_refreshed(
        db, rt, account_id, owner, tokens.refresh_token, fresh, utcnow(), after_failures=item.attempts > 0
    )
    return RefreshResult(outcome, tokens=fresh if outcome == "refreshed" else None)


def refresh_access_token(db: Session, account: ConnectedAccount, rt: OAuthRuntime) -> TokenSet:
    """Refresh one account now ("Refresh now", or a caller that needs a fresh token); commits.

    Claims the account like the job does, so it never races a job run: ``conflict`` if a refresh is
    already in flight. Raises the refresh's error (``consent_required``, ``provider_unreachable``, …)
    after recording it on the account.
    """
    owner = new_owner()
    if not claim_one(db, account.id, owner, utcnow()):
        raise AppError(
            "conflict",
            N_("This account is being refreshed right now."),
            N_("Reload the page in a moment."),
            retry_after=5,
        )
    try:
        claimed = load_claimed(db, rt, [account.id], owner)
        result = (
            refresh_claimed(db, rt, ProviderCache(rt), claimed[0], owner, forced=True)
            if claimed
            else RefreshResult("skipped")
        )
    finally:
        db.expire(account)
    if result.tokens is not None:
        return result.tokens
    if result.error is not None:
        raise result.error
    current = load_tokens(db, rt.cipher, account.id)
    if current is None:
        raise AppError("not_found", N_("The account was removed meanwhile."))
    return current  # another worker refreshed it a moment ago
