"""Trusted browsers: after a full sign-in with a second factor, "trust this browser for N days" lets the next
sign-ins there skip the second factor (``AMI_AUTH_TRUSTED_BROWSER_DAYS``; 0 turns the offer off).

The browser keeps a random token in a cookie; the table keeps its SHA-256, so a database leak gives nobody a
pass. Each trust belongs to one user and one browser, is listed beside the user's sessions (theirs and the
admin's view of them) and can be revoked there; every trust of a user ends when their password changes or is
reset (app.auth.lifecycle) and when an admin resets their second factors. The first factor is still asked: a
trusted browser only skips the *second* step.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app import audit
from app.errors import N_, AppError
from app.models import TrustedBrowser, utcnow
from app.settings import Settings

COOKIE = "ami_trusted"


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def offered(settings: Settings) -> bool:
    return settings.trusted_browser_days > 0


def trust(db: Session, settings: Settings, user_id: int, *, ip: str, user_agent: str) -> str:
    """Trust this browser for the configured days; returns the raw token for its cookie. Never commits."""
    raw = secrets.token_urlsafe(32)
    now = utcnow()
    db.add(
        TrustedBrowser(
            public_id=secrets.token_hex(8),
            user_id=user_id,
            token_hash=_digest(raw),
            created_at=now,
            expires_at=now + timedelta(days=settings.trusted_browser_days),
            ip=ip[:64],
            user_agent=user_agent[:400],
        )
    )
    db.flush()
    return raw


def check(db: Session, settings: Settings, user_id: int, raw: str | None) -> TrustedBrowser | None:
    """The live trust this browser's cookie holds for ``user_id`` (its last use is updated), or None."""
    if not offered(settings) or not raw or len(raw) > 100:
        return None
    row = db.scalar(select(TrustedBrowser).where(TrustedBrowser.token_hash == _digest(raw)))
    if row is None or row.user_id != user_id or row.expires_at <= utcnow():
        return None
    row.last_used_at = utcnow()
    return row


def live(db: Session, user_id: int) -> list[TrustedBrowser]:
    return list(
        db.scalars(
            select(TrustedBrowser)
            .where(TrustedBrowser.user_id == user_id, TrustedBrowser.expires_at > utcnow())
            .order_by(TrustedBrowser.created_at.desc())
        )
    )


def revoke(db: Session, ctx: audit.AuditContext, user_id: int, public_id: str, *, by: str) -> None:
    """Stop trusting one browser (audited, committed); ``not_found`` when it is no longer trusted."""
    result = db.execute(
        delete(TrustedBrowser).where(TrustedBrowser.user_id == user_id, TrustedBrowser.public_id == public_id[:32])
    )
    if not getattr(result, "rowcount", 0):
        db.rollback()
        raise AppError("not_found", N_("That browser is no longer trusted."), N_("Reload the page to see the list."))
    audit.record(db, ctx, "browser.untrusted", target=f"user:{user_id}", details={"browser": public_id, "by": by})
    db.commit()


def clear(db: Session, user_id: int) -> int:
    """End every trust of a user (password changed or reset, second factors reset). Never commits."""
    result = db.execute(delete(TrustedBrowser).where(TrustedBrowser.user_id == user_id))
    return int(getattr(result, "rowcount", 0) or 0)
