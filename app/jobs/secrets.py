"""Purge replaced secret values whose rollback grace period is over (``ami-auth jobs purge-secrets``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app import audit
from app.connectors.accounts import purge_retired_secrets, scrub_deleted
from app.models.base import utcnow

JOB = audit.AuditContext(actor="job:purge-secrets")


def purge_secrets(db: Session, now: datetime | None = None) -> int:
    """Delete every retired ciphertext past its ``purge_after``; commits; returns how many rows went."""
    count = purge_retired_secrets(db, JOB, now or utcnow())
    db.commit()
    scrub_deleted(db)
    return count
