"""Server-side sessions: create at sign-in, load on each request, revoke, expire (idle and absolute)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import User, UserSession, utcnow
from app.settings import Settings

# Touch last_seen_at at most this often so a busy session is not a write per request.
TOUCH_INTERVAL = timedelta(seconds=60)


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


def idle_expires_at(settings: Settings, record: UserSession) -> datetime:
    return min(record.last_seen_at + timedelta(minutes=settings.session_idle_minutes), record.expires_at)


def load_session(db: Session, settings: Settings, raw: str, now: datetime | None = None) -> UserSession | None:
    """The live session for a raw id, or None when unknown, revoked, idle too long or past its lifetime."""
    now = now or utcnow()
    record = db.get(UserSession, hash_session_id(raw))
    if record is None or record.revoked_at is not None or not record.user.is_active:
        return None
    if now >= record.expires_at or now >= idle_expires_at(settings, record):
        return None
    if now - record.last_seen_at >= TOUCH_INTERVAL:
        record.last_seen_at = now
        db.commit()
    return record


def revoke_session(db: Session, record: UserSession) -> None:
    record.revoked_at = utcnow()


def revoke_user_sessions(db: Session, user_id: int, *, keep: str | None = None) -> int:
    """Revoke every live session of a user except ``keep`` (a session record id); return how many."""
    stmt = update(UserSession).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
    if keep is not None:
        stmt = stmt.where(UserSession.id != keep)
    result = db.execute(stmt.values(revoked_at=utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


def live_sessions(db: Session, settings: Settings, user_id: int) -> list[UserSession]:
    """The user's sessions that would still be accepted: not revoked, not idle too long, within lifetime."""
    now = utcnow()
    idle_cutoff = now - timedelta(minutes=settings.session_idle_minutes)
    rows = db.scalars(
        select(UserSession)
        .where(
            UserSession.user_id == user_id,
            UserSession.revoked_at.is_(None),
            UserSession.expires_at > now,
            UserSession.last_seen_at > idle_cutoff,
        )
        .order_by(UserSession.last_seen_at.desc())
    ).all()
    return list(rows)


def find_live_session(db: Session, user_id: int, public_id: str) -> UserSession | None:
    """A user's unrevoked session by its public id (the id shown in pages; the real id never leaves the cookie)."""
    return db.scalar(
        select(UserSession).where(
            UserSession.user_id == user_id,
            UserSession.public_id == public_id,
            UserSession.revoked_at.is_(None),
        )
    )
