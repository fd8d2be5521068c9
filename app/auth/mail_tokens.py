"""Single-use link tokens (setup, verify, reset, invite, unlock): random, stored hashed, expiring."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import LinkToken, utcnow
from app.models.tokens import TokenPurpose

LIFETIMES: dict[TokenPurpose, timedelta] = {
    "setup": timedelta(hours=1),
    "verify": timedelta(hours=24),
    "reset": timedelta(hours=1),
    "invite": timedelta(days=7),
    "unlock": timedelta(hours=1),
    "signin_code": timedelta(minutes=10),
    "email_change": timedelta(hours=1),
}


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def issue_token(
    db: Session, purpose: TokenPurpose, *, user_id: int | None = None, email: str = "", replace: bool = True
) -> str:
    """Create a token and return the raw value for the link; older unused tokens of that kind are voided."""
    now = utcnow()
    if replace:
        invalidate_tokens(db, purpose, user_id=user_id, email=email)
    raw = secrets.token_urlsafe(32)
    db.add(
        LinkToken(
            purpose=purpose,
            token_hash=_digest(raw),
            user_id=user_id,
            email=email,
            created_at=now,
            expires_at=now + LIFETIMES[purpose],
        )
    )
    return raw


def find_token(db: Session, purpose: TokenPurpose, raw: str) -> LinkToken | None:
    """The usable token for a raw value: right purpose, not used, not expired."""
    if not raw or len(raw) > 200:
        return None
    token = db.scalar(select(LinkToken).where(LinkToken.token_hash == _digest(raw), LinkToken.purpose == purpose))
    if token is None or token.used_at is not None or token.expires_at <= utcnow():
        return None
    return token


def consume_token(db: Session, purpose: TokenPurpose, raw: str) -> LinkToken | None:
    """Mark a usable token used (compare-and-set, so two clicks cannot both succeed)."""
    token = find_token(db, purpose, raw)
    if token is None:
        return None
    result = db.execute(
        update(LinkToken).where(LinkToken.id == token.id, LinkToken.used_at.is_(None)).values(used_at=utcnow())
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    return token


def invalidate_tokens(db: Session, purpose: TokenPurpose, *, user_id: int | None = None, email: str = "") -> None:
    stmt = update(LinkToken).where(LinkToken.purpose == purpose, LinkToken.used_at.is_(None))
    if user_id is not None:
        stmt = stmt.where(LinkToken.user_id == user_id)
    elif email:
        stmt = stmt.where(LinkToken.email == email)
    db.execute(stmt.values(used_at=utcnow()))
