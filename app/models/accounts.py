"""A user's account on a configured provider, with its token set or API key (in `secrets`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, utcnow
from app.models.providers import ProviderConfig


class ConnectedAccount(Base):
    __tablename__ = "connected_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider_config_id: Mapped[int] = mapped_column(ForeignKey("provider_configs.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    subject: Mapped[str | None] = mapped_column(String(255))
    identifiers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    provider_data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(30), default="active")
    scopes: Mapped[list[str]] = mapped_column(default=list)
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    last_used_at: Mapped[datetime | None]
    last_verified_at: Mapped[datetime | None]
    rotated_at: Mapped[datetime | None]
    last_error_code: Mapped[str | None] = mapped_column(String(40))
    last_error_hint: Mapped[str | None] = mapped_column(String(500))
    last_error_at: Mapped[datetime | None]
    error_attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    # SMTP accounts: the one an admin marked as the app's own mailer, and the daily send counter (UTC day
    # + count, bumped by one conditional UPDATE so concurrent workers cannot overshoot the cap).
    system_mailer: Mapped[bool] = mapped_column(default=False, server_default=false())
    send_day: Mapped[str | None] = mapped_column(String(10))
    send_count: Mapped[int] = mapped_column(default=0, server_default="0")
    # Refresh claim (compare-and-set lease) so concurrent jobs never refresh one account twice.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    provider_config: Mapped[ProviderConfig] = relationship(lazy="joined")
