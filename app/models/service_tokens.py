"""Service tokens: how the CMS server (or another service) authenticates to the JSON API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow


class ServiceToken(Base):
    __tablename__ = "service_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # The first characters of the token (e.g. "amis_ab12cd"), shown in lists so an admin can tell tokens
    # apart; too short to help a guess.
    prefix: Mapped[str] = mapped_column(String(16))
    # SHA-256 (hex) of the whole token. The token is 32 random bytes, so a fast hash is enough: there is
    # no low-entropy secret to brute-force, unlike a password.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(default=list)
    # Which connected accounts the account scopes (accounts:proxy, accounts:token, accounts:headers) reach:
    # {"account_ids": [...], "provider_types": [...]}, either key optional; null: every account.
    account_limits: Mapped[dict[str, Any] | None]
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    # Written at most once a minute, so a busy token is not a write per request.
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"ServiceToken(id={self.id!r}, name={self.name!r}, prefix={self.prefix!r})"
