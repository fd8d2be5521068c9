"""Signed webhooks: endpoints admins register, the durable outbox of events, and one delivery per endpoint.

An event row is written in the same transaction as the change it describes (app.webhook_events), with one
delivery row per endpoint subscribed to its type, so a committed change always has its deliveries and a
rolled-back one never does. The worker (app.jobs.webhooks) sends deliveries and logs every attempt.
Endpoint signing secrets live in the vault (owner type ``webhook_endpoint``), never in these tables.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(200), default="")
    # Event types it receives (app.webhook_events.EVENT_TYPES); an empty list means none.
    events: Mapped[list[str]] = mapped_column(default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    # While set and in the future, deliveries carry a second signature made with the previous secret.
    previous_secret_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebhookEvent(Base):
    """One thing that happened; its ``public_id`` is the stable ``webhook-id`` of every delivery of it."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(60), index=True)
    # What it is about (``connected_account:12``, ``user:3``): deliveries of one subject go out in order.
    subject: Mapped[str] = mapped_column(String(80), index=True)
    # Ids and states only (app.webhook_events builds it); never a secret.
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        # "Is an earlier event of this subject still pending for this endpoint?" — asked for every due delivery.
        Index("ix_webhook_deliveries_line", "endpoint_id", "subject", "state", "event_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    # Copied from the event so the "earlier delivery of the same subject still pending" check is one index.
    subject: Mapped[str] = mapped_column(String(80))
    # pending -> delivered | failed (retries exhausted); redeliver puts it back to pending.
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    # The first try of the current run of tries (reset by a redeliver).
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(300))
    delivered_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookAttempt(Base):
    """The delivery log: one row per HTTP attempt, with the response code (or why none came)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(String(300))
    duration_ms: Mapped[int] = mapped_column(default=0)
    # The first bytes of the receiver's answer, for the log page (receivers' answers are not secrets of ours).
    response_excerpt: Mapped[str | None] = mapped_column(Text)
