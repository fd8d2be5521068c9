"""Codes and tokens of the OpenID Provider: stored by hash, single use, rotated, revoked by family.

* An authorization code is claimed atomically (``UPDATE … WHERE used_at IS NULL``) when it is exchanged: of two
  requests racing with one code, one gets tokens and the other finds it used. A code presented after it was used
  revokes every token issued from it (RFC 6749 §4.1.2: the code may have leaked).
* A refresh token is claimed the same way and replaced by a new one (rotation). Presenting a rotated refresh
  token again revokes the whole family — every token descending from the same code (OAuth 2.0 Security BCP,
  RFC 9700 §4.14.2: refresh token reuse detection).
* Ending an AMI session revokes the families issued in it (:func:`revoke_for_sessions`, called by
  :mod:`app.idp.logout`).

Functions take a Session and never commit; those that detect reuse say so in their result, and the token endpoint
commits that revocation even though the request fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, cast

from sqlalchemy import Table, bindparam, delete, exists, insert, or_, select, update
from sqlalchemy.orm import Session

from app import audit
from app.audit import AuditContext
from app.idp.claims import Subject
from app.models import OidcAuthorizationCode, OidcClient, OidcSessionClient, OidcToken, User, utcnow

CODE_TTL: Final = timedelta(seconds=120)
# Expired codes and tokens are kept a day (a reused one is still recognised as reuse), then purged.
RETAIN: Final = timedelta(days=1)
_TOKENS: Final = cast(Table, OidcToken.__table__)


def hash_token(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_family() -> str:
    return secrets.token_hex(16)


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT this provider just signed (read back for its jti and exp, not verified)."""
    payload = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


def _at(timestamp: int | float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


# --- codes ---------------------------------------------------------------------------------------------------


def save_code(
    db: Session,
    client: OidcClient,
    subject: Subject,
    code: str,
    *,
    redirect_uri: str,
    scope: str,
    nonce: str | None,
    code_challenge: str | None,
    code_challenge_method: str | None,
    now: datetime | None = None,
) -> OidcAuthorizationCode:
    now = now or utcnow()
    row = OidcAuthorizationCode(
        code_hash=hash_token(code),
        client_id=client.id,
        user_id=subject.user.id,
        redirect_uri=redirect_uri,
        scope=scope,
        nonce=nonce,
        code_challenge=code_challenge,
        code_challenge_method=code_challenge_method,
        session_id=subject.session_id,
        sid=subject.sid,
        auth_time=subject.auth_time or now,
        amr=list(subject.amr),
        acr=subject.acr,
        created_at=now,
        expires_at=now + CODE_TTL,
    )
    db.add(row)
    db.flush()
    return row


def nonce_used(db: Session, client: OidcClient, nonce: str) -> bool:
    """Whether this client already sent this nonce (OpenID Connect Core §15.5.2: a replayed authorization request)."""
    stmt = select(exists().where(OidcAuthorizationCode.client_id == client.id, OidcAuthorizationCode.nonce == nonce))
    return bool(db.execute(stmt).scalar())


ClaimStatus = Literal["ok", "unknown", "expired", "reused"]


@dataclass(frozen=True)
class CodeClaim:
    status: ClaimStatus
    code: OidcAuthorizationCode | None = None
    revoked: int = 0


def claim_code(db: Session, ctx: AuditContext, client: OidcClient, code: str, now: datetime | None = None) -> CodeClaim:
    """Take a code for exchange, once. A used code revokes what it issued (and is reported as ``reused``)."""
    now = now or utcnow()
    row = db.scalars(
        select(OidcAuthorizationCode).where(
            OidcAuthorizationCode.code_hash == hash_token(code), OidcAuthorizationCode.client_id == client.id
        )
    ).first()
    if row is None:
        return CodeClaim("unknown")
    claimed = db.execute(
        update(OidcAuthorizationCode)
        .where(OidcAuthorizationCode.id == row.id, OidcAuthorizationCode.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        families = select(OidcToken.family).where(OidcToken.code_id == row.id).distinct()
        revoked = _revoke(db, OidcToken.family.in_(families), "code_reused", now)
        audit.record(
            db,
            ctx,
            "oidc.code.reuse",
            target=f"oidc_client:{client.client_id}",
            outcome="denied",
            details={"user": row.user_id, "revoked": revoked},
        )
        return CodeClaim("reused", row, revoked)
    if row.expires_at <= now:
        return CodeClaim("expired", row)
    row.used_at = now
    return CodeClaim("ok", row)


# --- tokens --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issue:
    """Where a new token comes from: a code (a new family), a refresh (the same family) or client credentials."""

    family: str
    code_id: int | None = None


def _token_values(
    client: OidcClient, subject: Subject | None, token: dict[str, Any], issue: Issue, now: datetime
) -> dict[str, Any]:
    claims = jwt_claims(token["access_token"])
    refresh = token.get("refresh_token")
    audience = claims.get("aud", [])
    return {
        "client_id": client.id,
        "user_id": subject.user.id if subject is not None else None,
        "family": issue.family,
        "code_id": issue.code_id,
        "jti": claims["jti"],
        "refresh_hash": hash_token(refresh) if refresh else None,
        "scope": token.get("scope") or "",
        "audience": [audience] if isinstance(audience, str) else list(audience),
        "session_id": subject.session_id if subject else None,
        "sid": subject.sid if subject else None,
        "auth_time": subject.auth_time if subject else None,
        "amr": list(subject.amr) if subject else [],
        "acr": subject.acr if subject else None,
        "issued_at": now,
        "access_expires_at": _at(claims["exp"]),
        "refresh_expires_at": now + timedelta(seconds=client.refresh_token_ttl) if refresh else None,
        "refresh_used_at": None,
        "revoked_at": None,
        "revoked_reason": None,
    }


def save_token(
    db: Session,
    client: OidcClient,
    subject: Subject | None,
    token: dict[str, Any],
    issue: Issue,
    now: datetime | None = None,
) -> OidcToken:
    row = OidcToken(**_token_values(client, subject, token, issue, now or utcnow()))
    db.add(row)
    return row


_INSERT_TOKEN: Final = insert(_TOKENS)  # Core: no ORM bookkeeping on the hot path


def insert_token(db: Session, client: OidcClient, subject: Subject | None, token: dict[str, Any], issue: Issue) -> None:
    """:func:`save_token` for the token endpoint: the row is written now, in one plain INSERT, with no object for the
    session to track and flush at commit."""
    db.execute(_INSERT_TOKEN, _token_values(client, subject, token, issue, utcnow()))


@dataclass(frozen=True)
class RefreshClaim:
    status: ClaimStatus
    token: OidcToken | None = None
    revoked: int = 0
    # The token's user, active, when the claim read it in the same statement (PostgreSQL).
    user: User | None = None


# Built once (the token endpoint runs it on every refresh; building the expression costs more than running it).
_CLAIM_REFRESH: Final = (
    update(OidcToken)
    .where(
        OidcToken.refresh_hash == bindparam("b_refresh_hash"),
        OidcToken.client_id == bindparam("b_client_id"),
        OidcToken.refresh_used_at.is_(None),
        OidcToken.revoked_at.is_(None),
    )
    .values(refresh_used_at=bindparam("b_now"))
    .returning(OidcToken)
)


_CLAIM_REFRESH_WITH_USER: Final = (
    update(OidcToken)
    .where(
        OidcToken.refresh_hash == bindparam("b_refresh_hash"),
        OidcToken.client_id == bindparam("b_client_id"),
        OidcToken.refresh_used_at.is_(None),
        OidcToken.revoked_at.is_(None),
        User.id == OidcToken.user_id,
        User.is_active.is_(True),
    )
    .values(refresh_used_at=bindparam("b_now"))
    .returning(OidcToken, User)
)
_UNSYNCED: Final = {"synchronize_session": False}


def _claimed(row: OidcToken, now: datetime, user: User | None) -> RefreshClaim:
    if row.refresh_expires_at is None or row.refresh_expires_at <= now:
        return RefreshClaim("expired", row)
    return RefreshClaim("ok", row, user=user)


def claim_refresh(
    db: Session, ctx: AuditContext, client: OidcClient, refresh_token: str, now: datetime | None = None
) -> RefreshClaim:
    """Take a refresh token for rotation, once. A rotated one presented again revokes its family.

    One statement when it is usable: the claim (``UPDATE … WHERE unused AND unrevoked … RETURNING``) also reads the
    row — and on PostgreSQL its user, when active (``UPDATE … FROM users``; SQLite cannot return another table's
    columns). A token that statement did not claim is claimed alone (its user is gone or disabled: the grant then
    fails for want of a user, as before), else looked up again to tell an unknown one from a reused one.
    """
    now = now or utcnow()
    refresh_hash = hash_token(refresh_token)
    params = {"b_refresh_hash": refresh_hash, "b_client_id": client.id, "b_now": now}
    if db.get_bind().dialect.name == "postgresql":
        found = db.execute(_CLAIM_REFRESH_WITH_USER, params, execution_options=_UNSYNCED).one_or_none()
        if found is not None:
            return _claimed(found[0], now, found[1])
    row = db.scalars(_CLAIM_REFRESH, params, execution_options=_UNSYNCED).one_or_none()
    if row is not None:
        return _claimed(row, now, None)
    row = db.scalars(
        select(OidcToken).where(OidcToken.refresh_hash == refresh_hash, OidcToken.client_id == client.id)
    ).first()
    if row is None or (row.revoked_at is not None and row.refresh_used_at is None):
        return RefreshClaim("unknown")
    revoked = _revoke(db, OidcToken.family == row.family, "refresh_reused", now)
    audit.record(
        db,
        ctx,
        "oidc.refresh.reuse",
        target=f"oidc_client:{client.client_id}",
        outcome="denied",
        details={"user": row.user_id, "family": row.family, "revoked": revoked},
    )
    return RefreshClaim("reused", row, revoked)


def _revoke(db: Session, where: Any, reason: str, now: datetime) -> int:
    result = db.execute(
        update(OidcToken)
        .where(where, OidcToken.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def revoke_family(db: Session, family: str, reason: str, now: datetime | None = None) -> int:
    return _revoke(db, OidcToken.family == family, reason, now or utcnow())


def revoke_token(db: Session, row: OidcToken, reason: str, now: datetime | None = None) -> None:
    if row.revoked_at is None:
        row.revoked_at, row.revoked_reason = now or utcnow(), reason


def revoke_for_sessions(db: Session, session_ids: Sequence[str], now: datetime | None = None) -> int:
    if not session_ids:
        return 0
    return _revoke(db, OidcToken.session_id.in_(list(session_ids)), "session_ended", now or utcnow())


def revoke_for_user_client(db: Session, user_id: int, client_id: int, reason: str, now: datetime | None = None) -> int:
    where = (OidcToken.user_id == user_id) & (OidcToken.client_id == client_id)
    return _revoke(db, where, reason, now or utcnow())


def find_by_jti(db: Session, jti: str) -> OidcToken | None:
    return db.scalars(select(OidcToken).where(OidcToken.jti == jti)).first()


def find_by_refresh(db: Session, refresh_token: str) -> OidcToken | None:
    return db.scalars(select(OidcToken).where(OidcToken.refresh_hash == hash_token(refresh_token))).first()


def subject_of_token(db: Session, row: OidcToken | OidcAuthorizationCode, user: User | None = None) -> Subject | None:
    """The subject a code or token speaks for, or None when the user is gone or disabled (``user``: its row, when
    the caller read it already)."""
    if row.user_id is None:
        return None
    if user is None or user.id != row.user_id:
        user = db.get(User, row.user_id)
    if user is None or not user.is_active:
        return None
    return Subject(
        user=user,
        session_id=row.session_id,
        sid=row.sid,
        auth_time=row.auth_time,
        amr=list(row.amr or []),
        acr=row.acr,
    )


# --- the sessions clients took part in --------------------------------------------------------------------------


def link_session(db: Session, session_id: str, client: OidcClient, user_id: int, sid: str) -> None:
    """Remember that ``client`` got a code in this AMI session (back-channel logout reaches it when it ends)."""
    found = db.scalars(
        select(OidcSessionClient.id).where(
            OidcSessionClient.session_id == session_id, OidcSessionClient.client_id == client.id
        )
    ).first()
    if found is None:
        db.add(OidcSessionClient(session_id=session_id, client_id=client.id, user_id=user_id, sid=sid))
        db.flush()


def move_session(db: Session, old_session_id: str, new_session_id: str) -> None:
    """A fresh sign-in replaced the session (prompt=login, max_age): the clients and tokens of the old one now end
    with the new one; each client keeps the ``sid`` it knows."""
    taken = select(OidcSessionClient.client_id).where(OidcSessionClient.session_id == new_session_id)
    db.execute(
        update(OidcSessionClient)
        .where(OidcSessionClient.session_id == old_session_id, OidcSessionClient.client_id.not_in(taken))
        .values(session_id=new_session_id)
        .execution_options(synchronize_session=False)
    )
    # A client linked to both already knows the new session (it signed in again there).
    db.execute(delete(OidcSessionClient).where(OidcSessionClient.session_id == old_session_id))
    db.execute(
        update(OidcToken)
        .where(OidcToken.session_id == old_session_id)
        .values(session_id=new_session_id)
        .execution_options(synchronize_session=False)
    )


def purge_expired(db: Session, now: datetime | None = None) -> int:
    """Delete codes and tokens that expired more than :data:`RETAIN` ago; returns how many rows."""
    cutoff = (now or utcnow()) - RETAIN
    spent = or_(
        OidcToken.refresh_expires_at < cutoff,
        OidcToken.refresh_expires_at.is_(None) & (OidcToken.access_expires_at < cutoff),
    )
    removed = db.execute(delete(OidcToken).where(spent).execution_options(synchronize_session=False))
    codes = db.execute(
        delete(OidcAuthorizationCode)
        .where(OidcAuthorizationCode.expires_at < cutoff)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(removed, "rowcount", 0) or 0) + int(getattr(codes, "rowcount", 0) or 0)
