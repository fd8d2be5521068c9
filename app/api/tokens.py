"""Service tokens: issue (shown once), authenticate, revoke. Logic only: no Flask request globals.

A token is ``amis_`` followed by 43 URL-safe characters (32 random bytes). Only its SHA-256 is stored;
the fixed ``amis_`` prefix lets secret scanners recognise a leaked token. Every create and revoke is
audited here; every use is audited by the API layer (``app.api.security``) with the token's id.

A presented token's row is kept in memory for :data:`CACHE_SECONDS` per process (keyed by database and token
hash; only tokens that exist; :class:`app.kept.Kept`: when it is due, one thread reads it again while the others
use the copy), so a busy caller does not cost a query per call. Scopes, limits and expiry are read from the kept
row and checked on every call. A token revoked through :func:`revoke_token` is refused at once by the process that
revoked it and within :data:`CACHE_SECONDS` (twice that while a re-read is under way) by every other process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import Engine, bindparam, event, or_, select, update
from sqlalchemy.orm import Session

from app import audit
from app.errors import AppError
from app.i18n import N_
from app.i18n import gettext as _
from app.kept import Kept, session_engine
from app.models import ServiceToken, utcnow

Scope = Literal[
    "sessions:read",
    "sessions:write",
    "accounts:read",
    "accounts:write",
    "accounts:headers",
    "accounts:proxy",
    "accounts:token",
    "providers:read",
    "providers:write",
    "compliance:read",
    "users:read",
    "users:write",
    "clients:read",
    "clients:write",
    "webhooks:read",
    "webhooks:write",
]


# The fixed set, in the order the console shows them, with what each one allows.
SCOPES: Final[dict[Scope, str]] = {
    "sessions:read": N_("List any user's sign-in sessions."),
    "sessions:write": N_("Revoke any user's sign-in sessions."),
    "accounts:read": N_("Read connected-account snapshots (never a secret)."),
    "accounts:write": N_("Refresh, revoke and delete connected accounts."),
    "accounts:headers": N_("Get ready-to-send request headers for an account (contains its credential)."),
    "accounts:proxy": N_(
        "Call a connected account's provider API through AMI Auth, which adds the credential "
        "(the caller never sees it)."
    ),
    "accounts:token": N_("Get an OAuth account's current access token (refreshed first when due)."),
    "providers:read": N_(
        "Read provider configurations (non-secret fields; which secrets are set, never their values)."
    ),
    "providers:write": N_("Create and change provider configurations (non-secret fields)."),
    "compliance:read": N_("Read the compliance report."),
    "users:read": N_("List and read users, their sign-in sessions and linked sign-in identities."),
    "users:write": N_(
        "Create, invite, edit, disable, enable and unlock users; reset their MFA; end their sessions; "
        "unlink their sign-in identities."
    ),
    "clients:read": N_("List and read the apps registered with the OpenID Provider (never a client secret)."),
    "clients:write": N_("Register, change and delete OpenID Provider apps; a new client secret is handed out once."),
    "webhooks:read": N_("List webhook endpoints and read their delivery log (never a signing secret)."),
    "webhooks:write": N_(
        "Register, change and delete webhook endpoints, rotate their signing secrets (the new secret "
        "is in the answer, once) and redeliver."
    ),
}

TOKEN_PREFIX: Final = "amis_"
# "amis_" + 6 characters: enough to tell tokens apart in a list, 36 bits that do not help a guess of 256.
DISPLAY_CHARS: Final = 11
NAME_MAX: Final = 100
EXPIRES_DAYS_MAX: Final = 3650
# last_used_at is written at most this often, so a busy token is not a row write per request.
TOUCH_INTERVAL: Final = timedelta(seconds=60)
# The compliance report lists live tokens not used for this long.
UNUSED_AFTER: Final = timedelta(days=90)
# How long a process trusts a token row it read (a revocation elsewhere takes at most this long to reach it).
CACHE_SECONDS: Final = 1.0
_CACHE_MAX: Final = 10_000

Status = Literal["active", "expired", "revoked"]
Problem = Literal["unknown", "expired", "revoked"]


@dataclass(frozen=True)
class IssuedToken:
    """A new token: the row and the raw value, which exists only here and is never stored."""

    record: ServiceToken
    raw: str = field(repr=False)


@dataclass(frozen=True)
class PresentedToken:
    """The columns a request reads from a presented token's row (a narrow SELECT, not an ORM object: this
    runs on every API call)."""

    id: int
    scopes: tuple[str, ...]
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    limits: AccountLimits | None = None


@dataclass(frozen=True)
class AccountLimits:
    """The connected accounts a token may use (ids and/or provider types); a token without limits uses any."""

    account_ids: frozenset[int] = frozenset()
    provider_types: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> AccountLimits | None:
        if not raw:
            return None
        return cls(
            frozenset(int(i) for i in raw.get("account_ids") or ()),
            frozenset(str(t) for t in raw.get("provider_types") or ()),
        )

    def to_json(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        if self.account_ids:
            found["account_ids"] = sorted(self.account_ids)
        if self.provider_types:
            found["provider_types"] = sorted(self.provider_types)
        return found

    def allows(self, account_id: int, provider_type: str) -> bool:
        """Both lists apply when both are given: the account must be listed and of a listed type."""
        if self.account_ids and account_id not in self.account_ids:
            return False
        return not self.provider_types or provider_type in self.provider_types


@dataclass(frozen=True)
class TokenCheck:
    """The outcome of presenting a token: the row when one matched, and the problem if it is unusable."""

    record: PresentedToken | None
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.record is not None


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def status(token: ServiceToken | PresentedToken, now: datetime | None = None) -> Status:
    now = now or utcnow()
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


def check_scopes(scopes: Iterable[str]) -> list[Scope]:
    """Validate requested scopes against the fixed set; return them de-duplicated in canonical order."""
    wanted = set(scopes)
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise AppError(
            "validation_failed",
            fields={"scopes": f"Unknown scope {unknown[0]!r}; choose from {', '.join(SCOPES)}."},
        )
    if not wanted:
        raise AppError("validation_failed", fields={"scopes": "Choose at least one scope."})
    return [s for s in SCOPES if s in wanted]


def request_problems(name: str, scopes: Iterable[str], expires_days: int | None) -> dict[str, str]:
    """What is wrong with a token request, by field (empty when it is fine)."""
    errors: dict[str, str] = {}
    name = " ".join(name.split())
    if not name:
        errors["name"] = _("Give the token a name that says who uses it, e.g. “CMS production”.")
    elif len(name) > NAME_MAX:
        errors["name"] = _("Use at most %(limit)s characters.", limit=NAME_MAX)
    if expires_days is not None and not 1 <= expires_days <= EXPIRES_DAYS_MAX:
        errors["expires_days"] = _(
            "Use a number of days from 1 to %(max)s, or leave it empty for none.", max=EXPIRES_DAYS_MAX
        )
    try:
        check_scopes(scopes)
    except AppError as exc:
        errors.update(exc.fields)
    return errors


def create_token(
    db: Session,
    ctx: audit.AuditContext,
    *,
    name: str,
    scopes: Sequence[str],
    created_by: int | None,
    expires_days: int | None = None,
    limits: AccountLimits | None = None,
    now: datetime | None = None,
) -> IssuedToken:
    """Issue a token (the caller commits). Raises ``validation_failed`` naming the bad field."""
    now = now or utcnow()
    errors = request_problems(name, scopes, expires_days)
    if errors:
        raise AppError("validation_failed", fields=errors)
    name = " ".join(name.split())
    chosen = check_scopes(scopes)

    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = ServiceToken(
        name=name,
        prefix=raw[:DISPLAY_CHARS],
        token_hash=hash_token(raw),
        scopes=list(chosen),
        created_by=created_by,
        created_at=now,
        expires_at=now + timedelta(days=expires_days) if expires_days else None,
        account_limits=limits.to_json() or None if limits is not None else None,
    )
    db.add(record)
    db.flush()
    audit.record(
        db,
        ctx,
        "service_token.create",
        target=f"service_token:{record.id}",
        details={
            "name": name,
            "prefix": record.prefix,
            "scopes": list(chosen),
            "expires_at": record.expires_at,
            "account_limits": record.account_limits,
        },
    )
    return IssuedToken(record, raw)


def revoke_token(db: Session, ctx: audit.AuditContext, token_id: int, *, now: datetime | None = None) -> ServiceToken:
    """Revoke a token (the caller commits). Revoking twice keeps the first time and says so in the audit."""
    record = db.get(ServiceToken, token_id)
    if record is None:
        raise AppError("not_found", f"There is no service token with id {token_id}.", "List them with the id column.")
    already = record.revoked_at is not None
    if not already:
        record.revoked_at = now or utcnow()
    # Now, and again once the caller commits: a use in between would keep the unrevoked row again.
    forget(record.id)
    event.listen(db, "after_commit", lambda _session: forget(token_id), once=True)
    audit.record(
        db,
        ctx,
        "service_token.revoke",
        target=f"service_token:{record.id}",
        details={"name": record.name, "prefix": record.prefix, "already_revoked": already},
    )
    return record


def list_tokens(db: Session) -> list[ServiceToken]:
    return list(db.scalars(select(ServiceToken).order_by(ServiceToken.id.desc())))


_BY_HASH: Final = select(
    ServiceToken.id,
    ServiceToken.scopes,
    ServiceToken.expires_at,
    ServiceToken.revoked_at,
    ServiceToken.last_used_at,
    ServiceToken.account_limits,
).where(ServiceToken.token_hash == bindparam("token_hash"))


# (engine, token hash) -> the row as read (only tokens that exist)
_cache: Kept[tuple[Engine, str], PresentedToken | None] = Kept(CACHE_SECONDS, _CACHE_MAX)


def forget(token_id: int | None = None) -> None:
    """Drop this process's copy of a token's row (``None``: of every token), so its next use reads the row."""
    _cache.clear(None if token_id is None else lambda record: record is not None and record.id == token_id)


def authenticate(db: Session, raw: str, now: datetime | None = None) -> TokenCheck:
    """Look a presented token up by its hash (or this process's copy of the row, see the module docstring).
    Never raises; the caller audits and answers."""
    now = now or utcnow()
    # The shape check saves a query for obvious garbage; a well-formed guess still costs one indexed lookup.
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return TokenCheck(None, "unknown")

    def read() -> tuple[PresentedToken | None, bool]:
        row = db.connection().execute(_BY_HASH, {"token_hash": token_hash}).first()
        if row is None:
            return None, False
        found = PresentedToken(
            row.id,
            tuple(row.scopes or ()),
            row.expires_at,
            row.revoked_at,
            row.last_used_at,
            AccountLimits.from_json(row.account_limits),
        )
        return found, True

    token_hash = hash_token(raw)
    record = _cache.get((session_engine(db), token_hash), read)
    if record is None:
        return TokenCheck(None, "unknown")
    state = status(record, now)
    if state != "active":
        return TokenCheck(record, state)
    return TokenCheck(record, None)


def touch(db: Session, record: PresentedToken, now: datetime | None = None) -> bool:
    """Set last_used_at if it is older than a minute; return whether it changed (the caller commits).

    The UPDATE itself only matches a row whose last_used_at is older than a minute, so several workers
    together write it at most about once a minute too."""
    now = now or utcnow()
    if record.last_used_at is not None and now - record.last_used_at < TOUCH_INTERVAL:
        return False
    cutoff = now - TOUCH_INTERVAL
    result = db.connection().execute(
        update(ServiceToken)
        .where(
            ServiceToken.id == record.id,
            or_(ServiceToken.last_used_at.is_(None), ServiceToken.last_used_at <= cutoff),
        )
        .values(last_used_at=now)
    )
    # This process's copy of the row says so too, or every call would try the UPDATE until the copy expires.
    used = dataclasses.replace(record, last_used_at=now)
    _cache.replace(lambda kept: used if kept is not None and kept.id == record.id else kept)
    return bool(result.rowcount)


def unused_tokens(db: Session, now: datetime | None = None) -> list[ServiceToken]:
    """Live tokens not used for :data:`UNUSED_AFTER` (never-used ones count from their creation)."""
    now = now or utcnow()
    cutoff = now - UNUSED_AFTER
    rows = db.scalars(select(ServiceToken).where(ServiceToken.revoked_at.is_(None)).order_by(ServiceToken.id)).all()
    return [t for t in rows if status(t, now) == "active" and (t.last_used_at or t.created_at) < cutoff]
