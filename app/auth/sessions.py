"""Server-side sessions: create at sign-in, load on each request, revoke, expire (idle and absolute)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import ColumnElement, bindparam, func, select, update
from sqlalchemy.orm import Session

from app.auth.mfa import MfaState, policy_column, state, state_columns
from app.idp import logout
from app.models import Base, User, UserSession, utcnow
from app.settings import Settings

# Touch last_seen_at at most this often so a busy session is not a write per request.
TOUCH_INTERVAL = timedelta(seconds=60)


class Deadlines(Protocol):
    @property
    def last_seen_at(self) -> datetime: ...
    @property
    def expires_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class SessionUser:
    """The user columns a signed-in request checks before any view runs (ids and emails never change)."""

    id: int
    email: str
    display_name: str
    role: str
    must_change_password: bool
    locale: str | None = None  # the language the user chose (app.i18n); None: the browser's

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class LiveSession:
    """A live session as one request found it: the record, its user and the user's second factors, read by one
    SELECT (:func:`load_session`). Views that change the record or the user load the ORM rows as well."""

    id: str  # the record id (SHA-256 of the cookie's raw id)
    public_id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    mfa_verified: bool
    user: SessionUser
    mfa: MfaState


_SESSIONS = Base.metadata.tables[UserSession.__tablename__]
_USERS = Base.metadata.tables[User.__tablename__]
_S = _SESSIONS.c
_U = _USERS.c
# Built once: session, user and factor counts in one statement, one index lookup each. Nothing about a session
# is cached between requests; revocation, deactivation and factor changes apply on the very next request.
_LOAD = (
    select(
        _S.public_id,
        _S.created_at,
        _S.last_seen_at,
        _S.expires_at,
        _S.revoked_at,
        _S.mfa_verified,
        _U.id,
        _U.email,
        _U.display_name,
        _U.role,
        _U.is_active,
        _U.must_change_password,
        _U.locale,
        *state_columns(_S.user_id),
        policy_column(_U.role),
    )
    .join_from(_SESSIONS, _USERS, _U.id == _S.user_id)
    .where(_S.id == bindparam("session_id"))
)
_TOUCH = (
    update(_SESSIONS)
    .where(_S.id == bindparam("session_id"), _S.last_seen_at <= bindparam("stale_before"))
    .values(last_seen_at=bindparam("now"))
)


def hash_session_id(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def start_session(
    db: Session,
    settings: Settings,
    user: User,
    *,
    ip: str,
    user_agent: str,
    methods: Sequence[str],
    mfa_verified: bool = False,
) -> tuple[str, UserSession]:
    """Create a session record; return the raw id (for the cookie) and the record."""
    raw = secrets.token_urlsafe(32)
    now = utcnow()
    record = UserSession(
        id=hash_session_id(raw),
        public_id=secrets.token_hex(8),
        user_id=user.id,
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(hours=settings.session_max_hours),
        ip=ip[:64],
        user_agent=user_agent[:400],
        auth_methods=list(methods),
        mfa_verified=mfa_verified,
    )
    db.add(record)
    return raw, record


def idle_expires_at(settings: Settings, record: Deadlines) -> datetime:
    return min(record.last_seen_at + timedelta(minutes=settings.session_idle_minutes), record.expires_at)


def load_session(db: Session, settings: Settings, raw: str, now: datetime | None = None) -> LiveSession | None:
    """The live session for a raw id, or None when unknown, revoked, idle too long or past its lifetime, or
    when its user is deactivated. One SELECT; a write only when last_seen_at is a minute old."""
    now = now or utcnow()
    session_id = hash_session_id(raw)
    # On the request's connection but past the ORM's result handling: plain rows, no entities to build.
    row = db.connection().execute(_LOAD, {"session_id": session_id}).one_or_none()
    if row is None:
        return None
    (public_id, created, last_seen, expires, revoked, verified) = row[:6]
    (user_id, email, name, role, active, must_change, locale, totp, passkeys, recovery_remaining, policy) = row[6:]
    if revoked is not None or not active:
        return None
    if now >= expires or now >= min(last_seen + timedelta(minutes=settings.session_idle_minutes), expires):
        return None
    if now - last_seen >= TOUCH_INTERVAL:
        # The WHERE keeps it to one write a minute even when several workers see the same stale value.
        db.connection().execute(_TOUCH, {"session_id": session_id, "stale_before": now - TOUCH_INTERVAL, "now": now})
        db.commit()
        last_seen = now
    return LiveSession(
        id=session_id,
        public_id=public_id,
        created_at=created,
        last_seen_at=last_seen,
        expires_at=expires,
        mfa_verified=verified,
        user=SessionUser(
            id=user_id,
            email=email,
            display_name=name,
            role=role,
            must_change_password=must_change,
            locale=locale,
        ),
        mfa=MfaState(
            totp=totp,
            passkeys=passkeys,
            recovery_remaining=recovery_remaining,
            role_policy=None if policy is None else bool(policy),
            policy_loaded=True,
        ),
    )


def live_view(db: Session, record: UserSession) -> LiveSession:
    """A :class:`LiveSession` for a record already loaded (the request that signs in)."""
    user = record.user
    return LiveSession(
        id=record.id,
        public_id=record.public_id,
        created_at=record.created_at,
        last_seen_at=record.last_seen_at,
        expires_at=record.expires_at,
        mfa_verified=record.mfa_verified,
        user=SessionUser(
            id=user.id,
            email=user.email,
            display_name=user.display_name,
            role=user.role,
            must_change_password=user.must_change_password,
            locale=user.locale,
        ),
        mfa=state(db, user.id),
    )


def revoke_session(db: Session, record: UserSession, *, reason: str = "") -> None:
    """End a session. Every way a session ends comes through here or :func:`revoke_user_sessions`: the apps that
    signed in through it are told, in the same transaction (OIDC back-channel logout, app.idp.logout)."""
    record.revoked_at = utcnow()
    logout.sessions_ended(db, [record.id], reason)


def revoke_user_sessions(db: Session, user_id: int, *, keep: str | None = None, reason: str = "") -> int:
    """Revoke every live session of a user except ``keep`` (a session record id); return how many."""
    live = select(UserSession.id).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
    if keep is not None:
        live = live.where(UserSession.id != keep)
    ids = list(db.scalars(live))
    if not ids:
        return 0
    db.execute(
        update(UserSession).where(UserSession.id.in_(ids), UserSession.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    logout.sessions_ended(db, ids, reason)
    return len(ids)


def _live_filter(settings: Settings, user_id: int) -> tuple[ColumnElement[bool], ...]:
    """Sessions that would still be accepted: not revoked, not idle too long, within lifetime."""
    now = utcnow()
    idle_cutoff = now - timedelta(minutes=settings.session_idle_minutes)
    return (
        UserSession.user_id == user_id,
        UserSession.revoked_at.is_(None),
        UserSession.expires_at > now,
        UserSession.last_seen_at > idle_cutoff,
    )


def live_sessions(db: Session, settings: Settings, user_id: int) -> list[UserSession]:
    """The user's sessions that would still be accepted: not revoked, not idle too long, within lifetime."""
    rows = db.scalars(
        select(UserSession).where(*_live_filter(settings, user_id)).order_by(UserSession.last_seen_at.desc())
    ).all()
    return list(rows)


SESSION_PAGE_SIZE = 20


@dataclass(frozen=True)
class SessionPage:
    """One page of a user's live sessions, most recently seen first (pages read only what they show)."""

    rows: list[UserSession]
    total: int
    page: int
    pages: int


def live_sessions_page(
    db: Session, settings: Settings, user_id: int, page: int = 1, page_size: int = SESSION_PAGE_SIZE
) -> SessionPage:
    where = _live_filter(settings, user_id)
    total = db.scalar(select(func.count()).select_from(UserSession).where(*where)) or 0
    pages = max(1, -(-total // page_size))
    page = min(max(1, page), pages)
    rows = db.scalars(
        select(UserSession)
        .where(*where)
        .order_by(UserSession.last_seen_at.desc(), UserSession.id.desc())
        .limit(page_size)
        .offset((page - 1) * page_size)
    ).all()
    return SessionPage(list(rows), total, page, pages)


def find_live_session(db: Session, user_id: int, public_id: str) -> UserSession | None:
    """A user's unrevoked session by its public id (the id shown in pages; the real id never leaves the cookie)."""
    return db.scalar(
        select(UserSession).where(
            UserSession.user_id == user_id,
            UserSession.public_id == public_id,
            UserSession.revoked_at.is_(None),
        )
    )
