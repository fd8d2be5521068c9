"""Token refresh that never loses a token, and revocation.

**Claiming.** An account is claimed before it is refreshed by setting a lease (``lease_owner``,
``lease_until``) in one short transaction, and released when its result is written. Holding a row lock
across the HTTP call to the provider would pin a database connection and transaction for as long as
the provider takes (seconds, or the whole timeout), so the lock only guards the claim:

- PostgreSQL: ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING id``: concurrent
  claimers skip each other's rows instead of queueing behind them, and the outer ``WHERE`` repeats
  the lease test, which PostgreSQL re-checks on the latest row version.
- SQLite: the same ``UPDATE … RETURNING`` as a compare-and-set (``lease_until IS NULL OR lease_until
  < now``); SQLite runs one writer at a time, so the check and the set cannot interleave.

Any number of job runs, scheduler threads and hosts can therefore run at once and each due account
is refreshed once. A lease outlives any single request (the HTTP client's timeout is seconds), so it
only matters when a worker dies mid-refresh: the account is picked up again when its lease ends.

**Never losing a token.** The new token set (with a rotated refresh token, or the old one when the
response omits it, RFC 6749 §6) is written in the same transaction that releases the lease. On
``invalid_grant`` the row is re-read first: if its refresh token is no longer the one that failed,
another worker (or a reconnect) already replaced it and nothing is marked. Transient failures
(``provider_unreachable``, ``rate_limited``, …) keep the old tokens and back off exponentially
(``next_attempt_at``, ``error_attempts``); ``consent_required`` is final until the user reconnects,
and the owner is told once (the status moves away from ``active`` exactly once).

**Cost.** Due accounts are found by ``status = 'active' AND expires_at <= now + margin`` on the index
``ix_connected_accounts_refresh_due (status, expires_at)``: the work follows the number of due accounts,
not the number stored.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal, cast

from sqlalchemy import ColumnElement, Engine, Select, Table, and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from app import audit, metrics
from app.errors import AppError
from app.models import ConnectedAccount, ProviderConfig, StoredSecret, User, utcnow
from app.oauth.connections import ACTIVE, CONSENT_REQUIRED, EXPIRED, OWNER, TOKEN_FIELD, load_tokens
from app.oauth.glue import (
    OAUTH_TYPES,
    OAuthProvider,
    OAuthRuntime,
    build_provider,
    revoke_tokens,
    token_set_from_json,
    token_set_json,
)
from app.oauth.tokens import TokenSet, refresh
from app.vault import Envelope, SecretUnreadable, aad_for, delete_secrets

__all__ = [
    "LEASE",
    "Outcome",
    "RefreshReport",
    "RevokeOutcome",
    "claim_due",
    "due_candidates",
    "due_filter",
    "refresh_access_token",
    "revoke_account",
    "run_refresh",
]

log = logging.getLogger("ami_auth.jobs.refresh")

# Far above one refresh (the HTTP client gives up after its timeout times its attempts), so a live worker never
# loses its lease; short enough that a crashed worker's accounts are retried within minutes.
LEASE: Final = timedelta(minutes=5)
# Claimed per round trip: large enough to amortise the claim, small enough that parallel workers share.
BATCH: Final = 20
BACKOFF_BASE: Final = timedelta(seconds=30)
BACKOFF_CAP: Final = timedelta(hours=1)
SYSTEM: Final = audit.AuditContext(actor="system:token-refresh")

Outcome = Literal["refreshed", "consent_required", "expired", "retry_later", "skipped"]


@dataclass
class RefreshReport:
    """What a run did, per outcome, plus the taxonomy codes of the failures."""

    refreshed: int = 0
    consent_required: int = 0
    expired: int = 0
    retry_later: int = 0
    skipped: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, outcome: Outcome, code: str | None = None) -> None:
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)
            if code is not None:
                self.errors[code] = self.errors.get(code, 0) + 1

    @property
    def total(self) -> int:
        return self.refreshed + self.consent_required + self.expired + self.retry_later + self.skipped

    def summary(self) -> str:
        parts = [
            f"refreshed {self.refreshed}",
            f"consent required {self.consent_required}",
            f"expired {self.expired}",
            f"retry later {self.retry_later}",
            f"skipped {self.skipped}",
        ]
        if self.errors:
            parts.append("errors " + ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())))
        return "; ".join(parts)


def new_owner() -> str:
    """A lease owner that names the host, process and thread (what an operator sees in the row)."""
    return f"{socket.gethostname()[:24]}:{os.getpid()}:{threading.get_ident() % 100000}:{uuid.uuid4().hex[:8]}"


def _oauth_config_ids() -> Select[int]:
    return select(ProviderConfig.id).where(
        ProviderConfig.provider_type.in_([t.value for t in OAUTH_TYPES]), ProviderConfig.enabled.is_(True)
    )


def due_filter(now: datetime, horizon: datetime, started_at: datetime | None = None) -> list[ColumnElement[bool]]:
    """The WHERE of a due, claimable account. ``started_at`` skips accounts a run already refreshed, so a
    token that lives shorter than the margin is not refreshed over and over within one run."""
    ca = ConnectedAccount
    conditions: list[ColumnElement[bool]] = [
        ca.status == ACTIVE,
        ca.expires_at <= horizon,
        or_(ca.next_attempt_at.is_(None), ca.next_attempt_at <= now),
        or_(ca.lease_until.is_(None), ca.lease_until < now),
        ca.provider_config_id.in_(_oauth_config_ids().scalar_subquery()),
    ]
    if started_at is not None:
        conditions.append(or_(ca.rotated_at.is_(None), ca.rotated_at < started_at))
    return conditions


def due_candidates(
    now: datetime, horizon: datetime, *, limit: int = BATCH, started_at: datetime | None = None
) -> Select[int]:
    """Ids of due accounts, soonest expiry first: the scan the claim runs (an index range on
    ``(status, expires_at)``; see the EXPLAIN test in tests/integration/test_token_refresh_concurrency.py)."""
    ca = ConnectedAccount
    return select(ca.id).where(*due_filter(now, horizon, started_at)).order_by(ca.expires_at).limit(limit)


def claim_due(
    db: Session,
    owner: str,
    *,
    now: datetime,
    horizon: datetime,
    limit: int = BATCH,
    started_at: datetime | None = None,
) -> list[int]:
    """Lease up to ``limit`` due accounts for ``owner`` and commit; returns their ids (soonest expiry first)."""
    ca = ConnectedAccount
    candidates = due_candidates(now, horizon, limit=limit, started_at=started_at)
    if db.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    claim = (
        update(ca)
        .where(ca.id.in_(candidates.scalar_subquery()), or_(ca.lease_until.is_(None), ca.lease_until < now))
        .values(lease_owner=owner, lease_until=now + LEASE)
        .returning(ca.id)
        .execution_options(synchronize_session=False)
    )
    ids = list(db.scalars(claim))
    db.commit()
    return ids


def _claim_one(db: Session, account_id: int, owner: str, now: datetime) -> bool:
    ca = ConnectedAccount
    claimed = db.scalars(
        update(ca)
        .where(ca.id == account_id, or_(ca.lease_until.is_(None), ca.lease_until < now))
        .values(lease_owner=owner, lease_until=now + LEASE)
        .returning(ca.id)
        .execution_options(synchronize_session=False)
    ).first()
    db.commit()
    return claimed is not None


def _release(db: Session, account_id: int, owner: str) -> None:
    ca = ConnectedAccount
    db.execute(
        update(ca)
        .where(ca.id == account_id, ca.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )


def _lock_row(db: Session, account_id: int) -> None:
    """Take the row's write lock for the rest of the transaction (re-read under it)."""
    ca = ConnectedAccount
    if db.get_bind().dialect.name == "postgresql":
        db.execute(select(ca.id).where(ca.id == account_id).with_for_update())
    else:
        # DML, so pysqlite begins a transaction and SQLite takes its (single) write lock before the re-read.
        db.execute(
            update(ca)
            .where(ca.id == account_id)
            .values(lease_until=ca.lease_until)
            .execution_options(synchronize_session=False)
        )


def _backoff(attempts: int, retry_after: int | None) -> timedelta:
    delay: timedelta = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(max(attempts - 1, 0), 20)))
    if retry_after is not None:
        delay = max(delay, timedelta(seconds=retry_after))
    return delay


@dataclass
class _Providers:
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
                    raise AppError("not_found", "The provider config was deleted.")
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
class _Result:
    outcome: Outcome
    tokens: TokenSet | None = None
    error: AppError | None = None


def _counted(providers: _Providers, item: _Claimed, result: _Result) -> _Result:
    """``ami_auth_token_refreshes_total`` by provider type and outcome (the type is unknown when the provider
    config itself failed to load)."""
    built = providers.built.get(item.config_id)
    provider_type = built.type.value if isinstance(built, OAuthProvider) else "unknown"
    metrics.TOKEN_REFRESHES.labels(provider_type=provider_type, outcome=result.outcome).inc()
    return result


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
    _lock_row(db, account_id)
    current = load_tokens(db, rt.cipher, account_id)
    if current is not None and current.refresh_token != used_refresh_token:
        _release(db, account_id, owner)
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
        _release(db, account_id, owner)
    elif status == CONSENT_REQUIRED:
        audit.record(
            db,
            SYSTEM,
            "connected_account.consent_required",
            target=f"connected_account:{account_id}",
            outcome="failure",
            details={"code": exc.code},
        )
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
    try:
        send_mail(db, rt, user.email, subject, text)
    except AppError as exc:
        # The account page shows the failure either way; a mail problem must not undo the status change.
        log.warning("reconnect mail for connected account %s not sent: %s", account_id, exc)


def send_mail(db: Session, rt: OAuthRuntime, to: str, subject: str, text: str) -> None:
    from app.mailer import Mailer

    Mailer(db, rt.settings).send(to, subject, text)


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
        _lock_row(db, account_id)
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
    db.commit()
    return "refreshed"


@dataclass(frozen=True)
class _Claimed:
    """A claimed account as read in one batch: its row fields and its decrypted token set (or why not)."""

    account_id: int
    config_id: int
    attempts: int
    tokens: TokenSet | None
    unreadable: AppError | None = None


def _load_claimed(db: Session, rt: OAuthRuntime, ids: list[int], owner: str) -> list[_Claimed]:
    """Rows and token sets of the accounts this owner holds, two queries for the whole batch; the read
    transaction ends before any provider is asked (nothing is held while it answers)."""
    ca = ConnectedAccount
    rows = db.execute(
        select(ca.id, ca.provider_config_id, ca.error_attempts).where(ca.id.in_(ids), ca.lease_owner == owner)
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
    claimed: list[_Claimed] = []
    for account_id, config_id, attempts in sorted(rows, key=lambda r: order[r[0]]):
        envelope = envelopes.get(account_id)
        tokens: TokenSet | None = None
        unreadable: AppError | None = None
        if envelope is not None:
            try:
                raw = rt.cipher.decrypt(envelope, aad_for(OWNER, account_id, TOKEN_FIELD)).decode()
                tokens = token_set_from_json(raw)
            except SecretUnreadable as exc:
                unreadable = AppError("secret_unreadable", exc.text)
        claimed.append(_Claimed(account_id, config_id, attempts, tokens, unreadable))
    return claimed


def _refresh_claimed(
    db: Session, rt: OAuthRuntime, providers: _Providers, item: _Claimed, owner: str, *, forced: bool = False
) -> _Result:
    """Refresh one account this worker holds the lease on; every path releases the lease."""
    now = utcnow()
    account_id, tokens = item.account_id, item.tokens
    try:
        if item.unreadable is not None:
            raise item.unreadable
        provider = providers.get(db, item.config_id)
        db.rollback()
    except AppError as exc:
        db.rollback()
        _record_failure(db, account_id, owner, item.attempts, exc, now)
        return _Result("retry_later", error=exc)
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
            return _Result("skipped")
        error = AppError(
            "token_expired",
            "The access token expired and the provider gave no refresh token",
            "Reconnect the account to get a new token",
        )
        return _Result(_mark_terminal(db, rt, account_id, owner, None, EXPIRED, error, now), error=error)
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
            return _Result(outcome, error=exc)
        _record_failure(db, account_id, owner, item.attempts, exc, utcnow())
        return _Result("retry_later", error=exc)
    outcome = _store_refreshed(db, rt, account_id, owner, tokens.refresh_token, fresh, utcnow())
    return _Result(outcome, tokens=fresh if outcome == "refreshed" else None)


def refresh_access_token(db: Session, account: ConnectedAccount, rt: OAuthRuntime) -> TokenSet:
    """Refresh one account now ("Refresh now", or a caller that needs a fresh token); commits.

    Claims the account like the job does, so it never races a job run: ``conflict`` if a refresh is
    already in flight. Raises the refresh's error (``consent_required``, ``provider_unreachable``, …)
    after recording it on the account.
    """
    owner = new_owner()
    if not _claim_one(db, account.id, owner, utcnow()):
        raise AppError(
            "conflict", "This account is being refreshed right now.", "Reload the page in a moment.", retry_after=5
        )
    try:
        claimed = _load_claimed(db, rt, [account.id], owner)
        providers = _Providers(rt)
        result = (
            _counted(providers, claimed[0], _refresh_claimed(db, rt, providers, claimed[0], owner, forced=True))
            if claimed
            else _Result("skipped")
        )
    finally:
        db.expire(account)
    if result.tokens is not None:
        return result.tokens
    if result.error is not None:
        raise result.error
    current = load_tokens(db, rt.cipher, account.id)
    if current is None:
        raise AppError("not_found", "The account was removed meanwhile.")
    return current  # another worker refreshed it a moment ago


def run_refresh(
    rt: OAuthRuntime,
    engine: Engine,
    *,
    margin: timedelta | None = None,
    workers: int = 4,
    limit: int | None = None,
    now: Callable[[], datetime] = utcnow,
) -> RefreshReport:
    """Refresh every account due within ``margin`` (default ``AMI_AUTH_TOKEN_REFRESH_MARGIN_MINUTES``).

    ``workers`` threads claim batches until none is left (or ``limit`` accounts were handled). Safe to run
    in any number of processes at once.
    """
    margin = margin if margin is not None else timedelta(minutes=rt.settings.token_refresh_margin_minutes)
    started_at = now()
    report = RefreshReport()
    providers = _Providers(rt)
    budget = [limit if limit is not None else -1]
    budget_lock = threading.Lock()

    def take(n: int) -> int:
        with budget_lock:
            if budget[0] < 0:
                return n
            granted = min(n, budget[0])
            budget[0] -= granted
            return granted

    def work() -> None:
        owner = new_owner()
        with Session(engine) as db:
            while True:
                size = take(BATCH)
                if size == 0:
                    return
                moment = now()
                ids = claim_due(db, owner, now=moment, horizon=moment + margin, limit=size, started_at=started_at)
                if not ids:
                    return
                claimed = _load_claimed(db, rt, ids, owner)
                for _ in range(len(ids) - len(claimed)):
                    report.add("skipped")  # deleted (disconnected) since the claim
                for item in claimed:
                    try:
                        result = _counted(providers, item, _refresh_claimed(db, rt, providers, item, owner))
                    except Exception:
                        # One broken account must not stop the run; its lease ends and it is retried.
                        db.rollback()
                        log.exception("refreshing connected account %s failed", item.account_id)
                        report.add("retry_later", "internal_error")
                        continue
                    report.add(result.outcome, result.error.code if result.error is not None else None)

    count = max(1, workers)
    if count == 1:
        work()
    else:
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="token-refresh") as pool:
            for future in [pool.submit(work) for _ in range(count)]:
                future.result()
    if report.total:
        log.info("token refresh: %s", report.summary())
    return report


# --- revoke ------------------------------------------------------------------------------------------------

RevokeOutcome = Literal["revoked", "already_invalid", "unsupported", "not_revoked"]


@dataclass(frozen=True)
class RevokeResult:
    outcome: RevokeOutcome
    # For "unsupported": when the access token stops working on its own (None: unknown or never).
    access_token_expires_at: datetime | None = None
    error: AppError | None = None


def revoke_account(
    db: Session,
    account: ConnectedAccount,
    rt: OAuthRuntime,
    ctx: audit.AuditContext = SYSTEM,
    *,
    force: bool = False,
) -> RevokeResult:
    """Revoke the account's grant at the provider, then delete it and its tokens here; commits.

    Azure AD has no revocation endpoint (``unsupported``): the account is deleted here and the result says
    when the access token expires by itself. When the provider cannot be reached, nothing is deleted unless
    ``force`` (the user chose "remove here only"), and the error is returned.
    """
    account_id = account.id
    expires_at = account.expires_at
    outcome: RevokeOutcome
    error: AppError | None = None
    try:
        tokens = load_tokens(db, rt.cipher, account_id)
    except SecretUnreadable as exc:
        tokens, error = None, AppError("secret_unreadable", exc.text)
    cfg = db.get(ProviderConfig, account.provider_config_id)
    provider: OAuthProvider | None = None
    if cfg is not None and error is None:
        try:
            provider = build_provider(db, rt, cfg)
        except SecretUnreadable as exc:
            error = AppError("secret_unreadable", exc.text)
        except AppError as exc:
            error = exc
    if tokens is None and error is None:
        outcome = "already_invalid"
    elif provider is None or tokens is None:
        outcome = "not_revoked"
    elif not provider.revoke_supported:
        outcome = "unsupported"
        expires_at = tokens.expires_at
    else:
        try:
            outcome = revoke_tokens(rt.client, provider, tokens)
        except AppError as exc:
            outcome, error = "not_revoked", exc
    if outcome == "not_revoked" and not force:
        db.rollback()
        return RevokeResult("not_revoked", error=error)
    deleted = delete_secrets(db, OWNER, account_id)
    audit.record(
        db,
        ctx,
        "connected_account.disconnect",
        target=f"connected_account:{account_id}",
        outcome="success" if outcome != "not_revoked" else "failure",
        details={
            "provider_config": account.provider_config_id,
            "revoke": outcome,
            "vault_rows_deleted": deleted,
            "error": error.code if error is not None else None,
        },
    )
    db.delete(account)
    db.commit()
    return RevokeResult(outcome, access_token_expires_at=expires_at if outcome == "unsupported" else None, error=error)


def due_count(db: Session, *, now: datetime, margin: timedelta) -> int:
    """How many accounts are due (for the CLI and the console)."""
    from sqlalchemy import func

    return int(
        db.scalar(select(func.count()).select_from(ConnectedAccount).where(and_(*due_filter(now, now + margin)))) or 0
    )
