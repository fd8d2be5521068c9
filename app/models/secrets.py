"""Encrypted secret values. Every row names its key id; associated data binds it to its owner row."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow


class StoredSecret(Base):
    __tablename__ = "secrets"
    __table_args__ = (
        Index("ix_secrets_owner", "owner_type", "owner_id", "field"),
        # At most one current value per (owner, field): concurrent replacements cannot both stay current.
        Index(
            "uq_secrets_current",
            "owner_type",
            "owner_id",
            "field",
            unique=True,
            postgresql_where=text("retired_at IS NULL"),
            sqlite_where=text("retired_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_type: Mapped[str] = mapped_column(String(40))
    owner_id: Mapped[int]
    field: Mapped[str] = mapped_column(String(80))
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int] = mapped_column(default=1)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Set when a newer value replaced this one; kept for rollback until purge_after, then deleted.
    retired_at: Mapped[datetime | None]
    purge_after: Mapped[datetime | None]

    def __repr__(self) -> str:
        return (
            f"StoredSecret(id={self.id!r}, owner={self.owner_type}:{self.owner_id}, "
            f"field={self.field!r}, key_id={self.key_id!r})"
        )
