"""Answers kept for ``Idempotency-Key`` replays (app.api.idempotency): one row per caller and key, 24 hours.

In the database (not a worker's memory) so a retry that lands on another worker or host still finds the
first answer; the unique (owner, key) pair makes two concurrent first attempts collide instead of both
creating the item.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_keys_owner_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Who sent it: ``service_token:<id>`` or ``user:<id>`` — a key is scoped to its caller.
    owner: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(300))
    # SHA-256 of the raw request body: the same key with another body is refused.
    body_hash: Mapped[str] = mapped_column(String(64))
    # None while the first request is still running.
    status: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
